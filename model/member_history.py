"""The member's half of the vectorizer's work: one walk over their recent actions.

The walk sorts each engaged, dismissed or viewed action into its group (embeddings with
recency weights, items, categories, companies), collects the engaged locations, and
gathers what the freshness columns need. It is the only per-request Python loop of the
vectorizer; every per-candidate column is then a numpy operation on what it found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nearline.model.embeddings import sized
from nearline.model.geo import geo_point
from nearline.model.values import number

if TYPE_CHECKING:
    from nearline.model.vectorizer import VectorizerConfig

__all__ = ["ActionGroup", "Freshness", "HistoryReader", "MemberHistory"]


@dataclass
class ActionGroup:
    """Embeddings and recency weights of one kind of recent action (engaged, dismissed...)."""

    rows: list[Any] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    items: set[str] = field(default_factory=set)
    categories: set[str] = field(default_factory=set)
    companies: set[str] = field(default_factory=set)


class Freshness:
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


@dataclass(slots=True)
class MemberHistory:
    """What one walk over a member's recent actions found."""

    engaged: ActionGroup
    dismissed: ActionGroup
    viewed: ActionGroup
    #: Latitude and longitude of the most recent engaged items, else the member's own.
    geo_points: list[tuple[float, float]]
    #: The regions of those locations.
    regions: set[str]
    #: The latest action's time (``last_event_ts`` or a recent action's), if any.
    last_ts: float | None
    fresh: Freshness


class HistoryReader:
    """Walks a member's recent actions as ``config`` says (which actions count as engaged,
    dismissed or viewed; the recency half-life; the short window; the embedding size)."""

    def __init__(self, config: VectorizerConfig) -> None:
        self.config = config
        self._action_slot = {action: i for i, action in enumerate(config.actions)}
        self._engaged = frozenset(config.engaged_actions)
        self._dismissed = frozenset(config.dismiss_actions)
        self._viewed = frozenset(config.view_actions)

    def read(
        self,
        features: Mapping[str, Any],
        member_attributes: Mapping[str, Any] | None,
        now: float,
    ) -> MemberHistory:
        """The member's history in ``features`` (``recent_actions``, ``last_event_ts``) as
        of ``now``; ``member_attributes`` give the location when no engaged item has one."""
        dim = self.config.embedding_dim
        engaged, dismissed, viewed = ActionGroup(), ActionGroup(), ActionGroup()
        geo_points: list[tuple[float, float]] = []
        regions: set[str] = set()
        last_ts = number(features.get("last_event_ts"))
        half_life = self.config.half_life_s
        fresh = Freshness(len(self.config.actions))
        short_start = now - self.config.short_window_s
        slots = self._action_slot
        for action in features.get("recent_actions") or ():
            ts = number(action.get("ts"))
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
            if sized(embedding, dim):
                age = max(now - ts, 0.0) if ts is not None else 0.0
                group.rows.append(embedding)
                group.weights.append(0.5 ** (age / half_life))
                if group is engaged:
                    fresh.engaged_ts.append(-math.inf if ts is None else ts)
            if group is engaged and len(geo_points) < self.config.max_geo_points:
                point = geo_point(attributes.get("geo"))
                if point is not None:
                    geo_points.append(point[:2])
                    if point[2] is not None:
                        regions.add(point[2])
        if not geo_points and member_attributes:
            # No engaged item has a location: fall back to where the member says they are.
            point = geo_point(member_attributes.get("geo"))
            if point is not None:
                geo_points.append(point[:2])
                if point[2] is not None:
                    regions.add(point[2])
        return MemberHistory(engaged, dismissed, viewed, geo_points, regions, last_ts, fresh)
