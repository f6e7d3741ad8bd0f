"""Uvicorn as a service of the Faust worker: same process, same event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from mode import Service
from starlette.types import ASGIApp

__all__ = ["WebServer", "WebServerError"]

log = logging.getLogger(__name__)


class WebServerError(RuntimeError):
    """The HTTP server could not start (the port is taken, the host is wrong...)."""


class _InWorkerServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The Faust worker owns SIGINT/SIGTERM and stops this service itself.
        yield


class WebServer(Service):
    """Serves ``asgi_app`` on ``host:port`` while the worker runs."""

    def __init__(self, asgi_app: ASGIApp, host: str, port: int) -> None:
        super().__init__()
        self.host = host
        self.port = port
        config = uvicorn.Config(
            asgi_app,
            host=host,
            port=port,
            lifespan="off",
            http="httptools",  # C parser; h11's pure-Python one was a third of a read's CPU
            access_log=False,
            log_level="warning",
            log_config=None,
            timeout_graceful_shutdown=5,
            # Longer than clients' pools keep idle connections, so the server does not close
            # one just as a client reuses it.
            timeout_keep_alive=75,
        )
        self._server = _InWorkerServer(config)
        self._serving: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._serving = asyncio.ensure_future(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                error = self._serving.exception() if not self._serving.cancelled() else None
                raise WebServerError(
                    f"could not serve HTTP on {self.host}:{self.port}: {error or 'exited'}; "
                    "is NEARLINE_WEB_PORT free?"
                )
            await asyncio.sleep(0.01)
        log.info("HTTP API on http://%s:%d", self.host, self.port)

    async def on_stop(self) -> None:
        self._server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._serving
