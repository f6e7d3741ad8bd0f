"""The HTTP API (Starlette): member features, health, readiness and metrics."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import codec
from tables.online_store import NotOwned

if TYPE_CHECKING:
    from app.worker import Nearline

__all__ = ["FORWARDED_HEADER", "JSONResponse", "create_web_app", "error"]

#: Marks a request one worker forwarded to the owner of a partition, so it is never bounced on.
FORWARDED_HEADER = "x-nearline-forwarded-by"
_MAX_MEMBER_ID = 256


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return codec.dumps(content)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """A client-facing error body: ``{"error": message, ...}``."""
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _nearline(request: Request) -> Nearline:
    return request.app.state.nearline  # type: ignore[no-any-return]


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    nearline = _nearline(request)
    ready, reason = nearline.readiness()
    health = nearline.attribute_health
    body = {
        "ready": ready,
        "reason": reason,
        "partitions": nearline.store.owned_partitions(),
        "attribute_store": {"backend": health.backend, "ok": health.ok, "detail": health.detail},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    body = _nearline(request).metrics.exposition()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def _as_of(request: Request) -> float | JSONResponse:
    raw = request.query_params.get("as_of")
    if raw is None:
        return time.time()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        return error(400, f"as_of must be Unix seconds (a non-negative number), got {raw!r}")
    return value


async def member_features(request: Request) -> Response:
    """Recent actions and windowed counts of one member, read from the owning worker."""
    nearline = _nearline(request)
    member_id = request.path_params["member_id"]
    if len(member_id) > _MAX_MEMBER_ID:
        return error(400, f"member_id is longer than {_MAX_MEMBER_ID} characters")
    as_of = _as_of(request)
    if isinstance(as_of, JSONResponse):
        return as_of
    try:
        return JSONResponse(await nearline.member_features(member_id, as_of))
    except NotOwned as exc:
        return await _forward(request, nearline, exc)


async def _forward(request: Request, nearline: Nearline, owner: NotOwned) -> Response:
    if request.headers.get(FORWARDED_HEADER) or owner.owner_url in (
        None,
        nearline.settings.web_url,
    ):
        # No owner yet, or the owner thinks it is us: a rebalance is under way.
        return error(503, f"partition {owner.partition} is being rebalanced; retry shortly")
    url = f"{owner.owner_url}{request.url.path}"
    try:
        response = await nearline.http.get(
            url,
            params=dict(request.query_params),
            headers={FORWARDED_HEADER: nearline.settings.web_url},
        )
    except httpx.HTTPError as exc:
        return error(
            503,
            f"the worker owning partition {owner.partition} ({owner.owner_url}) "
            f"did not answer: {type(exc).__name__}",
        )
    return Response(
        response.content,
        status_code=response.status_code,
        media_type=response.headers.get("content-type"),
    )


class _Timing:
    """Records each request's latency by route template (bounded label set)."""

    def __init__(self, app: ASGIApp, nearline: Nearline) -> None:
        self.app = app
        self.nearline = nearline

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
            self.nearline.metrics.request_seconds.labels(
                path, scope["method"], str(status)
            ).observe(time.perf_counter() - started)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, f"no route for {request.method} {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error(405, f"{request.method} is not allowed on {request.url.path}")


def create_web_app(nearline: Nearline) -> Starlette:
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/members/{member_id}/features", member_features, methods=["GET"]),
    ]
    web = Starlette(
        routes=routes,
        middleware=[Middleware(_Timing, nearline=nearline)],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
    web.state.nearline = nearline
    return web
