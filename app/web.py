"""The HTTP API (Starlette): member features, recommendations, health, readiness and metrics.

The web app depends on a few narrow services, not on the worker that builds them: what it
asks of each is a Protocol here (or :class:`nearline.app.recommend.Recommender`), bundled in
:class:`WebServices` and put on ``app.state`` one by one (``request.app.state.features``).

A client's mistake, an unreachable owner or an overload is an :class:`ApiError`, raised
wherever it is found and rendered by one exception handler as ``{"error": message, ...}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from nearline.agents.erasures import Erasure, InvalidMemberId, check_member_id
from nearline.app.console.timeline import IngestTimeline
from nearline.app.lag import PartitionLag
from nearline.app.openapi import FeaturesParams, openapi_document
from nearline.app.recommend import RecommendationRequest, Recommender
from nearline.attribute_store import CachedAttributeStore, StoreHealth
from nearline.foundation import codec
from nearline.foundation.limits import MAX_BODY_BYTES
from nearline.foundation.metrics import Metrics, ServingMetrics
from nearline.foundation.settings import Settings
from nearline.model.registry import ModelRegistry
from nearline.tables.online_store import NotOwned

if TYPE_CHECKING:
    from nearline.app.experiments import LiveResults

__all__ = [
    "FORWARDED_HEADER",
    "ApiError",
    "ErasureSink",
    "FeatureSource",
    "JSONResponse",
    "StatusSource",
    "WebServices",
    "WorkerLink",
    "ask_worker",
    "check_candidates",
    "forward_to_owner",
    "lag_body",
    "parse",
]

log = logging.getLogger(__name__)

#: How long an erasure request waits for the broker to have its record.
ERASURE_TIMEOUT = 10.0

#: Marks a request one worker forwarded to the owner of a partition, so it is never bounced on.
FORWARDED_HEADER = "x-nearline-forwarded-by"

_Model = TypeVar("_Model", bound=BaseModel)


class FeatureSource(Protocol):
    """A member's features, attributes joined at read, from the worker owning the member."""

    async def features(self, member_id: str, as_of: float) -> dict[str, Any]:
        """Raises :class:`~nearline.tables.online_store.NotOwned` when another worker owns the
        member."""
        ...


class StatusSource(Protocol):
    """What the probes and the console say about this worker."""

    def readiness(self) -> tuple[bool, str]: ...

    def liveness(self) -> tuple[bool, str]: ...

    def consumer_lag(self) -> list[PartitionLag]: ...

    def ingest_behind(self) -> bool: ...

    @property
    def attribute_health(self) -> StoreHealth: ...

    def owned_partitions(self) -> list[int]: ...

    def owner_url(self, partition: int) -> str | None: ...

    @property
    def partitions(self) -> int:
        """The actions topic's partition count."""
        ...


class ErasureSink(Protocol):
    """Where erasure requests are recorded: the erasures topic (agents/erasures.py)."""

    async def request(self, member_id: str, requested_by: str) -> Erasure:
        """Record an erasure of ``member_id``; returns it once the broker has it."""
        ...


class WorkerLink(Protocol):
    """What a serving process knows of its worker, and says of itself."""

    def url(self) -> str | None:
        """Where the worker answers now (None until it has published its state)."""
        ...

    def serving_view(self) -> dict[str, Any]:
        """The serving processes as the console's system view shows them."""
        ...


@dataclass(frozen=True)
class WebServices:
    """Everything the web app uses; each is put on ``app.state`` under its field's name."""

    features: FeatureSource
    status: StatusSource
    recommender: Recommender
    settings: Settings
    metrics: Metrics | ServingMetrics
    timeline: IngestTimeline
    models: ModelRegistry
    attributes: CachedAttributeStore  # the console's ranking shows category and company
    http: httpx.AsyncClient  # for requests forwarded to the owning worker
    erasures: ErasureSink
    #: In a serving process: its worker. /metrics adds the worker's own, and the console's
    #: system view is the worker's, with what the serving processes say of themselves.
    worker: WorkerLink | None = None
    #: In a worker: the running experiment's live results (the console's panel).
    experiment: LiveResults | None = None


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return codec.dumps(content)


class ApiError(Exception):
    """An answer other than the one asked for: ``{"error": message, **extra}``.

    ``message`` says what is wrong and how to fix it. A 503 tells the client to retry
    after a second (``Retry-After``).
    """

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        if status == 503:
            self.headers["Retry-After"] = "1"
        self.extra = extra

    @classmethod
    def invalid(cls, exc: ValidationError) -> ApiError:
        """A 422 listing every problem pydantic found, each as ``field: message``."""
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        ]
        return cls(422, "invalid request: " + "; ".join(problems), problems=problems)

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.message, **self.extra},
            status_code=self.status,
            headers=self.headers or None,
        )


