"""The HTTP API (Starlette): member features, health, readiness and metrics."""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import codec
from app.openapi import openapi_document
from app.recommend import RecommendationRequest
from tables.online_store import NotOwned

if TYPE_CHECKING:
    from app.worker import Nearline

__all__ = [
    "FORWARDED_HEADER",
    "JSONResponse",
    "create_web_app",
    "error",
    "forward_to_owner",
    "invalid_request",
    "lag_body",
]

#: Marks a request one worker forwarded to the owner of a partition, so it is never bounced on.
FORWARDED_HEADER = "x-nearline-forwarded-by"
_MAX_MEMBER_ID = 256
MAX_BODY_BYTES = 1 << 20


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return codec.dumps(content)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """A client-facing error body: ``{"error": message, ...}``."""
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def invalid_request(exc: ValidationError) -> JSONResponse:
    """A 422 listing every problem pydantic found, each as ``field: message``."""
    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]
    return error(422, "invalid request: " + "; ".join(problems), problems=problems)


def _nearline(request: Request) -> Nearline:
    return request.app.state.nearline  # type: ignore[no-any-return]


def lag_body(nearline: Nearline) -> list[dict[str, Any]]:
    """Lag and stalled seconds of each assigned partition, as /healthz and /readyz show it."""
    return [
        {
            "topic": p.topic,
            "partition": p.partition,
            "lag": p.lag,
            "stalled_seconds": round(p.stalled_seconds, 1),
        }
        for p in nearline.consumer_lag()
    ]


async def healthz(request: Request) -> Response:
    """Liveness: 503 when a partition holds lag and applies nothing (a restart mends it)."""
    nearline = _nearline(request)
    alive, reason = nearline.liveness()
    body = {"status": "ok" if alive else "stalled", "reason": reason, "lag": lag_body(nearline)}
    return JSONResponse(body, status_code=200 if alive else 503)


async def readyz(request: Request) -> Response:
    nearline = _nearline(request)
    ready, reason = nearline.readiness()
    health = nearline.attribute_health
    body = {
        "ready": ready,
        "reason": reason,
        "partitions": nearline.store.owned_partitions(),
        "lag": lag_body(nearline),
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
        return await forward_to_owner(request, nearline, exc)


class _OwnerUnavailable(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


async def _ask_owner(
    nearline: Nearline, owner: NotOwned, path: str, params: dict[str, str], forwarded: bool
) -> httpx.Response:
    """GET ``path`` from the worker owning the partition; raise with a 503 if impossible."""
    if forwarded or owner.owner_url in (None, nearline.settings.web_url):
        # No owner yet, or the owner thinks it is us: a rebalance is under way.
        raise _OwnerUnavailable(
            error(503, f"partition {owner.partition} is being rebalanced; retry shortly")
        )
    headers = {FORWARDED_HEADER: nearline.settings.web_url}
    if nearline.settings.api_token:
        headers["authorization"] = f"Bearer {nearline.settings.api_token}"
    try:
        return await nearline.http.get(f"{owner.owner_url}{path}", params=params, headers=headers)
    except httpx.HTTPError as exc:
        raise _OwnerUnavailable(
            error(
                503,
                f"the worker owning partition {owner.partition} ({owner.owner_url}) "
                f"did not answer: {type(exc).__name__}",
            )
        ) from None


async def forward_to_owner(request: Request, nearline: Nearline, owner: NotOwned) -> Response:
    """Answer ``request`` with what the worker owning the partition answers to it."""
    try:
        response = await _ask_owner(
            nearline,
            owner,
            request.url.path,
            dict(request.query_params),
            bool(request.headers.get(FORWARDED_HEADER)),
        )
    except _OwnerUnavailable as exc:
        return exc.response
    return Response(
        response.content,
        status_code=response.status_code,
        media_type=response.headers.get("content-type"),
    )


async def _body_up_to(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def recommendations(request: Request) -> Response:
    """Rank the candidates for a member, with fresh features from the online store."""
    nearline = _nearline(request)
    settings = nearline.settings
    try:
        raw = await _body_up_to(request, MAX_BODY_BYTES)
    except ClientDisconnect:
        return Response(status_code=499)  # the client is gone; nobody reads this
    if raw is None:
        return error(413, f"the body is over the limit of {MAX_BODY_BYTES} bytes")
    try:
        body = codec.loads(raw)
    except codec.DecodeError as exc:
        return error(400, f"the body is not JSON: {exc}")
    try:
        ask = RecommendationRequest.model_validate(body)
    except ValidationError as exc:
        return invalid_request(exc)
    if ask.k is not None and ask.k > settings.max_candidates:
        return error(422, f"k must be at most {settings.max_candidates} (NEARLINE_MAX_CANDIDATES)")
    if len(ask.candidates) > settings.max_candidates:
        return error(
            400,
            f"{len(ask.candidates)} candidates is over the limit of {settings.max_candidates} "
            "(NEARLINE_MAX_CANDIDATES)",
        )
    as_of = ask.features_as_of if ask.features_as_of is not None else time.time()
    try:
        features = await nearline.member_features(ask.member_id, as_of)
    except NotOwned as owner:
        try:
            answer = await _ask_owner(
                nearline,
                owner,
                f"/v1/members/{quote(ask.member_id, safe='')}/features",
                {"as_of": repr(as_of)},
                bool(request.headers.get(FORWARDED_HEADER)),
            )
        except _OwnerUnavailable as exc:
            return exc.response
        if answer.status_code != 200:
            return Response(answer.content, answer.status_code, media_type="application/json")
        features = answer.json()
    return JSONResponse(await nearline.recommender.recommend(ask, features))


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(_nearline(request).settings))


class _BearerAuth:
    """With NEARLINE_API_TOKEN set, every /v1 route needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.expected is not None
            and scope["type"] == "http"
            and scope["path"].startswith("/v1/")
        ):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(
                    {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
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
            await error(503, f"overloaded: {message}; retry shortly")(scope, receive, send)
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
    # Imported here: the console's routes build on this module's responses and forwarding.
    from app.console.routes import console_routes

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/members/{member_id}/features", member_features, methods=["GET"]),
        Route("/v1/recommendations", recommendations, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *console_routes(),
    ]
    web = Starlette(
        routes=routes,
        middleware=[
            Middleware(_Timing, nearline=nearline),
            Middleware(
                _Shedding,
                limit=nearline.settings.max_in_flight,
                limit_behind=nearline.settings.max_in_flight_behind,
                behind=nearline.ingest_behind,
                on_shed=lambda reason: nearline.metrics.requests_shed.labels(reason).inc(),
            ),
            Middleware(_BearerAuth, token=nearline.settings.api_token),
        ],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
    web.state.nearline = nearline
    return web
