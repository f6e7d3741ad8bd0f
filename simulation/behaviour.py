"""The behaviour model: how a member reacts to the jobs shown, given their hidden truth.

For a job ``i`` shown to a member with latent interest ``u`` living in city ``c``, the
member's true **affinity** is

    a = interest_weight * cos(u, embedding_i) + geo_weight * [city_i == c] - offset
        + popularity_weight * (log1p(popularity_i) - 1.5)
        - distance_weight * min(km(city_i's job, c) / 1000, 3)
        - dislike_weight * [topic_i is the one the member dislikes]

(the last three are 0 in the simulator; :mod:`nearline.simulation.examples` weighs them; the
popularity term is left out in a world without popularity).

At rank ``r`` (0 = top) the member **examines** the impression with probability
``examine_decay ** r`` (position bias). An examined impression is a ``view`` event; then
exactly one of these happens (one uniform draw):

* ``dismiss`` with probability ``dismiss_max * sigmoid(-sharpness * a)``;
* ``click``   with probability ``click_max * sigmoid(sharpness * a)``;
* nothing more, otherwise.

After a click the member ``apply``s with probability ``apply_given_click``, otherwise
``save``s with probability ``save_given_click``. So a good match (a > 0) is mostly clicked,
a poor one (a < 0) mostly dismissed. Impressions not examined produce no event.

An impression is every job of the top k shown; the report's rates use that denominator.
All draws come from a generator seeded by (world seed, member, session), so a session's
reactions depend only on the seed and on what was shown, never on timing.

:meth:`BehaviourModel.history` is the same reaction to jobs the member came across before
(every one examined, by the member as they were when they saw it), for a member's past in
:mod:`nearline.simulation.examples`; there a candidate's
label is whether the member would engage: Bernoulli(``sigmoid(sharpness * a)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nearline.model.geo import haversine_km
from nearline.simulation.world import MemberState, World

__all__ = ["ENGAGED", "BehaviourModel", "Reaction", "SessionOutcome"]

#: Actions that make a session "engaged" (the seed's engaged-session metric).
ENGAGED = frozenset({"click", "apply", "save"})


@dataclass(frozen=True)
class Reaction:
    """One event the member produced: which job, which action, at which rank."""

    item: int
    action: str
    rank: int


@dataclass(frozen=True)
class SessionOutcome:
    """What one session showed and what the member did about it."""

    impressions: int
    reactions: tuple[Reaction, ...]

    def count(self, action: str) -> int:
        return sum(1 for r in self.reactions if r.action == action)

    @property
    def engaged(self) -> bool:
        return any(r.action in ENGAGED for r in self.reactions)


@dataclass(frozen=True)
class BehaviourModel:
    """The parameters of the reaction model above; all of them are command-line options."""

    interest_weight: float = 4.0
    geo_weight: float = 1.5
    offset: float = 3.0
    sharpness: float = 1.5
    examine_decay: float = 0.9
    dismiss_max: float = 0.4
    click_max: float = 0.4
    apply_given_click: float = 0.3
    save_given_click: float = 0.2
    popularity_weight: float = 0.0
    distance_weight: float = 0.0
    dislike_weight: float = 0.0

    def __post_init__(self) -> None:
        probabilities = {
            "examine_decay": self.examine_decay,
            "dismiss_max": self.dismiss_max,
            "click_max": self.click_max,
            "apply_given_click": self.apply_given_click,
            "save_given_click": self.save_given_click,
        }
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if self.dismiss_max + self.click_max > 1.0:
            raise ValueError("dismiss_max + click_max must not exceed 1")
        if self.apply_given_click + self.save_given_click > 1.0:
            raise ValueError("apply_given_click + save_given_click must not exceed 1")
        if self.sharpness <= 0:
            raise ValueError("sharpness must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def affinity(self, world: World, state: MemberState, items: np.ndarray) -> np.ndarray:
        """The member's true affinity ``a`` for each of ``items`` (see the module docstring)."""
        cosine = world.item_embedding[items] @ state.interest
        same_city = world.item_city[items] == state.city
        a = np.asarray(self.interest_weight * cosine + self.geo_weight * same_city - self.offset)
        # Terms with weight 0 are left out, not added as zeros: the simulator's affinities
        # stay what they were. A world without popularity has no popularity term.
        if self.popularity_weight and world.item_popularity is not None:
            a = a + self.popularity_weight * (np.log1p(world.item_popularity[items]) - 1.5)
        if self.distance_weight:
            lat, lon = world.city_latlon[state.city]
            km = haversine_km(world.item_latlon[items, 0], world.item_latlon[items, 1], lat, lon)
            a = a - self.distance_weight * np.minimum(km / 1000.0, 3.0)
        if self.dislike_weight:
            a = a - self.dislike_weight * (world.item_topic[items] == state.dislike)
        return a

    def engage_probability(self, affinity: np.ndarray) -> np.ndarray:
        """``sigmoid(sharpness * a)``: how much the member likes each job, in [0, 1]."""
        return np.asarray(1.0 / (1.0 + np.exp(-self.sharpness * affinity)))

    def probabilities(self, affinity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(dismiss | examined), P(click | examined)) for each affinity."""
        p_like = self.engage_probability(affinity)
        return self.dismiss_max * (1.0 - p_like), self.click_max * p_like

    def _reactions(
        self, item: int, rank: int, draws: np.ndarray, p_dismiss: float, p_click: float
    ) -> list[Reaction]:
        """The events of one examined impression, from its ``(outcome, follow)`` draws."""
        outcome, follow = draws
        out = [Reaction(item, "view", rank)]
        if outcome < p_dismiss:
            out.append(Reaction(item, "dismiss", rank))
        elif outcome < p_dismiss + p_click:
            out.append(Reaction(item, "click", rank))
            if follow < self.apply_given_click:
                out.append(Reaction(item, "apply", rank))
            elif follow < self.apply_given_click + self.save_given_click:
                out.append(Reaction(item, "save", rank))
        return out

    def react(
        self, world: World, member: int, session_key: int, sim_time: float, shown: list[int]
    ) -> SessionOutcome:
        """Draw the member's reactions to ``shown`` (ranked, top first) in one session."""
        rng = np.random.default_rng([world.config.seed, 5, member, session_key])
        state = world.state(member, sim_time)
        items = np.asarray(shown, dtype=np.int64)
        # One fixed-size draw per rank, whatever happens: a change at one rank never shifts
        # the random numbers used at the others.
        draws = rng.random((max(len(shown), 1), 3))
        if not len(shown):
            return SessionOutcome(0, ())
        p_dismiss, p_click = self.probabilities(self.affinity(world, state, items))
        reactions: list[Reaction] = []
        for rank, item in enumerate(shown):
            if draws[rank, 0] >= self.examine_decay**rank:
                continue
            reactions += self._reactions(
                item, rank, draws[rank, 1:], p_dismiss[rank], p_click[rank]
            )
        return SessionOutcome(len(shown), tuple(reactions))

    def history(
        self,
        world: World,
        member: int,
        items: np.ndarray,
        sim_times: np.ndarray,
        rng: np.random.Generator,
    ) -> list[Reaction]:
        """The events of ``member`` on ``items``, each examined once at its ``sim_times``
        entry by the member as they were then (``rank`` is the item's position in
        ``items``): what a member did before a request."""
        out: list[Reaction] = []
        draws = rng.random((len(items), 2))
        for i, (item, sim_time) in enumerate(zip(items, sim_times, strict=True)):
            state = world.state(member, float(sim_time))
            affinity = self.affinity(world, state, np.asarray([item]))
            p_dismiss, p_click = self.probabilities(affinity)
            out += self._reactions(int(item), i, draws[i], p_dismiss[0], p_click[0])
        return out

    def expected_examined(self, k: int) -> float:
        """Expected examined impressions in a list of ``k``: sizes the online store's history."""
        if self.examine_decay >= 1.0:
            return float(k)
        return (1.0 - self.examine_decay**k) / (1.0 - self.examine_decay)
