"""The vectorizer as it was before per-item feature rows (commit 0229e75), frozen for tests.

``model/vectorizer.py`` must produce the same matrix as this plain per-candidate version on
any input; ``test_vectorizer_reference.py`` checks it on random data. Do not optimize this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from nearline.foundation.settings import parse_duration
from nearline.model.geo import nearest_km
from nearline.model.vectorizer import VectorizerConfig

__all__ = ["ReferenceVectorizer"]

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

_SEQUENCES = (list, tuple, np.ndarray)
_EMPTY: dict[str, Any] = {}


def _geo_point(value: Any) -> tuple[float, float, str | None] | None:
    # Exact class checks, not isinstance(Mapping): attributes come from a JSON decoder, and
    # the ABC check is several times slower in this per-candidate path.
    if value.__class__ is not dict:
        return None
    lat, lon = value.get("lat"), value.get("lon")
    if lat.__class__ not in (int, float) or lon.__class__ not in (int, float):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 360.0):
        return None  # also rejects NaN, which compares false
    region = value.get("region")
    return float(lat), float(lon), region if region.__class__ is str else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class _Group:
    """Embeddings and recency weights of one kind of recent action (engaged, dismissed...)."""

    rows: list[Any] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    items: set[str] = field(default_factory=set)
    categories: set[str] = field(default_factory=set)
    companies: set[str] = field(default_factory=set)


class ReferenceVectorizer:
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
        names = (
            _SIMILARITY
            + _HISTORY_MATCH
            + _MEMBER_FLAGS
            + ("log_seconds_since_last_action",)
            + counts
            + _CANDIDATE
        )
        self._names: tuple[str, ...] = names
        self._index = {name: i for i, name in enumerate(names)}
        self._counts_slice = slice(self._index[counts[0]], self._index[counts[-1]] + 1)
        self._engaged = frozenset(self.config.engaged_actions)
        self._dismissed = frozenset(self.config.dismiss_actions)
        self._viewed = frozenset(self.config.view_actions)
        # An unknown member's "time since last action" is pinned to the longest window:
        # as far as the store can tell, that is how long ago they were last active.
        longest = max(parse_duration(w) for w in self.config.windows)
        self._no_history_value = math.log1p(longest)

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
        n = len(candidates)
        out = np.zeros((n, len(self._names)), dtype=np.float32)
        idx = self._index
        dim = self.config.embedding_dim

        engaged, dismissed, viewed = _Group(), _Group(), _Group()
        geo_points: list[tuple[float, float]] = []
        regions: set[str] = set()
        last_ts = _number(features.get("last_event_ts"))
        half_life = self.config.half_life_s
        for action in features.get("recent_actions") or ():
            ts = _number(action.get("ts"))
            if ts is not None and (last_ts is None or ts > last_ts):
                last_ts = ts
            kind = action.get("action")
            if kind in self._engaged:
                group = engaged
            elif kind in self._dismissed:
                group = dismissed
            elif kind in self._viewed:
                group = viewed
            else:
                continue
            item_id = action.get("item_id")
            if isinstance(item_id, str):
                group.items.add(item_id)
            attributes = action.get("attributes") or {}
            category, company = attributes.get("category"), attributes.get("company")
            if isinstance(category, str):
                group.categories.add(category)
            if isinstance(company, str):
                group.companies.add(company)
            embedding = attributes.get("embedding")
            if _sized(embedding, dim):
                age = max(now - ts, 0.0) if ts is not None else 0.0
                group.rows.append(embedding)
                group.weights.append(0.5 ** (age / half_life))
            if group is engaged and len(geo_points) < self.config.max_geo_points:
                point = _geo_point(attributes.get("geo"))
                if point is not None:
                    geo_points.append(point[:2])
                    if point[2] is not None:
                        regions.add(point[2])
        if not geo_points and member_attributes:
            # No engaged item has a location: fall back to where the member says they are.
            point = _geo_point(member_attributes.get("geo"))
            if point is not None:
                geo_points.append(point[:2])
                if point[2] is not None:
                    regions.add(point[2])

        # Member-level columns, broadcast to every row.
        if last_ts is not None:
            out[:, idx["has_history"]] = 1.0
            out[:, idx["log_seconds_since_last_action"]] = math.log1p(max(now - last_ts, 0.0))
        else:
            out[:, idx["log_seconds_since_last_action"]] = self._no_history_value
        counts_by_window = features.get("counts") or {}
        member_counts = [
            math.log1p(max(_number((counts_by_window.get(w) or {}).get(a)) or 0.0, 0.0))
            for w in self.config.windows
            for a in self.config.actions
        ]
        out[:, self._counts_slice] = np.asarray(member_counts, dtype=np.float32)

        # Candidate attributes, column by column with comprehensions: an explicit loop with
        # branches and numpy item assignment costs several times more per candidate, and
        # columns whose history set is empty are skipped outright.
        item_ids = list(candidates)
        rows = [attrs or _EMPTY for attrs in candidates.values()]
        unknown = _flags(attrs is _EMPTY for attrs in rows)
        # One pass with all lookups, transposed by zip: cheaper than a pass per attribute.
        categories, companies, geos, embeddings, popularity = (
            zip(
                *[
                    (
                        attrs.get("category"),
                        attrs.get("company"),
                        attrs.get("geo"),
                        attrs.get("embedding"),
                        attrs.get("popularity"),
                    )
                    for attrs in rows
                ],
                strict=True,
            )
            if n
            else ((), (), (), (), ())
        )
        columns = (
            ("item_engaged", item_ids, engaged.items),
            ("item_dismissed", item_ids, dismissed.items),
            ("item_viewed", item_ids, viewed.items),
            ("category_engaged", categories, engaged.categories),
            ("category_dismissed", categories, dismissed.categories),
            ("company_engaged", companies, engaged.companies),
            ("company_dismissed", companies, dismissed.companies),
        )
        for name, values, seen in columns:
            if seen:
                out[:, idx[name]] = _flags(value in seen for value in values)
        out[:, idx["category_missing"]] = _flags(c.__class__ is not str for c in categories)
        out[:, idx["company_missing"]] = _flags(c.__class__ is not str for c in companies)
        out[:, idx["candidate_unknown"]] = unknown
        if regions:
            out[:, idx["same_region"]] = _flags(
                g.__class__ is dict and g.get("region") in regions for g in geos
            )

        # Embedding similarities: one matrix product against every usable recent item,
        # then per-group reductions over its column slices.
        cand, cand_ok = _embedding_matrix(embeddings, dim)
        out[:, idx["embedding_missing"]] = ~cand_ok
        groups = (
            (engaged, "sim_engaged_wmean", "sim_engaged_max", "has_engaged_embedding"),
            (dismissed, "sim_dismissed_wmean", "sim_dismissed_max", "has_dismissed_embedding"),
            (viewed, "sim_viewed_wmean", None, None),
        )
        history_rows = [row for group, *_ in groups for row in group.rows]
        if n and history_rows:
            member, member_ok = _embedding_matrix(history_rows, dim)
            weights = np.array([w for group, *_ in groups for w in group.weights], dtype=np.float32)
            weights *= member_ok
            cosine = cand @ member.T  # missing rows are zero vectors: zero similarity
            start = 0
            for group, mean_name, max_name, flag in groups:
                end = start + len(group.rows)
                total = float(weights[start:end].sum())
                if total > 0.0:
                    block = cosine[:, start:end]
                    out[:, idx[mean_name]] = block @ weights[start:end] / total
                    if max_name is not None:
                        ok = member_ok[start:end]
                        best = (block if ok.all() else block[:, ok]).max(axis=1)
                        out[:, idx[max_name]] = np.where(cand_ok, best, 0.0)
                    if flag is not None:
                        out[:, idx[flag]] = 1.0
                start = end

        # Geo distance to the nearest recently engaged (or home) location.
        lat, lon = _coordinates(geos)
        has_geo = ~np.isnan(lat)
        if geo_points and has_geo.any():
            points = np.asarray(geo_points, dtype=np.float64)
            km = nearest_km(lat[has_geo], lon[has_geo], points[:, 0], points[:, 1])
            out[has_geo, idx["log_geo_km"]] = np.log1p(km)
            out[:, idx["geo_missing"]] = ~has_geo
        else:
            out[:, idx["geo_missing"]] = 1.0

        pop = _numbers(list(popularity))
        has_popularity = ~np.isnan(pop)
        out[has_popularity, idx["log_popularity"]] = np.log1p(np.maximum(pop[has_popularity], 0.0))
        out[:, idx["popularity_missing"]] = ~has_popularity
        return out


def _sized(value: Any, dim: int) -> bool:
    if value.__class__ is bytes:
        return len(value) == 4 * dim
    return value.__class__ in _SEQUENCES and len(value) == dim


def _flags(values: Iterable[bool]) -> np.ndarray:
    return np.fromiter(values, dtype=bool)


def _numbers(values: list[Any]) -> np.ndarray:
    """Floats with NaN for anything absent, non-numeric or non-finite."""
    try:
        # None becomes NaN here; the fast path for well-formed input.
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.array([_number(v) for v in values], dtype=np.float64)
    if array.ndim != 1:  # e.g. a list given where a number belongs
        array = np.array([_number(v) for v in values], dtype=np.float64)
    array[~np.isfinite(array)] = np.nan
    return array


def _coordinates(geos: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes (NaN where absent or out of range) of candidate geo dicts."""
    lat = _numbers([g.get("lat") if g.__class__ is dict else None for g in geos])
    lon = _numbers([g.get("lon") if g.__class__ is dict else None for g in geos])
    bad = np.isnan(lat) | np.isnan(lon) | (np.abs(lat) > 90.0) | (np.abs(lon) > 360.0)
    lat[bad] = np.nan
    lon[bad] = np.nan
    return lat, lon


