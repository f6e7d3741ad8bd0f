"""The HTTP API's schemas as pydantic models, and the OpenAPI document generated from them.

Each request and response shape is written once, as a model: the handlers validate
requests with them (and the console's system view is built from its model), and
``/openapi.json`` is their JSON Schema. Answers built as dicts on the hot path (features,
rankings) are checked against their models by the unit tests and the schemathesis fuzz.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from nearline.app.recommend import Id, RankedItem, RecommendationRequest, RecommendationResponse
from nearline.foundation.limits import MAX_AS_OF, MAX_BODY_BYTES, MAX_ID_LENGTH
from nearline.foundation.settings import Settings
from nearline.model.heuristic import RankerKind

__all__ = [
    "ErrorBody",
    "ExperimentView",
    "FeaturesParams",
    "FeaturesResponse",
    "Ranking",
    "RankingParams",
    "SystemView",
    "candidates_pattern",
    "openapi_document",
]

_REF = "#/components/schemas/{model}"


class ErrorBody(BaseModel):
    """Every error's body: what is wrong and how to fix it, in words."""

    model_config = ConfigDict(extra="allow")

    error: str
    problems: list[str] | None = Field(
        default=None, description="With a 422: each field's problem, as `field: message`"
    )


# -- member features -------------------------------------------------------------------


class FeaturesParams(BaseModel):
    """The path and query of ``GET /v1/members/{member_id}/features``."""

    member_id: Id
    as_of: float = Field(
        default_factory=time.time,
        ge=0,
        le=MAX_AS_OF,
        allow_inf_nan=False,
        description="Unix seconds; the member's state as of then (default: now)",
    )


class MemberPath(BaseModel):
    """The path of ``DELETE /v1/members/{member_id}``."""

    member_id: str = Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=r"^[^\x00-\x1f]*$",
        description="The member's id, as its actions carry it (no control characters)",
    )


class RecentAction(BaseModel):
    event_id: str
    item_id: str
    action: str
    ts: float
    attributes: dict[str, Any]
    joined: bool | None = Field(
        default=None, description="Whether the ingest-time attributes were joined at ingest"
    )
    missing: list[str] | None = Field(
        default=None, description="Attributes the action should have and does not"
    )


class Erased(BaseModel):
    """The member's last erasure, as its owner applied it."""

    erasure_id: str
    erased_at: float = Field(description="Unix seconds: the time the erasure was requested")


class ErasureAccepted(BaseModel):
    """An erasure recorded: its owner deletes the member's data within seconds."""

    erasure_id: str
    member_id: str
    requested_at: float = Field(description="Unix seconds; events at or before it are erased")


class FeaturesResponse(BaseModel):
    """A member's recent actions (newest first) and counts per action per window."""

    member_id: str
    as_of: float
    known: bool = Field(description="False for a member nearline has never seen (cold start)")
    last_event_ts: float | None = None
    last_applied_at: float | None = None
    attribute_store: Literal["unavailable"] | None = Field(
        default=None, description="Present when read-time attributes could not be joined"
    )
    recent_actions: list[RecentAction]
    counts: dict[str, dict[str, int]] = Field(description="window → action → count")
    stale_ms: int | None = Field(
        default=None,
        description="Present when the answer comes from state that may be this many "
        "milliseconds old: the worker is restarting or restoring the member's partition",
    )
    erased: Erased | None = Field(
        default=None,
        description="Present when the member was erased: nothing of theirs at or before "
        "erased_at is kept; what is shown came later",
    )


# -- the console -----------------------------------------------------------------------


def candidates_pattern(max_candidates: int) -> str:
    """What a console ranking's ``candidates`` may be: at most ``max_candidates`` ids."""
    return rf"^[^,]{{0,{MAX_ID_LENGTH}}}(,[^,]{{0,{MAX_ID_LENGTH}}}){{0,{max_candidates - 1}}}$"


class RankingParams(BaseModel):
    """The path and query of ``GET /v1/console/members/{member_id}/ranking``."""

    member_id: Id
    candidates: str = Field(
        default="",
        description="Comma-separated item ids (at most NEARLINE_MAX_CANDIDATES, each at most "
        f"{MAX_ID_LENGTH} characters); when it names none, the demo catalogue sample "
        "(item-0 .. item-23)",
    )


class RankedItemView(RankedItem):
    category: str | None = None
    company: str | None = None


class Ranking(RecommendationResponse):
    """What ``POST /v1/recommendations`` would answer now, with each item's category and
    company; not logged."""

    items: list[RankedItemView]  # type: ignore[assignment]  # a subclass of the items
    last_applied_at: float | None = None


class Ingest(BaseModel):
    per_s: float
    events_in: float
    applied: float
    dropped: dict[str, float] = Field(description="Actions dropped, by reason")


