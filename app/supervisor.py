"""``nearline serve``'s supervisor: starts the serving processes and starts again any that dies.

Kept apart from :mod:`app.serve` so the supervisor imports no web framework, store or model:
it only watches its children.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from prometheus_client import multiprocess

from app.serving_link import serving_dir
from app.settings import Settings
from app.sockets import reuse_port_socket

__all__ = ["run_serving"]

log = logging.getLogger(__name__)


def run_serving(settings: Settings) -> None:
    """Run NEARLINE_SERVE_PROCESSES serving processes until SIGINT/SIGTERM, starting
    again any that exits."""
    count = settings.serve_processes
    if count < 1:
        raise SystemExit(
            "nearline serve: set NEARLINE_SERVE_PROCESSES to the number of serving processes "
            "(and run the worker with the same value, so it leaves them the web port)"
        )
    logging.basicConfig(
        level=settings.log_level, format="[%(asctime)s] [serve] %(levelname)s %(message)s"
    )
    try:  # a port that only this pod's serving processes may share
        reuse_port_socket(settings.web_host, settings.web_port).close()
    except OSError as exc:
        raise SystemExit(
            f"nearline serve: cannot serve HTTP on {settings.web_host}:{settings.web_port} "
            f"({exc.strerror}); set NEARLINE_WEB_PORT to a free port"
        ) from None
    directory = serving_dir(settings.data_dir)
    # Each process's metric values live in a file of their own here; a new supervisor
    # starts from zero, as a restarted worker's counters do.
    metrics_dir = directory / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    shutil.rmtree(directory / "secondary", ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "app.serve", str(index)], env=env)

    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = [start(i) for i in range(count)]
    log.info(
        "%d serving processes on http://%s:%d (pids %s)",
        count,
        settings.web_host,
        settings.web_port,
        ", ".join(str(c.pid) for c in children),
    )
    started_at = [time.monotonic()] * count
    while not stopping:
        time.sleep(0.2)
        for index, child in enumerate(children):
            code = child.poll()
            # One that dies at once again and again is restarted once a second, not in a loop.
            if code is None or stopping or time.monotonic() - started_at[index] < 1.0:
                continue
            multiprocess.mark_process_dead(child.pid, str(metrics_dir))
            log.warning(
                "serving process %d (pid %d) exited with %s; starting it again",
                index,
                child.pid,
                code,
            )
            children[index] = start(index)
            started_at[index] = time.monotonic()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
