"""``nearline serve``'s supervisor: starts the serving processes and starts again any that dies
or hangs.

A serving process touches a heartbeat file once a second from its event loop
(:func:`~nearline.foundation.serving_link.heartbeat_path`). One whose file is older than
``NEARLINE_SERVE_HANG_TIMEOUT`` (or that has not touched it within a startup allowance) still
holds its share of the port's connections and answers none of them: it is killed and started
again, as gunicorn's arbiter does with its workers.

Kept apart from :mod:`nearline.app.serve` so the supervisor imports no web framework, store or
model: it only watches its children.
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
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from nearline.foundation.serving_link import heartbeat_path, serving_dir
from nearline.foundation.settings import Settings
from nearline.foundation.sockets import reuse_port_socket

__all__ = ["run_serving"]

log = logging.getLogger(__name__)

#: How long a serving process may take to start (imports, model load) before its first beat.
STARTUP_ALLOWANCE = 120.0


def _hung(heartbeat: Path, started_at: float, timeout: float) -> float | None:
    """Seconds since the process's last heartbeat if that is over its allowance, else None."""
    try:
        silent = time.time() - heartbeat.stat().st_mtime
    except FileNotFoundError:  # still starting
        silent = time.monotonic() - started_at
        timeout = max(timeout, STARTUP_ALLOWANCE)
    return silent if silent > timeout else None


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
        heartbeat_path(directory, index).unlink(missing_ok=True)  # a new process beats anew
        return subprocess.Popen([sys.executable, "-m", "nearline.app.serve", str(index)], env=env)

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
            silent = (
                None
                if code is not None
                else _hung(
                    heartbeat_path(directory, index), started_at[index], settings.serve_hang_timeout
                )
            )
            if silent is not None:
                log.warning(
                    "serving process %d (pid %d) has not run its event loop for %.0f s "
                    "(NEARLINE_SERVE_HANG_TIMEOUT); killing it",
                    index,
                    child.pid,
                    silent,
                )
                child.kill()
                code = child.wait()
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
