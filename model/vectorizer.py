"""The one feature vectorizer: member features x candidate attributes -> float32 matrix.

Serving and training both call :meth:`Vectorizer.transform_rows` (training through
:meth:`Vectorizer.transform`); the recommendations log keeps its rows, and training learns
from exactly those rows, so the two can never drift apart. The per-candidate half of the
work (unit embedding, geo position, codes of category, company and region, popularity) is
:class:`CandidateRows`: serving computes it once per item (:mod:`nearline.model.item_rows`) and
gathers it per request, so a request does numpy work on arrays, not Python work per
candidate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from nearline.foundation.memo import IdentityMemo
from nearline.foundation.settings import parse_duration

if TYPE_CHECKING:
    from nearline.foundation.settings import Settings

__all__ = [
    "CandidateRows",
    "Vectorizer",
    "VectorizerConfig",
    "Vocabulary",
    "haversine_km",
    "nearest_km",
]

_EARTH_RADIUS_KM = 6371.0088

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

_SEQUENCES = (list, tuple, np.ndarray)
_FLOAT32 = np.dtype("<f4")
#: A code lookup goes through a table of the whole vocabulary while the vocabulary has at
#: most this many codes per code looked up (plus the minimum): cheaper than sorting then.
_DENSE_PER_CODE, _DENSE_MIN = 8, 1024
_EMPTY: dict[str, Any] = {}


@dataclass(frozen=True)
class VectorizerConfig:
    """What the vectorizer computes; saved with every model so a mismatch can be refused."""

    windows: tuple[str, ...] = ("1h", "24h", "96h")
    actions: tuple[str, ...] = ("view", "click", "apply", "save", "dismiss")
    engaged_actions: tuple[str, ...] = ("click", "apply", "save")
    dismiss_actions: tuple[str, ...] = ("dismiss",)
    view_actions: tuple[str, ...] = ("view",)
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
    def from_settings(
        cls, settings: Settings, half_life_s: float | None = None
    ) -> VectorizerConfig:
        """From settings; the recency half-life is NEARLINE_MODEL_HALF_LIFE unless given."""
        actions = tuple(settings.actions_of_interest)
        return cls(
            windows=tuple(settings.window_names),
            actions=actions,
            engaged_actions=tuple(a for a in ("click", "apply", "save") if a in actions),
            dismiss_actions=tuple(a for a in ("dismiss",) if a in actions),
            view_actions=tuple(a for a in ("view",) if a in actions),
            half_life_s=settings.model_half_life if half_life_s is None else half_life_s,
            short_window_s=settings.model_short_window,
            embedding_dim=settings.embedding_dim,
        )


def haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Great-circle distance in km between broadcastable arrays of degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat = p2 - p1
    dlon = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _unit_sphere(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    phi, lam = np.radians(lat), np.radians(lon)
    cos_phi = np.cos(phi)
    return np.stack([cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)], axis=-1)


def nearest_km(
    lat: np.ndarray, lon: np.ndarray, point_lat: np.ndarray, point_lon: np.ndarray
) -> np.ndarray:
    """Great-circle km from each (lat, lon) to the nearest of the points.

    Works on 3-D unit vectors: the nearest point is the largest dot product, so the
    trigonometry runs once per candidate instead of once per candidate x point.
    """
    return _nearest_unit_km(_unit_sphere(lat, lon), _unit_sphere(point_lat, point_lon))


def _nearest_unit_km(positions: np.ndarray, points: np.ndarray) -> np.ndarray:
    """:func:`nearest_km` on unit-sphere positions ``[n, 3]`` and points ``[k, 3]``."""
    dots = (points @ positions.T).max(axis=0)
    chord = np.sqrt(np.clip(2.0 - 2.0 * dots, 0.0, 4.0))
    return 2 * _EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))


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


class Vocabulary:
    """Integer codes for string attribute values (category, company, region).

    With codes, "is this candidate's category one the member engaged with" is an integer
    comparison over all candidates at once. Anything but a ``str`` has code -1 (absent).
    """

    __slots__ = ("_codes",)

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._codes)

    def encode(self, values: Iterable[Any]) -> np.ndarray:
        """Codes of ``values``, new strings added."""
        codes = self._codes
        out = []
        for value in values:
            if value.__class__ is str:
                code = codes.get(value)
                if code is None:
                    code = codes[value] = len(codes)
                out.append(code)
            else:
                out.append(-1)
        return np.array(out, dtype=np.int32)

    def known(self, values: Iterable[str]) -> np.ndarray:
        """Codes of those ``values`` that have one; a string never coded matches nothing."""
        codes = self._codes
        return np.array([codes[v] for v in values if v in codes], dtype=np.int32)

    def known_items(self, mapping: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Codes and values of those keys of ``mapping`` that have a code."""
        codes = self._codes
        pairs = [(codes[k], v) for k, v in mapping.items() if k in codes]
        return (
            np.array([c for c, _ in pairs], dtype=np.int32),
            np.array([v for _, v in pairs], dtype=np.float64),
        )


