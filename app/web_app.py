"""The web app assembled: the API's and the console's routes, middleware, error rendering.

The routes' handlers are in ``app/web.py`` (the API) and ``app/console/routes.py`` (the
console); the middleware here wraps them all: bearer-token auth, load shedding and
per-route timing. Every error reaches the client through :class:`~nearline.app.web.ApiError`'s body.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nearline.app.console.routes import console_routes
from nearline.app.web import (
    ApiError,
    WebServices,
    erase_member,
    healthz,
    member_features,
    metrics,
    openapi,
    readyz,
    recommendations,
)
from nearline.foundation.metrics import Metrics, ServingMetrics
from nearline.tables.online_store import Restoring

__all__ = ["create_web_app"]


class _BearerAuth:
    """With NEARLINE_API_TOKEN set, every /v1 route needs ``Authorization: Bearer <token>``.

    The scheme is matched in any case (``bearer``, ``BEARER``), as RFC 7235 has it; the
    token is compared exactly, in constant time.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.expected is not None
            and scope["type"] == "http"
            and scope["path"].startswith("/v1/")
        ):
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, credentials = given.partition(b" ")
            token = credentials.lstrip(b" ")  # RFC 7235: one or more spaces
            if not (hmac.compare_digest(token, self.expected) and scheme.lower() == b"bearer"):
                refused = ApiError(
                    401,
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await refused.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Shedding:
    """Past ``limit`` /v1 requests in progress, answers 503 at once instead of queueing.

    The web app shares its event loop with ingest: past what the loop can serve, queued
    requests would wait seconds and take the loop from the actions, and the member's next
    action would wait as long. While ``behind()`` (ingest has more queued than it can
    apply: the actions channel paused its partitions) the limit is ``limit_behind``, so the
    loop goes to the actions until they are caught up: features a minute stale would be
    served otherwise, and the lag would only grow. Probes and /metrics are never shed.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        on_shed: Callable[[str], None],
        limit_behind: int | None = None,
        behind: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.limit = limit
        self.limit_behind = limit if limit_behind is None else min(limit, limit_behind)
        self.behind = behind
        self.on_shed = on_shed
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        shed = self._shed_reason()
        if shed is not None:
            reason, message = shed
            self.on_shed(reason)
            overloaded = ApiError(503, f"overloaded: {message}; retry shortly")
            await overloaded.response()(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _shed_reason(self) -> tuple[str, str] | None:
        """(metric reason, message) when the next /v1 request is to be shed now."""
        if self.in_flight >= self.limit:
            return "in_flight", f"{self.limit} requests in progress (NEARLINE_MAX_IN_FLIGHT)"
        if self.in_flight >= self.limit_behind and self.behind():
            return "ingest_behind", (
                f"ingest is behind, so at most {self.limit_behind} requests are served at once "
                "until it catches up (NEARLINE_MAX_IN_FLIGHT_BEHIND)"
            )
        return None


class _Timing:
    """Records each request's latency by route template (bounded label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics | ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.request_seconds.labels(path, scope["method"], str(status)).observe(
                time.perf_counter() - started
            )


async def _render_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _render_restoring(request: Request, exc: Exception) -> Response:
    """A partition this worker restores: a 503, retried once the restore has ended."""
    assert isinstance(exc, Restoring)
    return ApiError(503, str(exc)).response()


async def _render_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, wrong method) in the API's error body."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail
    return ApiError(exc.status_code, message, headers=exc.headers).response()


def create_web_app(services: WebServices) -> Starlette:
    """The HTTP API over ``services``; each is on ``app.state`` under its field's name."""
    settings = services.settings
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/members/{member_id}/features", member_features, methods=["GET"]),
        Route("/v1/members/{member_id}", erase_member, methods=["DELETE"]),
        Route("/v1/recommendations", recommendations, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *console_routes(),
    ]
    web = Starlette(
        routes=routes,
        middleware=[
            Middleware(_Timing, metrics=services.metrics),
            Middleware(
                _Shedding,
                limit=settings.max_in_flight,
                limit_behind=settings.max_in_flight_behind,
                behind=services.status.ingest_behind,
                on_shed=lambda reason: services.metrics.requests_shed.labels(reason).inc(),
            ),
            Middleware(_BearerAuth, token=settings.api_token),
        ],
        exception_handlers={
            ApiError: _render_api_error,
            Restoring: _render_restoring,
            HTTPException: _render_http_exception,
        },
    )
    for field in dataclasses.fields(services):
        setattr(web.state, field.name, getattr(services, field.name))
    return web