class Freshness(BaseModel):
    """Seconds from an action's time to its being applied, over the window."""

    events: int
    p50: float | None
    p99: float | None


class PartitionLagView(BaseModel):
    topic: str
    partition: int
    lag: int
    stalled_seconds: float


class AttributeStoreView(BaseModel):
    backend: str
    ok: bool
    detail: str


class PartitionOwner(BaseModel):
    partition: int
    here: bool
    owner: str | None = Field(description="The owning worker's URL; null while unassigned")


class ModelView(BaseModel):
    version: str
    ranker: RankerKind
    created_at: Any = None
    metrics: Any = None
    training: dict[str, Any] = Field(default_factory=dict)


class ServingView(BaseModel):
    """The serving processes that answer for the worker (NEARLINE_SERVE_PROCESSES)."""

    processes: int = Field(description="Serving processes configured")
    answered_by: int = Field(description="The pid of the serving process that answered")
    max_staleness_ms: float = Field(description="NEARLINE_SERVE_MAX_STALENESS")
    stale_ms: dict[str, int | None] = Field(
        description="By partition read here: how old its state may be, when the worker is "
        "down or restoring it (null while it follows the worker)"
    )


class ErasureStoreView(BaseModel):
    count: int = Field(description="Erasures this worker applied to the store")
    p99_seconds: float | None = Field(
        description="Request to deletion, p99 (the upper bound of its histogram bucket)"
    )


class ErasuresView(BaseModel):
    outcomes: dict[str, float] = Field(description="nearline_erasures_total by outcome")
    events_ignored: float = Field(description="Events of erased members ignored")
    stores: dict[str, ErasureStoreView] = Field(description="By store: online, pending, attributes")


class SystemView(BaseModel):
    """The console's view of one worker."""

    now: float
    worker: str
    ready: bool
    reason: str
    alive: bool
    liveness: str
    ingest: Ingest
    freshness: dict[str, Freshness] = Field(description="By window: 1m, 5m")
    lag: list[PartitionLagView]
    stall_timeout: float
    topics: dict[str, str] = Field(description="Each consumed topic's role")
    dead_letters: dict[str, float] = Field(description="Records dead-lettered, by reason")
    attribute_store: AttributeStoreView
    partitions: list[PartitionOwner]
    model: ModelView
    series: dict[str, list[int | float | None]] = Field(description="Per-second series for charts")
    recent_members: list[str]
    erasures: ErasuresView
    serving: ServingView | None = Field(
        default=None, description="Present when serving processes answer for the worker"
    )


class ExperimentView(BaseModel):
    """The console's experiment panel: the running experiment's arms side by side."""

    experiment: dict[str, Any] | None = Field(
        description="The definition (id, arms with version, feature mode and share); null "
        "while no experiment runs"
    )
    level: float | None = Field(default=None, description="The intervals' confidence level")
    metric: str | None = Field(default=None, description="The metric arms are compared on")
    against: str | None = Field(default=None, description="The arm the others are compared to")
    arms: dict[str, Any] = Field(
        default_factory=dict,
        description="Per arm: members, totals, first-positive position, and each metric's "
        "value with its interval (a bootstrap over members)",
    )
    comparisons: dict[str, Any] = Field(
        default_factory=dict,
        description="Per other arm: the metric's difference, its interval, and how many more "
        "responses the observed effect needs to be decided",
    )


# -- the document ----------------------------------------------------------------------

#: Every schema of the document; their nested models come along as components too.
_COMPONENTS: tuple[type[BaseModel], ...] = (
    ErrorBody,
    FeaturesResponse,
    ErasureAccepted,
    RecommendationRequest,
    RecommendationResponse,
    SystemView,
    Ranking,
    ExperimentView,
)