def parse(model: type[_Model], data: Any) -> _Model:
    """``data`` (a body, or a path and query) as ``model``; a 422 naming each problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError.invalid(exc) from None


def check_candidates(count: int, limit: int, k: int | None = None) -> None:
    """A 422 when a request ranks more candidates (or asks for more) than ``limit``."""
    if k is not None and k > limit:
        raise ApiError(422, f"k must be at most {limit} (NEARLINE_MAX_CANDIDATES)")
    if count > limit:
        raise ApiError(
            422,
            f"{count} candidates is over the limit of {limit} (NEARLINE_MAX_CANDIDATES); "
            "send fewer",
        )


def lag_body(status: StatusSource) -> list[dict[str, Any]]:
    """Lag and stalled seconds of each assigned partition, as /healthz and /readyz show it."""
    return [
        {
            "topic": p.topic,
            "partition": p.partition,
            "lag": p.lag,
            "stalled_seconds": round(p.stalled_seconds, 1),
        }
        for p in status.consumer_lag()
    ]


async def healthz(request: Request) -> Response:
    """Liveness: 503 when a partition holds lag and applies nothing (a restart mends it)."""
    status: StatusSource = request.app.state.status
    alive, reason = status.liveness()
    body = {"status": "ok" if alive else "stalled", "reason": reason, "lag": lag_body(status)}
    return JSONResponse(body, status_code=200 if alive else 503)


async def readyz(request: Request) -> Response:
    status: StatusSource = request.app.state.status
    ready, reason = status.readiness()
    health = status.attribute_health
    body = {
        "ready": ready,
        "reason": reason,
        "partitions": status.owned_partitions(),
        "lag": lag_body(status),
        "attribute_store": {"backend": health.backend, "ok": health.ok, "detail": health.detail},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    state = request.app.state
    body: bytes = state.metrics.exposition()
    if state.worker is not None:
        worker = await ask_worker(request, "/metrics")
        if worker is not None and worker.status_code == 200:
            # The serving processes' families (HTTP latencies, shedding) are theirs.
            body += drop_families(worker.content, families_in(body))
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def ask_worker(request: Request, path: str) -> httpx.Response | None:
    """GET ``path`` from this serving process's worker; None when it does not answer."""
    state = request.app.state
    url = state.worker.url()
    if url is None:
        return None
    headers = {}
    if state.settings.api_token:
        headers["authorization"] = f"Bearer {state.settings.api_token}"
    try:
        return await state.http.get(f"{url}{path}", headers=headers)  # type: ignore[no-any-return]
    except httpx.HTTPError:
        return None


def families_in(exposition: bytes) -> set[bytes]:
    """The metric families a Prometheus text exposition declares."""
    return {
        line.split(b" ", 3)[2] for line in exposition.splitlines() if line.startswith(b"# HELP ")
    }


def drop_families(exposition: bytes, names: set[bytes]) -> bytes:
    """``exposition`` without the families named (each family's lines are contiguous)."""
    kept: list[bytes] = []
    dropping = False
    for line in exposition.splitlines(keepends=True):
        if line.startswith(b"# HELP "):
            dropping = line.split(b" ", 3)[2] in names
        if not dropping:
            kept.append(line)
    return b"".join(kept)


async def member_features(request: Request) -> Response:
    """Recent actions and windowed counts of one member, read from the owning worker."""
    params = parse(FeaturesParams, {**request.query_params, **request.path_params})
    source: FeatureSource = request.app.state.features
    try:
        features = await source.features(params.member_id, params.as_of)
    except NotOwned as owner:
        return await forward_to_owner(request, owner)
    settings: Settings = request.app.state.settings
    return JSONResponse(_joined_encoded_once(features, settings.join_at_read))


