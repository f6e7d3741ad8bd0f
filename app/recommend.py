"""Recommendations: member features + candidate attributes → vectorizer → ranker → log."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.registry import ModelRegistry
from model.vectorizer import Vectorizer
from tables.attributes import ItemAttributes, StoreUnavailable

if TYPE_CHECKING:
    from app.worker import Nearline

__all__ = ["RecommendationRequest", "Recommender"]

log = logging.getLogger(__name__)


class RecommendationRequest(BaseModel):
    """The body of ``POST /v1/recommendations``."""

    model_config = ConfigDict(extra="forbid")

    member_id: str = Field(min_length=1, max_length=256)
    candidates: list[str] = Field(min_length=1)
    k: int | None = Field(default=None, ge=1, le=1_000_000)
    context: dict[str, Any] | None = None
    features_as_of: float | None = Field(
        default=None,
        ge=0,
        description="Read the member's features as of this Unix time (e.g. a daily batch "
        "cut-off); events after it are ignored. Default: now.",
    )

    @field_validator("candidates")
    @classmethod
    def _candidate_ids(cls, value: list[str]) -> list[str]:
        for item_id in value:
            if not item_id or len(item_id) > 256:
                raise ValueError("every candidate must be an item id of 1 to 256 characters")
        return value


class Recommender:
    """Scores candidates for a member with the active ranker and logs what it did."""

    def __init__(
        self, nearline: Nearline, registry: ModelRegistry, memo_size: int = 100_000
    ) -> None:
        self.nearline = nearline
        self.registry = registry
        self.vectorizer: Vectorizer = registry.vectorizer
        self._feature_names = list(self.vectorizer.feature_names)  # logged with every response
        # Flattened candidates with float32 embeddings, per record object: the cache hands
        # out the same object until the item changes, so a hit is always current.
        self._memo: OrderedDict[str, tuple[ItemAttributes, dict[str, Any]]] = OrderedDict()
        self._memo_size = memo_size

    def _flat(self, record: ItemAttributes) -> dict[str, Any]:
        hit = self._memo.get(record.item_id)
        if hit is not None and hit[0] is record:
            self._memo.move_to_end(record.item_id)
            return hit[1]
        flat = record.as_flat_dict()
        if record.embedding is not None:
            flat["embedding"] = np.asarray(record.embedding, dtype=np.float32)
        self._memo[record.item_id] = (record, flat)
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return flat

    async def recommend(
        self, request: RecommendationRequest, features: dict[str, Any]
    ) -> dict[str, Any]:
        """Rank ``request.candidates`` given the member's ``features``; log the response."""
        nearline = self.nearline
        now = time.time()
        candidates = list(dict.fromkeys(request.candidates))
        store_ok = True
        try:
            items = await nearline.attributes_cached.get_many(candidates)
            members = await nearline.attributes_cached.get_many([request.member_id], kind="members")
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("attribute store unavailable for recommendations: %s", exc)
            items, members, store_ok = {}, {}, False
        attributes = {
            item_id: (self._flat(items[item_id]) if item_id in items else None)
            for item_id in candidates
        }
        member = members.get(request.member_id)
        member_attributes = member.as_flat_dict() if member is not None else None
        ranker = self.registry.active  # read once: a hot reload cannot change it mid-request
        matrix = self.vectorizer.transform(features, attributes, now, member_attributes)
        scores = np.asarray(ranker.score(matrix), dtype=np.float64)
        order = np.argsort(-scores, kind="stable")
        k = min(request.k or len(candidates), len(candidates))
        ranked = [
            {
                "item_id": candidates[i],
                "score": round(float(scores[i]), 6),
                **({"unknown": True} if attributes[candidates[i]] is None else {}),
            }
            for i in order[:k]
        ]
        request_id = uuid.uuid4().hex
        response: dict[str, Any] = {
            "request_id": request_id,
            "model_version": ranker.version,
            "ranker": "heuristic" if ranker.version.startswith("heuristic") else "model",
            "items": ranked,
        }
        if not store_ok:
            response["attribute_store"] = "unavailable"
        await nearline.log_recommendation(
            request.member_id,
            {
                "request_id": request_id,
                "member_id": request.member_id,
                "ts": now,
                "features_as_of": features.get("as_of"),
                "model_version": ranker.version,
                "feature_names": self._feature_names,
                "candidates": [
                    {"item_id": item_id, "features": matrix[i]}
                    for i, item_id in enumerate(candidates)
                ],
                "ranked": [entry["item_id"] for entry in ranked],
                "context": request.context or {},
            },
        )
        return response
