"""The one feature vectorizer: member features x candidate attributes -> float32 matrix.

Serving and training both call :meth:`Vectorizer.transform_rows` (training through
:meth:`Vectorizer.transform`); the recommendations log keeps its rows, and training learns
from exactly those rows, so the two can never drift apart. The per-candidate half of the
work is :class:`~nearline.model.candidate_rows.CandidateRows`, the member's half one walk
over their recent actions (:mod:`nearline.model.member_history`); this module names the
columns and fills them from the two halves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nearline.foundation.settings import parse_duration
from nearline.model.candidate_rows import CandidateRows
from nearline.model.embeddings import EmbeddingBytes, embedding_matrix
from nearline.model.geo import nearest_unit_km, unit_sphere
from nearline.model.member_history import Freshness, HistoryReader
from nearline.model.values import number
from nearline.model.vocabulary import Vocabulary, gather, member_of

__all__ = ["Vectorizer", "VectorizerConfig"]

# Candidate-level features that do not depend on the configured windows/actions.
_SIMILARITY = (
    "sim_engaged_wmean",
    "sim_engaged_max",
    "sim_dismissed_wmean",
    "sim_dismissed_max",
    "sim_viewed_wmean",
)
_HISTORY_MATCH = (
    "item_engaged",
    "item_dismissed",
    "item_viewed",
    "category_engaged",
    "category_dismissed",
    "company_engaged",
    "company_dismissed",
)
_MEMBER_FLAGS = ("has_history", "has_engaged_embedding", "has_dismissed_embedding")
_CANDIDATE = (
    "log_geo_km",
    "geo_missing",
    "same_region",
    "log_popularity",
    "popularity_missing",
    "embedding_missing",
    "category_missing",
    "company_missing",
    "candidate_unknown",
)

# Freshness: what the member did in the last minutes, and how each candidate relates to it.
# Computed from the same recent actions at request time, so the logged row is the
# point-in-time view training learns from.
_LAST_ENGAGED = 3
_FRESH_MEMBER = ("log_seconds_since_last_engaged",)
_FRESH_CANDIDATE = (
    "log_seconds_since_category_action",
    "log_seconds_since_company_action",
    *(f"sim_last_engaged_{i + 1}" for i in range(_LAST_ENGAGED)),
    "category_dismissed_short",
    "category_engaged_share",
    "category_dismissed_share",
    "company_engaged_share",
)

#: Which of the actions of interest count as engaged, dismissed and viewed when only the
#: actions are given (:meth:`VectorizerConfig.for_actions`).
_ENGAGED, _DISMISSED, _VIEWED = ("click", "apply", "save"), ("dismiss",), ("view",)


@dataclass(frozen=True)
class VectorizerConfig:
    """What the vectorizer computes; saved with every model so a mismatch can be refused."""

    windows: tuple[str, ...] = ("1h", "24h", "96h")
    actions: tuple[str, ...] = ("view", "click", "apply", "save", "dismiss")
    engaged_actions: tuple[str, ...] = _ENGAGED
    dismiss_actions: tuple[str, ...] = _DISMISSED
    view_actions: tuple[str, ...] = _VIEWED
    half_life_s: float = 6 * 3600.0
    # The "session": dismisses, per-action counts and dismissed categories within it.
    short_window_s: float = 1800.0
    embedding_dim: int = 64
    # Distances are measured to the most recent engaged locations only: older ones add cost
    # for little signal, and the cap keeps the [n, k] distance matrix small.
    max_geo_points: int = 16

    def __post_init__(self) -> None:
        if self.half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        if self.short_window_s <= 0:
            raise ValueError("short_window_s must be positive")
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be at least 1")
        if not self.windows:
            raise ValueError("at least one window is required")
        for window in self.windows:
            parse_duration(window)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in body.items()}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> VectorizerConfig:
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in body.items() if k in known
        }
        return cls(**values)

    @classmethod
    def for_actions(
        cls,
        windows: Sequence[str],
        actions: Sequence[str],
        *,
        half_life_s: float,
        short_window_s: float,
        embedding_dim: int,
    ) -> VectorizerConfig:
        """The config of the deployment's windows and actions of interest: of the actions,
        clicks, applies and saves are engaged, dismisses dismissed and views viewed."""
        actions = tuple(actions)
        return cls(
            windows=tuple(windows),
            actions=actions,
            engaged_actions=tuple(a for a in _ENGAGED if a in actions),
            dismiss_actions=tuple(a for a in _DISMISSED if a in actions),
            view_actions=tuple(a for a in _VIEWED if a in actions),
            half_life_s=half_life_s,
            short_window_s=short_window_s,
            embedding_dim=embedding_dim,
        )


class Vectorizer:
    """Turns (member features, candidate attributes, request time) into model input rows.

    Rows follow the candidates mapping's iteration order; columns follow
    :attr:`feature_names`, which depends only on the config and never on the data.
    """

    def __init__(self, config: VectorizerConfig | None = None) -> None:
        self.config = config or VectorizerConfig()
        counts = tuple(
            f"count_{window}_{action}"
            for window in self.config.windows
            for action in self.config.actions
        )
        short_counts = tuple(f"count_short_{action}" for action in self.config.actions)
        names = (
            _SIMILARITY
            + _HISTORY_MATCH
            + _MEMBER_FLAGS
            + ("log_seconds_since_last_action",)
            + counts
            + _CANDIDATE
            + _FRESH_MEMBER
            + short_counts
            + _FRESH_CANDIDATE
        )
        self._names: tuple[str, ...] = names
        self._index = {name: i for i, name in enumerate(names)}
        self._counts_slice = slice(self._index[counts[0]], self._index[counts[-1]] + 1)
        self._short_slice = slice(self._index[short_counts[0]], self._index[short_counts[-1]] + 1)
        self._history = HistoryReader(self.config)
        # An unknown member's "time since last action" is pinned to the longest window:
        # as far as the store can tell, that is how long ago they were last active.
        longest = max(parse_duration(w) for w in self.config.windows)
        self._no_history_value = math.log1p(longest)
        self._embedding_bytes = EmbeddingBytes(self.config.embedding_dim)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def dim(self) -> int:
        return len(self._names)

    def index(self, name: str) -> int:
        """Column of a feature; raises ``KeyError`` naming the feature if it does not exist."""
        return self._index[name]

    # -- the transform -------------------------------------------------------------------

    def transform(
        self,
        features: Mapping[str, Any],
        candidates: Mapping[str, Mapping[str, Any] | None],
        now: float,
        member_attributes: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """A float32 ``[len(candidates), len(feature_names)]`` matrix, one row per candidate."""
        rows = self.candidate_rows(list(candidates), list(candidates.values()), Vocabulary())
        return self.transform_rows(features, rows, now, member_attributes)

    def candidate_rows(
        self,
        item_ids: Sequence[str],
        attributes: Sequence[Mapping[str, Any] | None],
        vocabulary: Vocabulary,
    ) -> CandidateRows:
        """The per-candidate half of the work, on attribute dicts: what :class:`ItemRows`
        does once per item, and :meth:`transform` once per call."""
        return CandidateRows.of(item_ids, attributes, vocabulary, self.config.embedding_dim)

    def transform_rows(
        self,
        features: Mapping[str, Any],
        rows: CandidateRows,
        now: float,
        member_attributes: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """:meth:`transform` on candidates already turned into :class:`CandidateRows`.

        Only the member's recent actions are walked in Python; every per-candidate column
        is a numpy operation.
        """
        n = len(rows)
        # Built transposed, a feature per row: writing a contiguous row is several times
        # cheaper than writing a strided column of the [n, features] result.
        out = np.zeros((len(self._names), n), dtype=np.float32)
        idx = self._index
        dim = self.config.embedding_dim
        history = self._history.read(features, member_attributes, now)
        engaged, dismissed, viewed = history.engaged, history.dismissed, history.viewed
        fresh, last_ts = history.fresh, history.last_ts

        # Member-level columns, broadcast to every row.
        if last_ts is not None:
            out[idx["has_history"]] = 1.0
            out[idx["log_seconds_since_last_action"]] = math.log1p(max(now - last_ts, 0.0))
        else:
            out[idx["log_seconds_since_last_action"]] = self._no_history_value
        counts_by_window = features.get("counts") or {}
        member_counts = [
            math.log1p(max(number((counts_by_window.get(w) or {}).get(a)) or 0.0, 0.0))
            for w in self.config.windows
            for a in self.config.actions
        ]
        out[self._counts_slice] = np.asarray(member_counts, dtype=np.float32)[:, None]

        # Candidate columns; those whose history set is empty stay zero.
        if engaged.items or dismissed.items or viewed.items:
            position = dict(zip(rows.item_ids, range(n), strict=True))
            for name, seen in (
                ("item_engaged", engaged.items),
                ("item_dismissed", dismissed.items),
                ("item_viewed", viewed.items),
            ):
                out[idx[name], [position[i] for i in seen if i in position]] = 1.0
        vocabulary_size = len(rows.vocabulary)
        for name, codes, seen in (
            ("category_engaged", rows.category, engaged.categories),
            ("category_dismissed", rows.category, dismissed.categories),
            ("company_engaged", rows.company, engaged.companies),
            ("company_dismissed", rows.company, dismissed.companies),
            ("same_region", rows.region, history.regions),
        ):
            if seen:
                out[idx[name]] = member_of(codes, rows.vocabulary.known(seen), vocabulary_size)
        out[idx["category_missing"]] = rows.category < 0
        out[idx["company_missing"]] = rows.company < 0
        out[idx["candidate_unknown"]] = rows.unknown

        # Embedding similarities: one matrix product against every usable recent item,
        # then per-group reductions over its column slices.
        cand, cand_ok = rows.unit, rows.embedding_ok
        out[idx["embedding_missing"]] = ~cand_ok
        groups = (
            (engaged, "sim_engaged_wmean", "sim_engaged_max", "has_engaged_embedding"),
            (dismissed, "sim_dismissed_wmean", "sim_dismissed_max", "has_dismissed_embedding"),
            (viewed, "sim_viewed_wmean", None, None),
        )
        history_rows = [row for group, *_ in groups for row in group.rows]
        if n and history_rows:
            member, member_ok = embedding_matrix(self._embedding_bytes.rows(history_rows), dim)
            weights = np.array([w for group, *_ in groups for w in group.weights], dtype=np.float32)
            weights *= member_ok
            # [history, n]: a recent item per row, so the reductions run down columns.
            cosine = member @ cand.T  # missing rows are zero vectors: zero similarity
            # The last few engaged items one by one: a short sequence, newest first.
            usable = [i for i in range(len(engaged.rows)) if member_ok[i]]
            usable.sort(key=lambda i: fresh.engaged_ts[i], reverse=True)  # stable: ties in order
            for j, i in enumerate(usable[:_LAST_ENGAGED]):
                out[idx[f"sim_last_engaged_{j + 1}"]] = cosine[i]
            start = 0
            for group, mean_name, max_name, flag in groups:
                end = start + len(group.rows)
                total = float(weights[start:end].sum())
                if total > 0.0:
                    block = cosine[start:end]
                    out[idx[mean_name]] = weights[start:end] @ block / total
                    if max_name is not None:
                        ok = member_ok[start:end]
                        best = (block if ok.all() else block[ok]).max(axis=0)
                        out[idx[max_name]] = np.where(cand_ok, best, 0.0)
                    if flag is not None:
                        out[idx[flag]] = 1.0
                start = end

        # Geo distance to the nearest recently engaged (or home) location.
        has_geo = rows.has_geo
        if history.geo_points and has_geo.any():
            points = np.asarray(history.geo_points, dtype=np.float64)
            points = unit_sphere(points[:, 0], points[:, 1])
            if has_geo.all():  # the usual case: no masked copies
                out[idx["log_geo_km"]] = np.log1p(nearest_unit_km(rows.xyz, points))
            else:
                km = nearest_unit_km(rows.xyz[has_geo], points)
                out[idx["log_geo_km"], has_geo] = np.log1p(km)
                out[idx["geo_missing"]] = ~has_geo
        else:
            out[idx["geo_missing"]] = 1.0

        log_popularity = rows.log_popularity
        has_popularity = ~np.isnan(log_popularity)
        out[idx["log_popularity"], has_popularity] = log_popularity[has_popularity]
        out[idx["popularity_missing"]] = ~has_popularity
        self._freshness_columns(out, fresh, rows, now)
        return np.ascontiguousarray(out.T)

    def _freshness_columns(
        self, out: np.ndarray, fresh: Freshness, rows: CandidateRows, now: float
    ) -> None:
        """The freshness columns of ``out`` (transposed, a feature per row) from ``fresh``."""
        idx = self._index
        never = self._no_history_value
        out[self._short_slice] = np.log1p(np.asarray(fresh.short_counts, dtype=np.float32))[:, None]
        out[idx["log_seconds_since_last_engaged"]] = (
            math.log1p(max(now - fresh.last_engaged, 0.0))
            if fresh.last_engaged > -math.inf
            else never
        )
        vocabulary = rows.vocabulary
        size = len(vocabulary)
        for name, codes, latest in (
            ("log_seconds_since_category_action", rows.category, fresh.category_last),
            ("log_seconds_since_company_action", rows.company, fresh.company_last),
        ):
            keys, times = vocabulary.known_items(latest)
            ages = np.log1p(np.maximum(now - times, 0.0))
            out[idx[name]] = gather(codes, keys, ages, never, size)
        if fresh.short_dismissed_categories:
            out[idx["category_dismissed_short"]] = member_of(
                rows.category, vocabulary.known(fresh.short_dismissed_categories), size
            )
        for name, codes, counts, total in (
            ("category_engaged_share", rows.category, fresh.category_engaged, fresh.engaged),
            ("category_dismissed_share", rows.category, fresh.category_dismissed, fresh.dismissed),
            ("company_engaged_share", rows.company, fresh.company_engaged, fresh.engaged),
        ):
            if counts:
                keys, values = vocabulary.known_items(counts)
                out[idx[name]] = gather(codes, keys, values / total, 0.0, size)
