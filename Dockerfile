# syntax=docker/dockerfile:1
# nearline worker image: `docker build -t ghcr.io/nearline/nearline:0.1.0 .`
# Runs `nearline worker` as an unprivileged user; state lives in /var/lib/nearline.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: compilers and pip, never shipped ------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

# The venv is copied whole into the final stage, so it must live at the same path there.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip setuptools wheel

# CPU-only PyTorch first, from its own index: the default index resolves torch to a
# multi-GB CUDA build. The project's `[train]` extra then finds it already satisfied.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
# .dockerignore lets in only the packaging files and the Python packages.
COPY . .
# A production worker: the Aerospike attribute store and trained models (no embedded broker,
# no plots).
RUN pip install '.[aerospike,train]' \
    && python -c "import torch; assert not torch.version.cuda, 'a CUDA torch slipped in'" \
    && python -m compileall -q /opt/venv

# --- runtime: slim Python, the venv, nothing else -------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="nearline" \
      org.opencontainers.image.description="Near-real-time personalization worker: Faust agents, RocksDB online store, Starlette API, PyTorch scorer" \
      org.opencontainers.image.source="https://github.com/nearline/nearline"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NEARLINE_WEB_HOST=0.0.0.0 \
    NEARLINE_WEB_PORT=8080 \
    NEARLINE_DATA_DIR=/var/lib/nearline

# uid/gid 10001 match the chart's securityContext (runAsUser, runAsGroup, fsGroup).
RUN groupadd --system --gid 10001 nearline \
    && useradd --system --uid 10001 --gid nearline --home-dir /var/lib/nearline \
       --no-create-home --shell /usr/sbin/nologin nearline \
    && mkdir -p /var/lib/nearline \
    && chown nearline:nearline /var/lib/nearline

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /var/lib/nearline
VOLUME ["/var/lib/nearline"]
EXPOSE 8080

# For plain `docker run`; Kubernetes uses the chart's probes instead.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NEARLINE_WEB_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["nearline"]
CMD ["worker"]