def _embedding_matrix(values: Sequence[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length float32 rows (zero where unusable) and which rows were usable.

    Accepts lists/tuples (JSON), numpy arrays, or raw little-endian float32 ``bytes``; a
    batch made only of bytes is joined in one copy, by far the cheapest form to serve.
    """
    zero_row = np.zeros(dim, dtype=np.float32)
    width = 4 * dim
    rows = [
        v
        if (v.__class__ in _SEQUENCES and len(v) == dim)
        or (v.__class__ is bytes and len(v) == width)
        else zero_row
        for v in values
    ]
    if rows and all(row.__class__ is bytes for row in rows):
        matrix = np.frombuffer(b"".join(cast(list[bytes], rows)), dtype="<f4").reshape(
            len(rows), dim
        )
    else:
        rows = [np.frombuffer(r, dtype="<f4") if r.__class__ is bytes else r for r in rows]
        matrix = _float_rows(rows, dim)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    ok = np.isfinite(norms) & (norms > 0)
    if ok.all():
        return (matrix / norms[:, None]).astype(np.float32, copy=False), ok
    with np.errstate(invalid="ignore"):
        unit = np.where(ok[:, None], matrix / np.where(ok, norms, 1.0)[:, None], 0.0)
    return unit.astype(np.float32, copy=False), ok


def _float_rows(rows: list[Any], dim: int) -> np.ndarray:
    try:
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)
    except (TypeError, ValueError):
        matrix = np.zeros((len(rows), dim), dtype=np.float32)
        for i, row in enumerate(rows):
            try:
                matrix[i] = np.asarray(row, dtype=np.float32)
            except (TypeError, ValueError):
                continue  # a malformed embedding counts as missing
        return matrix