async def erase_member(request: Request) -> Response:
    """Record an erasure of the member; 202 once the erasures topic has it.

    Any process may take the request: the record is produced to the member's partition of
    the erasures topic, which the owner of that partition applies (within seconds), and
    which every worker checks events against from then on. Erasing twice is two erasures,
    each answered 202; erasing a member nearline never saw is no error either.
    """
    state = request.app.state
    metrics: Metrics | ServingMetrics = state.metrics
    try:
        member_id = check_member_id(request.path_params["member_id"])
    except InvalidMemberId as exc:
        metrics.erasures.labels("invalid").inc()
        raise ApiError(422, f"invalid member id: {exc}") from None
    client = request.client
    requested_by = f"api:{client.host}" if client is not None else "api"
    erasures: ErasureSink = state.erasures
    try:
        erasure = await asyncio.wait_for(erasures.request(member_id, requested_by), ERASURE_TIMEOUT)
    except Exception as exc:  # the broker did not take it: nothing was promised
        log.warning("erasure of %r not recorded: %r", member_id, exc)
        raise ApiError(
            503, f"the erasure could not be recorded ({type(exc).__name__}); retry shortly"
        ) from None
    metrics.erasures.labels("requested").inc()
    return JSONResponse(
        {
            "erasure_id": erasure.erasure_id,
            "member_id": erasure.member_id,
            "requested_at": erasure.requested_at,
        },
        status_code=202,
    )


def _joined_encoded_once(features: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """``features`` with the lists joined at read (``fields``) as :func:`codec.shared_json`.

    They are the attribute records' own lists, the same in every response until a record
    changes: encoding a member's 100 joined embeddings was most of a read's JSON.
    """
    if fields:
        shared = codec.shared_json
        for action in features.get("recent_actions") or ():
            attributes = action.get("attributes")
            if attributes:
                for name in fields:
                    value = attributes.get(name)
                    if value.__class__ is list:
                        attributes[name] = shared(value)
    return features


async def _ask_owner(
    request: Request, owner: NotOwned, path: str, params: dict[str, str]
) -> httpx.Response:
    """GET ``path`` from the worker owning the partition; a 503 if that is impossible."""
    settings: Settings = request.app.state.settings
    if request.headers.get(FORWARDED_HEADER) or owner.owner_url in (None, settings.web_url):
        # Already forwarded once, no owner yet, or the owner thinks it is us: a rebalance
        # is under way, and bouncing the request on would only chase it.
        raise ApiError(503, f"partition {owner.partition} is being rebalanced; retry shortly")
    headers = {FORWARDED_HEADER: settings.web_url}
    if settings.api_token:
        headers["authorization"] = f"Bearer {settings.api_token}"
    http: httpx.AsyncClient = request.app.state.http
    try:
        return await http.get(f"{owner.owner_url}{path}", params=params, headers=headers)
    except httpx.HTTPError as exc:
        raise ApiError(
            503,
            f"the worker owning partition {owner.partition} ({owner.owner_url}) "
            f"did not answer: {type(exc).__name__}; retry shortly",
        ) from None


async def forward_to_owner(request: Request, owner: NotOwned) -> Response:
    """Answer ``request`` with what the worker owning the partition answers to it."""
    response = await _ask_owner(request, owner, request.url.path, dict(request.query_params))
    return Response(
        response.content,
        status_code=response.status_code,
        media_type=response.headers.get("content-type"),
    )


async def _body_up_to(request: Request, limit: int) -> bytes:
    """The request body; a 413 as soon as it grows past ``limit`` bytes."""
    too_large = ApiError(413, f"the body is over the limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def recommendations(request: Request) -> Response:
    """Rank the candidates for a member, with fresh features from the online store."""
    settings: Settings = request.app.state.settings
    try:
        raw = await _body_up_to(request, MAX_BODY_BYTES)
    except ClientDisconnect:
        return Response(status_code=499)  # the client is gone; nobody reads this
    try:
        body = codec.loads(raw)
    except codec.DecodeError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
    ask = parse(RecommendationRequest, body)
    check_candidates(len(ask.candidates), settings.max_candidates, ask.k)
    recommender: Recommender = request.app.state.recommender
    assignment = recommender.assign(ask.member_id)
    as_of = recommender.features_as_of(assignment, ask.features_as_of)
    source: FeatureSource = request.app.state.features
    try:
        features = await source.features(ask.member_id, as_of)
    except NotOwned as owner:
        answer = await _ask_owner(
            request,
            owner,
            f"/v1/members/{quote(ask.member_id, safe='')}/features",
            {"as_of": repr(as_of)},
        )
        if answer.status_code != 200:  # the owner's own error, relayed as it said it
            return Response(answer.content, answer.status_code, media_type="application/json")
        features = answer.json()
    response = await recommender.recommend(ask, features, assignment=assignment)
    if "stale_ms" in features:
        response["stale_ms"] = features["stale_ms"]
    return JSONResponse(response)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.state.settings))
