"""The console's routes: its page and static files, and the two JSON views it adds to /v1."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from nearline.app.console.timeline import IngestTimeline
from nearline.app.experiments import LiveResults
from nearline.app.openapi import ExperimentView, RankingParams, SystemView
from nearline.app.recommend import RecommendationRequest, Recommender
from nearline.app.traffic import DEMO_CATALOGUE_SAMPLE
from nearline.app.web import (
    ApiError,
    FeatureSource,
    JSONResponse,
    StatusSource,
    ask_worker,
    check_candidates,
    forward_to_owner,
    lag_body,
    parse,
)
from nearline.attribute_store import CachedAttributeStore, StoreUnavailable
from nearline.foundation import codec
from nearline.foundation.metrics import Metrics
from nearline.foundation.settings import Settings
from nearline.model.heuristic import ranker_kind
from nearline.model.registry import ModelRegistry
from nearline.tables.online_store import NotOwned

__all__ = ["console_routes", "erasures_view", "parse_candidates", "totals_by_label"]

#: How often the page asks for fresh data (milliseconds); sent to it in its config.
POLL_MS = 1000
_STATIC = resources.files("nearline.app.console") / "static"


def totals_by_label(counter: Counter) -> dict[str, float]:
    """A labelled counter's current totals, by its (single) label's value."""
    totals: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels:
                totals[next(iter(sample.labels.values()))] = sample.value
    return totals


def _total(counter: Counter) -> float:
    return sum(
        sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def erasures_view(metrics: Metrics) -> dict[str, Any]:
    """Erasures requested and applied here, and how long each store took (p99)."""
    stores: dict[str, dict[str, Any]] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in metrics.erasure_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                store = sample.labels["store"]
                buckets.setdefault(store, []).append((float(sample.labels["le"]), sample.value))
    for store, cumulative in buckets.items():
        cumulative.sort()
        count = cumulative[-1][1]
        p99 = next((le for le, n in cumulative if n >= 0.99 * count), None) if count else None
        stores[store] = {"count": int(count), "p99_seconds": p99}
    return {
        "outcomes": totals_by_label(metrics.erasures),
        "events_ignored": totals_by_label(metrics.events_dropped).get("erased", 0.0),
        "stores": stores,
    }


def parse_candidates(raw: str | None) -> list[str]:
    """``candidates=a,b,c`` from the query string; the demo's catalogue sample if it names
    none."""
    named = [part.strip() for part in (raw or "").split(",") if part.strip()]
    return named or list(DEMO_CATALOGUE_SAMPLE)


async def _root(request: Request) -> Response:
    return RedirectResponse("/console", status_code=307)


async def _page(request: Request) -> Response:
    return FileResponse(str(_STATIC / "console.html"), media_type="text/html")


async def _config(request: Request) -> Response:
    """What the page needs before it may call /v1: never secret, so never protected."""
    settings: Settings = request.app.state.settings
    return JSONResponse(
        {
            "token_required": bool(settings.api_token),
            "candidates": list(DEMO_CATALOGUE_SAMPLE),
            "max_candidates": settings.max_candidates,
            "poll_ms": POLL_MS,
        }
    )


def _model(registry: ModelRegistry) -> dict[str, Any]:
    version = registry.active.version
    metadata = registry.active_metadata
    return {
        "version": version,
        "ranker": ranker_kind(version),
        "created_at": metadata.get("created_at"),
        "metrics": metadata.get("metrics"),
        "training": {
            key: value
            for key, value in (metadata.get("training") or {}).items()
            if key in ("train_rows", "validation_rows", "train_range", "best_epoch")
        },
    }


async def _system(request: Request) -> Response:
    """The system view of this worker: ingest, freshness, lag, DLQ, store, partitions, model."""
    state = request.app.state
    if state.worker is not None:
        # A serving process: ingest, lag and freshness are the worker's to tell.
        answer = await ask_worker(request, "/v1/console/system")
        if answer is None:
            raise ApiError(503, "the worker is not answering (restarting?); retry shortly")
        if answer.status_code != 200:
            return Response(answer.content, answer.status_code, media_type="application/json")
        view = codec.loads(answer.content)
        view["serving"] = state.worker.serving_view()
        return JSONResponse(SystemView.model_validate(view).model_dump())
    settings: Settings = state.settings
    status: StatusSource = state.status
    timeline: IngestTimeline = state.timeline
    metrics: Metrics = state.metrics
    now = time.time()
    ready, reason = status.readiness()
    alive, liveness = status.liveness()
    health = status.attribute_health
    owned = status.owned_partitions()
    view = {
        "now": now,
        "worker": settings.web_url,
        "ready": ready,
        "reason": reason,
        "alive": alive,
        "liveness": liveness,
        "ingest": {
            "per_s": timeline.ingest_rate(now),
            "events_in": _total(metrics.events_in),
            "applied": _total(metrics.events_applied),
            "dropped": totals_by_label(metrics.events_dropped),
        },
        "freshness": {"1m": timeline.freshness(now, 60), "5m": timeline.freshness(now, 300)},
        "lag": lag_body(status),
        "stall_timeout": settings.stall_timeout,
        # What each consumed topic is, for the lag columns' headings.
        "topics": {
            settings.topic_actions: "actions",
            settings.topic_recommendations_log: "recommendations log",
        },
        "dead_letters": totals_by_label(metrics.events_dead_lettered),
        "attribute_store": {"backend": health.backend, "ok": health.ok, "detail": health.detail},
        "partitions": [
            {
                "partition": p,
                "here": p in owned,
                "owner": settings.web_url if p in owned else status.owner_url(p),
            }
            for p in range(status.partitions)
        ],
        "model": _model(state.models),
        "series": timeline.series(now),
        "recent_members": timeline.recent_members(),
        "erasures": erasures_view(metrics),
    }
    # Built through its model: the OpenAPI document describes exactly what is sent.
    return JSONResponse(SystemView.model_validate(view).model_dump())


async def _experiment(request: Request) -> Response:
    """The running experiment's arms side by side, with their intervals.

    Every worker follows every worker's outcomes, so any one answers; a serving process
    asks its worker.
    """
    state = request.app.state
    if state.worker is not None:
        answer = await ask_worker(request, "/v1/console/experiment")
        if answer is None:
            raise ApiError(503, "the worker is not answering (restarting?); retry shortly")
        return Response(answer.content, answer.status_code, media_type="application/json")
    live: LiveResults | None = state.experiment
    view = (live.view() if live is not None else None) or {"experiment": None}
    return JSONResponse(ExperimentView.model_validate(view).model_dump())


async def _ranking(request: Request) -> Response:
    """The member's ranking of ``candidates``, as /v1/recommendations would answer now:
    by the member's experiment arm (its ranker, on its features), if one runs.

    Not logged to the recommendations log: nobody was shown it, so it must not become a
    training example. Members of partitions owned elsewhere are ranked by their owner.
    """
    state = request.app.state
    settings: Settings = state.settings
    params = parse(RankingParams, {**request.query_params, **request.path_params})
    candidates = parse_candidates(params.candidates)
    check_candidates(len(candidates), settings.max_candidates)
    ask = parse(RecommendationRequest, {"member_id": params.member_id, "candidates": candidates})
    recommender: Recommender = state.recommender
    assignment = recommender.assign(ask.member_id)
    source: FeatureSource = state.features
    try:
        features = await source.features(ask.member_id, recommender.features_as_of(assignment))
    except NotOwned as owner:
        return await forward_to_owner(request, owner)
    ranked = await recommender.recommend(ask, features, log_response=False, assignment=assignment)
    attributes: CachedAttributeStore = state.attributes
    try:
        found = await attributes.get_many([i["item_id"] for i in ranked["items"]])
    except (StoreUnavailable, TimeoutError):
        found = {}
    for item in ranked["items"]:
        record = found.get(item["item_id"])
        if record is not None:
            flat = record.as_flat_dict()
            item["category"] = flat.get("category")
            item["company"] = flat.get("company")
    ranked["last_applied_at"] = features.get("last_applied_at")
    return JSONResponse(ranked)


def console_routes() -> list[BaseRoute]:
    """``/`` redirects to ``/console``; page and static files are open, ``/v1/console/*``
    is behind the API token like the rest of /v1."""
    return [
        Route("/", _root, methods=["GET"]),
        Route("/console", _page, methods=["GET"]),
        Route("/console/config.json", _config, methods=["GET"]),
        Mount("/console/static", StaticFiles(directory=str(_STATIC)), name="console-static"),
        Route("/v1/console/system", _system, methods=["GET"]),
        Route("/v1/console/experiment", _experiment, methods=["GET"]),
        Route("/v1/console/members/{member_id}/ranking", _ranking, methods=["GET"]),
    ]