#: The array fields of :class:`CandidateRows`, in declaration order.
_ROW_ARRAYS = (
    "unknown",
    "unit",
    "embedding_ok",
    "xyz",
    "has_geo",
    "region",
    "category",
    "company",
    "log_popularity",
)


@dataclass(frozen=True, slots=True)
class CandidateRows:
    """What the vectorizer needs of each candidate, as parallel arrays (one entry each).

    Made from attribute dicts by :meth:`Vectorizer.candidate_rows`; the codes are those
    of ``vocabulary``.
    """

    item_ids: Sequence[str]
    vocabulary: Vocabulary
    unknown: np.ndarray  # bool: no attributes at all
    unit: np.ndarray  # float32 [n, dim]: unit-length embedding, zeros where unusable
    embedding_ok: np.ndarray  # bool: the embedding was usable
    xyz: np.ndarray  # float64 [n, 3]: position on the unit sphere, zeros where no geo
    has_geo: np.ndarray  # bool: valid coordinates
    region: np.ndarray  # int32 code of geo.region, -1 if none
    category: np.ndarray  # int32 code, -1 if not a string
    company: np.ndarray  # int32 code, -1 if not a string
    log_popularity: np.ndarray  # float32 log1p(max(popularity, 0)), NaN if absent

    def __len__(self) -> int:
        return len(self.unknown)

    def take(self, index: np.ndarray, item_ids: Sequence[str]) -> CandidateRows:
        """The rows at ``index`` (copies), named ``item_ids``."""
        # ndarray.take: several times faster than fancy indexing for the 2-D arrays.
        arrays = {name: getattr(self, name).take(index, axis=0) for name in _ROW_ARRAYS}
        return CandidateRows(item_ids=item_ids, vocabulary=self.vocabulary, **arrays)

    def put(self, index: np.ndarray | Sequence[int], rows: CandidateRows) -> None:
        """Overwrite the rows at ``index`` (distinct positions) with ``rows``, in place."""
        if rows.vocabulary is not self.vocabulary:
            raise ValueError("rows coded with another vocabulary")
        for name in _ROW_ARRAYS:
            getattr(self, name)[index] = getattr(rows, name)

    def resized(self, size: int) -> CandidateRows:
        """A copy with ``size`` rows: the first ones kept, new ones as an unknown item's."""
        keep = min(size, len(self))
        arrays = {}
        for name in _ROW_ARRAYS:
            old = getattr(self, name)
            new = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
            new[:keep] = old[:keep]
            arrays[name] = new
        arrays["unknown"][keep:] = True
        arrays["region"][keep:] = -1
        arrays["category"][keep:] = -1
        arrays["company"][keep:] = -1
        arrays["log_popularity"][keep:] = np.nan
        return CandidateRows(item_ids=(), vocabulary=self.vocabulary, **arrays)


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
        self._action_slot = {action: i for i, action in enumerate(self.config.actions)}
        self._engaged = frozenset(self.config.engaged_actions)
        self._dismissed = frozenset(self.config.dismiss_actions)
        self._viewed = frozenset(self.config.view_actions)
        # An unknown member's "time since last action" is pinned to the longest window:
        # as far as the store can tell, that is how long ago they were last active.
        longest = max(parse_duration(w) for w in self.config.windows)
        self._no_history_value = math.log1p(longest)
        # The float32 bytes of each recent action's embedding list. Joined at read, that
        # list is the attribute record's own, shared by every request until the record
        # changes; converting its 64 Python floats cost more than the rest of the member's
        # half, and rows all in bytes are joined in one copy (see _embedding_matrix).
        self._float32_rows = IdentityMemo(self._float32_row)

    def _history_bytes(self, rows: list[Any]) -> list[Any]:
        """``rows`` with every list or tuple as its memoized float32 bytes."""
        if all(row.__class__ is list for row in rows):  # joined at read: the usual case
            return self._float32_rows.many(rows)
        memo = self._float32_rows
        return [memo(row) if row.__class__ in (list, tuple) else row for row in rows]

    def _float32_row(self, value: Any) -> bytes:
        """One embedding list as float32 bytes: the values :func:`_float_rows` makes of it
        in a batch, or zeros (so counted as missing) if it does not convert."""
        dim = self.config.embedding_dim
        try:
            return np.asarray(value, dtype=_FLOAT32).reshape(dim).tobytes()
        except (TypeError, ValueError):
            return bytes(4 * dim)

    @classmethod
    def from_settings(cls, settings: Settings, half_life_s: float | None = None) -> Vectorizer:
        return cls(VectorizerConfig.from_settings(settings, half_life_s=half_life_s))

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
        does once per item, and :meth:`transform` once per call.

        A candidate without attributes (``None`` or ``{}``) is unknown. Column by column
        with comprehensions: an explicit loop with branches costs several times more.
        """
        n = len(item_ids)
        rows = [attrs or _EMPTY for attrs in attributes]
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
        unit, embedding_ok = _embedding_matrix(embeddings, self.config.embedding_dim)
        lat, lon = _coordinates(geos)
        has_geo = ~np.isnan(lat)
        xyz = np.zeros((n, 3), dtype=np.float64)
        xyz[has_geo] = _unit_sphere(lat[has_geo], lon[has_geo])
        pop = _numbers(list(popularity))
        has_popularity = ~np.isnan(pop)
        log_popularity = np.full(n, np.nan, dtype=np.float32)
        log_popularity[has_popularity] = np.log1p(np.maximum(pop[has_popularity], 0.0))
        return CandidateRows(
            item_ids=item_ids,
            vocabulary=vocabulary,
            unknown=_flags(attrs is _EMPTY for attrs in rows),
            unit=unit,
            embedding_ok=embedding_ok,
            xyz=xyz,
            has_geo=has_geo,
            region=vocabulary.encode(
                g.get("region") if g.__class__ is dict else None for g in geos
            ),
            category=vocabulary.encode(categories),
            company=vocabulary.encode(companies),
            log_popularity=log_popularity,
        )

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

        engaged, dismissed, viewed = _Group(), _Group(), _Group()
        geo_points: list[tuple[float, float]] = []
        regions: set[str] = set()
        last_ts = _number(features.get("last_event_ts"))
        half_life = self.config.half_life_s
        fresh = _Freshness(len(self.config.actions))
        short_start = now - self.config.short_window_s
        slots = self._action_slot
        for action in features.get("recent_actions") or ():
            ts = _number(action.get("ts"))
            if ts is not None and (last_ts is None or ts > last_ts):
                last_ts = ts
            kind = action.get("action")
            short = ts is not None and ts >= short_start
            if short and kind in slots:
                fresh.short_counts[slots[kind]] += 1
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
            fresh.saw(group is engaged, group is dismissed, short, ts, category, company)
            embedding = attributes.get("embedding")
            if _sized(embedding, dim):
                age = max(now - ts, 0.0) if ts is not None else 0.0
                group.rows.append(embedding)
                group.weights.append(0.5 ** (age / half_life))
                if group is engaged:
                    fresh.engaged_ts.append(-math.inf if ts is None else ts)
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
            out[idx["has_history"]] = 1.0
            out[idx["log_seconds_since_last_action"]] = math.log1p(max(now - last_ts, 0.0))
        else:
            out[idx["log_seconds_since_last_action"]] = self._no_history_value
        counts_by_window = features.get("counts") or {}
        member_counts = [
            math.log1p(max(_number((counts_by_window.get(w) or {}).get(a)) or 0.0, 0.0))
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
            ("same_region", rows.region, regions),
        ):
            if seen:
                out[idx[name]] = _member_of(codes, rows.vocabulary.known(seen), vocabulary_size)
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
            member, member_ok = _embedding_matrix(self._history_bytes(history_rows), dim)
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
        if geo_points and has_geo.any():
            points = np.asarray(geo_points, dtype=np.float64)
            points = _unit_sphere(points[:, 0], points[:, 1])
            if has_geo.all():  # the usual case: no masked copies
                out[idx["log_geo_km"]] = np.log1p(_nearest_unit_km(rows.xyz, points))
            else:
                km = _nearest_unit_km(rows.xyz[has_geo], points)
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
        self, out: np.ndarray, fresh: _Freshness, rows: CandidateRows, now: float
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
            out[idx[name]] = _gather(codes, keys, ages, never, size)
        if fresh.short_dismissed_categories:
            out[idx["category_dismissed_short"]] = _member_of(
                rows.category, vocabulary.known(fresh.short_dismissed_categories), size
            )
        for name, codes, counts, total in (
            ("category_engaged_share", rows.category, fresh.category_engaged, fresh.engaged),
            ("category_dismissed_share", rows.category, fresh.category_dismissed, fresh.dismissed),
            ("company_engaged_share", rows.company, fresh.company_engaged, fresh.engaged),
        ):
            if counts:
                keys, values = vocabulary.known_items(counts)
                out[idx[name]] = _gather(codes, keys, values / total, 0.0, size)


class _Freshness:
    """What the walk over recent actions collects for the freshness columns."""

    __slots__ = (
        "category_dismissed",
        "category_engaged",
        "category_last",
        "company_engaged",
        "company_last",
        "dismissed",
        "engaged",
        "engaged_ts",
        "last_engaged",
        "short_counts",
        "short_dismissed_categories",
    )

    def __init__(self, actions: int) -> None:
        self.short_counts = [0] * actions  # per configured action, within the short window
        self.last_engaged = -math.inf
        self.engaged_ts: list[float] = []  # per engaged embedding row, for the sequence
        self.category_last: dict[str, float] = {}
        self.company_last: dict[str, float] = {}
        self.category_engaged: dict[str, float] = {}
        self.company_engaged: dict[str, float] = {}
        self.category_dismissed: dict[str, float] = {}
        self.short_dismissed_categories: set[str] = set()
        self.engaged = 0
        self.dismissed = 0

    def saw(
        self,
        engaged: bool,
        dismissed: bool,
        short: bool,
        ts: float | None,
        category: Any,
        company: Any,
    ) -> None:
        """One engaged, dismissed or viewed action (``category``/``company`` as stored)."""
        has_category, has_company = category.__class__ is str, company.__class__ is str
        if ts is not None:
            if has_category and ts > self.category_last.get(category, -math.inf):
                self.category_last[category] = ts
            if has_company and ts > self.company_last.get(company, -math.inf):
                self.company_last[company] = ts
        if engaged:
            self.engaged += 1
            if ts is not None and ts > self.last_engaged:
                self.last_engaged = ts
            if has_category:
                self.category_engaged[category] = self.category_engaged.get(category, 0) + 1
            if has_company:
                self.company_engaged[company] = self.company_engaged.get(company, 0) + 1
        elif dismissed:
            self.dismissed += 1
            if has_category:
                self.category_dismissed[category] = self.category_dismissed.get(category, 0) + 1
                if short:
                    self.short_dismissed_categories.add(category)


def _dense(size: int, codes: np.ndarray) -> bool:
    """Whether a table indexed by every code of a vocabulary of ``size`` is the cheaper way
    to look ``codes`` up: one gather, where a binary search costs a sort and a search."""
    return size <= _DENSE_PER_CODE * len(codes) + _DENSE_MIN


def _gather(
    codes: np.ndarray, keys: np.ndarray, values: np.ndarray, default: float, size: int
) -> np.ndarray:
    """``values`` of the ``keys`` equal to each code; ``default`` where none is (or -1).

    ``size`` is the vocabulary's: every code and key is below it.
    """
    if not len(keys):
        return np.full(len(codes), default, dtype=np.float64)
    if _dense(size, codes):
        # The last entry stays ``default``: code -1 (no value) reads it.
        table = np.full(size + 1, default, dtype=np.float64)
        table[keys] = values
        return table[codes]  # type: ignore[no-any-return]
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    at = np.minimum(np.searchsorted(keys, codes), len(keys) - 1)
    return np.where(keys[at] == codes, values[at], default)


def _sized(value: Any, dim: int) -> bool:
    if value.__class__ is bytes:
        return len(value) == 4 * dim
    return value.__class__ in _SEQUENCES and len(value) == dim


def _flags(values: Iterable[bool]) -> np.ndarray:
    return np.fromiter(values, dtype=bool)


def _member_of(codes: np.ndarray, wanted: np.ndarray, size: int) -> np.ndarray:
    """Which ``codes`` are among ``wanted`` (codes of a vocabulary of ``size``): a compare
    per code for very few, else a table of every code or a binary search in the sorted
    wanted codes (all beat np.isin at these sizes)."""
    if len(wanted) <= 3:
        found = np.zeros(len(codes), dtype=bool)
        for code in wanted.tolist():
            found |= codes == code
        return found
    if _dense(size, codes):
        table = np.zeros(size + 1, dtype=bool)  # the last entry, code -1's, stays False
        table[wanted] = True
        return table[codes]  # type: ignore[no-any-return]
    wanted = np.sort(wanted)
    at = np.minimum(np.searchsorted(wanted, codes), len(wanted) - 1)
    return wanted[at] == codes  # type: ignore[no-any-return]


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
