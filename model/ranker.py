"""The ranker interface every scorer implements: a feature matrix in, one score per row out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Ranker"]


@runtime_checkable
class Ranker(Protocol):
    """Scores candidates; higher is better. Implementations must be safe to call from threads."""

    @property
    def version(self) -> str:
        """Identifies the model in the recommendations log (``heuristic-v1``, a model version)."""
        ...

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The columns :meth:`score` expects, in order."""
        ...

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """float32 scores, shape ``[n]``, for a float32 ``[n, len(feature_names)]`` matrix."""
        ...