def _json(description: str, model: type[BaseModel]) -> dict[str, Any]:
    """A response (or request body) of ``model`` as JSON."""
    schema = {"$ref": _REF.format(model=model.__name__)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _parameters(model: type[BaseModel], path: str) -> list[dict[str, Any]]:
    """A params model's fields as OpenAPI parameters: in the path if ``path`` names them."""
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        field = {key: value for key, value in field.items() if key != "title"}
        in_path = f"{{{name}}}" in path
        parameter = {"name": name, "in": "path" if in_path else "query"}
        parameter["required"] = in_path or name in required
        if "description" in field:
            parameter["description"] = field.pop("description")
        parameters.append({**parameter, "schema": field})
    return parameters


def _limit_candidates(schemas: dict[str, Any], ranking: list[dict[str, Any]], limit: int) -> None:
    """Write NEARLINE_MAX_CANDIDATES where it bounds a request (the web app checks it with
    the deployment's value): RecommendationRequest's ``candidates`` and ``k``, and the
    console ranking's ``candidates``."""
    properties = schemas["RecommendationRequest"]["properties"]
    properties["candidates"]["maxItems"] = limit
    for option in properties["k"].get("anyOf", [properties["k"]]):
        if option.get("type") == "integer":
            option["maximum"] = limit
    for parameter in ranking:
        if parameter["name"] == "candidates":
            parameter["schema"]["pattern"] = candidates_pattern(limit)


def _probe(summary: str, ok: str, failing: str | None = None) -> dict[str, Any]:
    responses = {"200": {"description": ok}}
    if failing is not None:
        responses["503"] = {"description": failing}
    return {"get": {"summary": summary, "responses": responses}}


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this deployment (its token and candidate limit).

    Built once per limit and token setting (generating the schemas takes milliseconds, and
    every ``/openapi.json`` asks): the same dict is returned each time, not to be changed.
    """
    return _document(settings.max_candidates, bool(settings.api_token))


@cache
def _document(max_candidates: int, token_required: bool) -> dict[str, Any]:
    _, top = models_json_schema([(model, "validation") for model in _COMPONENTS], ref_template=_REF)
    schemas = top["$defs"]
    features_path = "/v1/members/{member_id}/features"
    member_path = "/v1/members/{member_id}"
    ranking_path = "/v1/console/members/{member_id}/ranking"
    ranking_parameters = _parameters(RankingParams, ranking_path)
    _limit_candidates(schemas, ranking_parameters, max_candidates)
    errors = {
        "503": _json(
            "Rebalancing, the owning worker unreachable, or overloaded: retry after "
            "Retry-After seconds",
            ErrorBody,
        ),
        "422": _json("A value breaks a limit or a field's rule", ErrorBody),
    }
    if token_required:
        errors["401"] = _json("Missing or wrong bearer token", ErrorBody)

    def v1(
        summary: str, answer: dict[str, Any], status: str = "200", **operation: Any
    ) -> dict[str, Any]:
        """A /v1 operation: behind the token if one is set, and its errors."""
        security: list[dict[str, list[str]]] = [{"bearer": []}] if token_required else []
        responses = {status: answer, **operation.pop("responses", {}), **errors}
        return {"summary": summary, "security": security, **operation, "responses": responses}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nearline",
            "version": "0.1.0",
            "description": "Fresh member features and recommendations from the online store.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            features_path: {
                "get": v1(
                    "A member's recent actions and windowed counts",
                    _json("The member's features (empty when unknown)", FeaturesResponse),
                    parameters=_parameters(FeaturesParams, features_path),
                )
            },
            member_path: {
                "delete": v1(
                    "Erase a member's data from every store",
                    _json("The erasure is recorded; it completes within seconds", ErasureAccepted),
                    "202",
                    description="Recorded in the erasures topic on the member's partition; "
                    "its owner deletes the member's features, pending outcomes and "
                    "attributes, and events at or before requested_at are ignored from then "
                    "on. Erasing twice is two erasures; an unknown member is no error.",
                    parameters=_parameters(MemberPath, member_path),
                )
            },
            "/v1/recommendations": {
                "post": v1(
                    "Rank candidate items for a member",
                    _json("Candidates ranked by score, best first", RecommendationResponse),
                    requestBody={
                        "required": True,
                        **_json("The member and the candidates", RecommendationRequest),
                    },
                    responses={
                        "400": _json("The body is not JSON", ErrorBody),
                        "413": _json(f"The body is over {MAX_BODY_BYTES} bytes", ErrorBody),
                    },
                )
            },
            "/v1/console/system": {
                "get": v1(
                    "The console's system view of this worker",
                    _json("The system view", SystemView),
                    description="Ingest rate, freshness p50/p99 (1 and 5 min), consumer lag "
                    "per partition, dead letters by reason, attribute store health, partition "
                    "owners, the active model, and per-second series for charts.",
                )
            },
            "/v1/console/experiment": {
                "get": v1(
                    "The running experiment's arms side by side",
                    _json("The arms and their intervals", ExperimentView),
                    description="Computed from every worker's labelled responses (the "
                    "training-examples topic), recomputed every few seconds.",
                )
            },
            ranking_path: {
                "get": v1(
                    "The member's ranking of candidates now, not logged",
                    _json("Candidates ranked by score, best first", Ranking),
                    description="What /v1/recommendations would answer, without writing to "
                    "the recommendations log (a preview is no impression). Ranked by the worker "
                    "owning the member.",
                    parameters=ranking_parameters,
                )
            },
            "/healthz": _probe(
                "Liveness",
                "alive and making progress",
                "stalled: a partition with lag applies nothing",
            ),
            "/readyz": _probe("Readiness", "ready", "not ready"),
            "/metrics": _probe("Prometheus metrics", "text"),
        },
    }
