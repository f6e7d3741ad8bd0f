"""Recommendations: member features + candidate attributes → vectorizer → ranker → log."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any, Literal, Protocol, cast

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from nearline.attribute_store import CachedAttributeStore, ItemAttributes, Kind, StoreUnavailable
from nearline.foundation.limits import MAX_AS_OF, MAX_ID_LENGTH
from nearline.model.feature_log import log_record
from nearline.model.heuristic import RankerKind, ranker_kind
from nearline.model.item_rows import ItemRows
from nearline.model.registry import Assignment, ModelRegistry
from nearline.model.vectorizer import Vectorizer

__all__ = [
    "Id",
    "RankedItem",
    "RecommendationRequest",
    "RecommendationResponse",
    "RecommendationsSink",
    "Recommender",
]

log = logging.getLogger(__name__)

#: A member or item id as a request may name it.
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]


def _a_json_number(value: Any) -> Any:
    """Refuse what Python would take for a number but JSON does not: true, false, "5"."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number, not a boolean or a string")
    return value


class RecommendationRequest(BaseModel):
    """The body of ``POST /v1/recommendations``.

    ``candidates`` and ``k`` are at most the deployment's NEARLINE_MAX_CANDIDATES: the web
    app checks that, and its OpenAPI document states the value.
    """

    model_config = ConfigDict(extra="forbid")

    member_id: Id
    # Checked item by item in pydantic's core: a Python validator cost ~30 us per 500.
    candidates: list[Id] = Field(min_length=1)
    # A JSON integer: 5 and 5.0 (JSON Schema's integer is the value, not the spelling);
    # never 5.5, true or "5".
    k: Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_a_json_number)] | None = None
    context: dict[str, Any] | None = None
    # Strict: JSON true and false are not 1 and 0, nor "5" a number (an integer is a float).
    features_as_of: float | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=MAX_AS_OF,
        allow_inf_nan=False,
        description="Read the member's features as of this Unix time (e.g. a daily batch "
        "cut-off); events after it are ignored. Default: now.",
    )


class RankedItem(BaseModel):
    """One candidate of a response, best first."""

    item_id: str
    score: float
    unknown: bool | None = Field(
        default=None, description="Present (true) when the item has no attribute record"
    )


class RecommendationResponse(BaseModel):
    """The answer of ``POST /v1/recommendations`` (built as a dict on the hot path)."""

    request_id: str
    model_version: str
    ranker: RankerKind
    items: list[RankedItem]
    attribute_store: Literal["unavailable"] | None = Field(
        default=None,
        description="Present when the attribute store could not be read: items were ranked "
        "with what was cached",
    )
    experiment: dict[str, str] | None = Field(
        default=None,
        description="Present while an experiment runs: its id and the member's arm "
        '(`{"id": ..., "arm": ...}`)',
    )
    stale_ms: int | None = Field(
        default=None,
        description="Present when the member's features may be this many milliseconds old: "
        "the worker is restarting or restoring the member's partition",
    )


class RecommendationsSink(Protocol):
    """Where served responses go to become training examples (the recommendations log)."""

    async def log(self, member_id: str, record: dict[str, Any]) -> None: ...


