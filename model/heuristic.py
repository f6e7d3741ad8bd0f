"""A hand-weighted linear ranker over the vectorizer's features, used until a model is trained.

The score of a candidate is a weighted sum of its features (:data:`HEURISTIC_WEIGHTS`):

* reward similarity to what the member recently engaged with (click/apply/save), mostly
  the recency-weighted mean, partly the single closest item;
* penalize similarity to what they dismissed, strongly for the dismissed item itself and
  moderately for a dismissed category or company (the seed's "fewer dismisses" effect);
* small bonuses for an engaged category/company, the same region, and popularity;
* a small penalty per log-km of distance, and a fixed one when the distance is unknown
  (about the penalty of ~500 km, so unknown locations are neither favoured nor buried).

Features the running vectorizer does not produce are ignored, so the heuristic keeps
working when the configured windows or actions change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from nearline.model.ranker import NamedColumns

__all__ = ["HEURISTIC_VERSION", "HEURISTIC_WEIGHTS", "HeuristicRanker", "RankerKind", "ranker_kind"]

HEURISTIC_VERSION = "heuristic-v1"

#: What a response and the console call the ranker served.
RankerKind = Literal["heuristic", "model"]


def ranker_kind(version: str) -> RankerKind:
    """``"heuristic"`` for a heuristic's version (``heuristic-v1`` and any later one),
    ``"model"`` for a trained model's."""
    return "heuristic" if version.startswith("heuristic") else "model"


HEURISTIC_WEIGHTS: Mapping[str, float] = {
    "sim_engaged_wmean": 1.0,
    "sim_engaged_max": 0.5,
    "sim_dismissed_wmean": -0.3,
    "sim_dismissed_max": -0.8,
    "sim_viewed_wmean": 0.1,
    "item_engaged": -0.3,
    "item_dismissed": -2.0,
    "category_engaged": 0.2,
    "category_dismissed": -0.5,
    "company_engaged": 0.1,
    "company_dismissed": -0.5,
    "same_region": 0.1,
    "log_popularity": 0.05,
    "log_geo_km": -0.05,
    "geo_missing": -0.3,
}


class HeuristicRanker(NamedColumns):
    """A linear score ``matrix @ weights``: no model file, no torch, ~microseconds per call."""

    def __init__(
        self,
        feature_names: Sequence[str],
        weights: Mapping[str, float] = HEURISTIC_WEIGHTS,
        version: str = HEURISTIC_VERSION,
    ) -> None:
        super().__init__(version, feature_names)
        self._weights = np.array(
            [weights.get(name, 0.0) for name in self._feature_names], dtype=np.float32
        )

    def score(self, matrix: np.ndarray) -> np.ndarray:
        self.check_matrix(matrix)
        return np.asarray(matrix @ self._weights, dtype=np.float32)
