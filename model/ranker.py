"""The ranker interface every scorer implements: a feature matrix in, one score per row out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["NamedColumns", "Ranker"]


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


class NamedColumns:
    """The part of a :class:`Ranker` every implementation shares: its version, its feature
    columns, and the check that a matrix has them."""

    def __init__(self, version: str, feature_names: Sequence[str]) -> None:
        self._version = version
        self._feature_names = tuple(feature_names)

    @property
    def version(self) -> str:
        return self._version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._feature_names

    def check_matrix(self, matrix: np.ndarray) -> None:
        """:class:`ValueError` unless ``matrix`` is ``[n, len(feature_names)]``."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self._feature_names):
            raise ValueError(
                f"expected a [n, {len(self._feature_names)}] matrix, got shape {matrix.shape}"
            )
