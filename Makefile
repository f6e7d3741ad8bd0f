# nearline: `make demo` sets everything up and runs the demo; `make test` sets up and runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of PyTorch. On this project's machines pip finds it on local disk; elsewhere
# add `--index-url https://download.pytorch.org/whl/cpu` (a bare `torch` may pull CUDA, GBs).
TORCH  ?= torch==2.13.0

# The console's browser test drives Debian's chromium (nothing is downloaded at run time);
# a bare machine gets it from apt.
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser redis demo test lint typecheck unit integration bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,embedded,aerospike,train,plots]'
	touch $@

browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# The peer stack of `make bench` (Quix Streams → Feast → Redis) keeps its online store in
# Debian's redis-server; Feast and Quix go into bench/.peer-venv, made by the bench itself.
redis:
	@command -v redis-server >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server)

demo: setup
	$(BIN)/nearline demo

lint: setup
	$(BIN)/ruff check nearline foundation attribute_store model tables agents app simulation tests bench
	$(BIN)/ruff format --check nearline foundation attribute_store model tables agents app simulation tests bench

typecheck: setup
	$(BIN)/mypy nearline  # nearline/ links to every package folder

unit: setup
	$(BIN)/python -m pytest tests/unit -q

integration: setup browser
	$(BIN)/python -m pytest tests/integration -q

test: lint typecheck browser
	$(BIN)/python -m pytest tests -q --durations=15

bench: setup browser redis
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data build *.egg-info bench/.peer-venv