class Recommender:
    """Scores candidates for a member with the active ranker and logs what it did."""

    def __init__(
        self,
        registry: ModelRegistry,
        attributes: CachedAttributeStore,
        log: RecommendationsSink,
        *,
        memo_size: int = 100_000,
        log_candidates: str = "served",
    ) -> None:
        self.registry = registry
        self.attributes = attributes
        self.recommendations_log = log
        self.vectorizer: Vectorizer = registry.vectorizer
        self._feature_names = list(self.vectorizer.feature_names)  # logged with every response
        self.log_served_only = log_candidates == "served"  # else every candidate's row
        # Each candidate's half of the vectorizer, computed once per attribute record and
        # trusted as long as the attribute cache would hand out that record.
        self.items = ItemRows(self.vectorizer, capacity=memo_size)
        attributes.watch(self._attributes_changed)

    def _attributes_changed(self, kind: Kind, ids: list[str] | None) -> None:
        if kind == "items":
            self.items.forget(ids)

    def assign(self, member_id: str) -> Assignment | None:
        """The member's arm of the running experiment: read before the member's features,
        since a ``daily`` arm reads them as of the previous midnight."""
        return self.registry.assign(member_id)

    @staticmethod
    def features_as_of(assignment: Assignment | None, asked: float | None = None) -> float:
        """When to read the member's features: the caller's cut-off if it gave one, else the
        start of a ``daily`` arm's day (the experiment's: midnight UTC by default), else now.

        /v1/recommendations and the console's preview both ask here, so a preview ranks on
        the features the member's arm would serve.
        """
        if asked is not None:
            return asked
        now = time.time()
        if assignment is not None and assignment.arm.features == "daily":
            return assignment.cutoff(now)
        return now

    async def recommend(
        self,
        request: RecommendationRequest,
        features: dict[str, Any],
        *,
        log_response: bool = True,
        assignment: Assignment | None = None,
    ) -> dict[str, Any]:
        """Rank ``request.candidates`` given the member's ``features``; log the response.

        ``log_response=False`` ranks without logging: a preview nobody is shown must not
        become a training example. ``assignment``: the member's arm (:meth:`assign`), whose
        ranker then ranks, and which is logged with the response.
        """
        now = time.time()
        candidates = list(dict.fromkeys(request.candidates))
        cache = self.attributes
        store_ok = True

        async def fetch(ids: list[str]) -> dict[str, tuple[ItemAttributes | None, float]]:
            nonlocal store_ok
            try:
                found = await cache.get_many_until(ids)  # items: item records only
                return cast("dict[str, tuple[ItemAttributes | None, float]]", found)
            except (StoreUnavailable, TimeoutError) as exc:
                log.warning("attribute store unavailable for recommendations: %s", exc)
                store_ok = False
                return {}  # unknown for this request; rows already known are still used

        rows, absent = await self.items.fetch_rows(candidates, fetch, cache.clock())
        member_attributes = None
        if store_ok:
            try:
                members = await cache.get_many([request.member_id], kind="members")
            except (StoreUnavailable, TimeoutError) as exc:
                log.warning("attribute store unavailable for recommendations: %s", exc)
                members, store_ok = {}, False
            member = members.get(request.member_id)
            member_attributes = member.as_flat_dict() if member is not None else None
        # Read once: a hot reload cannot change it mid-request.
        ranker = self.registry.active if assignment is None else assignment.ranker
        matrix = self.vectorizer.transform_rows(features, rows, now, member_attributes)
        scores = np.asarray(ranker.score(matrix), dtype=np.float64)
        k = min(request.k or len(candidates), len(candidates))
        order = np.argsort(-scores, kind="stable")[:k]  # ties keep the candidates' order
        unknown = set(absent)
        ranked = [
            {
                "item_id": candidates[i],
                "score": round(float(scores[i]), 6),
                **({"unknown": True} if candidates[i] in unknown else {}),
            }
            for i in order
        ]
        request_id = uuid.uuid4().hex
        response: dict[str, Any] = {
            "request_id": request_id,
            "model_version": ranker.version,
            "ranker": ranker_kind(ranker.version),
            "items": ranked,
        }
        arm = None
        if assignment is not None:
            arm = {"id": assignment.experiment, "arm": assignment.arm.name}
            response["experiment"] = arm
        if not store_ok:
            response["attribute_store"] = "unavailable"
        if not log_response:
            return response
        # The examples are what the member was shown: the served items' rows, top first
        # (NEARLINE_LOG_CANDIDATES=all logs every candidate's, ~25x the bytes at 500 / 20).
        logged = order if self.log_served_only else np.arange(len(candidates))
        await self.recommendations_log.log(
            request.member_id,
            log_record(
                request_id=request_id,
                member_id=request.member_id,
                ts=now,
                features_as_of=features.get("as_of"),
                model_version=ranker.version,
                feature_names=self._feature_names,
                item_ids=[candidates[i] for i in logged],
                matrix=matrix[logged],
                ranked=[entry["item_id"] for entry in ranked],
                context=request.context or {},
                experiment=arm,
            ),
        )
        return response
