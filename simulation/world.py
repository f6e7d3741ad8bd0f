"""The simulated world: jobs, members whose interests drift over days, and their sessions.

Everything here is a pure function of :class:`WorldConfig` (seed included): two worlds
built from equal configs are equal, whatever order they are queried in.

* **Topics** are job families (engineering, sales…): a random unit vector each in the
  embedding space. A job's embedding is its topic's centre plus noise, renormalized; its
  ``category`` is the topic's name, its ``company`` one of a few companies per topic, its
  ``geo`` a city (lat/lon jittered around the city centre, ``region`` = the city).
* **Members** have a latent interest (a unit vector near one topic's centre) and a city.
  Neither is ever shown to the system: it sees only the member's actions.
* **Drift**: each member changes focus (a new topic; a new interest vector near it) as a
  Poisson process with ``focus_changes_per_day`` events per simulated day, and moves to
  another city with ``moves_per_day``. Both zero = a world without drift.
* **Sessions**: each simulated day a member has Poisson(``sessions_per_day``) sessions at
  uniform random times; each session draws ``candidates`` jobs uniformly from the catalogue
  (a candidate generator that knows nothing about the member, the same for both arms).
* **Arms**: a member is in the near-real-time arm (``nrt``, fresh features) or the
  daily-batch arm (``batch``, daily features) of the experiment :func:`experiment` defines,
  half and half in expectation: the arm the experiment machinery's stable hash of
  (``sim-<seed>``, member id) picks, as the worker serving the run picks it.

The same world makes the synthetic training examples of :mod:`nearline.simulation.examples`, which
also want what a catalogue has and the simulator leaves out: a ``popularity`` per job, a
category that is not always the topic's (``category_blur``), and a topic each member
dislikes (:meth:`World.sample_items` shows it to them now and then). Each of these comes
from a random stream of its own, so turning them on or off never changes the rest of the
world, and the simulator's worlds are what they were before the examples used them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from typing import Any, Literal

import numpy as np

from nearline.model import experiments
from nearline.model.heuristic import HEURISTIC_VERSION

__all__ = [
    "ARMS",
    "CITIES",
    "TOPICS",
    "Arm",
    "MemberState",
    "Session",
    "World",
    "WorldConfig",
    "arm_of",
    "experiment",
]

Arm = Literal["nrt", "batch"]
ARMS: tuple[Arm, Arm] = ("nrt", "batch")
DAY = 86_400.0

TOPICS = (
    "engineering",
    "data",
    "design",
    "sales",
    "marketing",
    "finance",
    "operations",
    "healthcare",
    "education",
    "legal",
    "hr",
    "support",
)
CITIES = (  # (region, lat, lon)
    ("amsterdam", 52.37, 4.90),
    ("berlin", 52.52, 13.40),
    ("london", 51.51, -0.13),
    ("paris", 48.86, 2.35),
    ("madrid", 40.42, -3.70),
    ("new-york", 40.71, -74.01),
    ("toronto", 43.65, -79.38),
    ("singapore", 1.35, 103.82),
)


@dataclass(frozen=True)
class WorldConfig:
    """Size, drift and seed of the world; equal configs give equal worlds.

    The defaults are the simulator's; :mod:`nearline.simulation.examples` sets its own sizes and
    turns on ``category_blur`` and ``popularity``, and reads ``n_requests`` (the simulator plays
    sessions instead: ``sessions_per_day`` over ``total_days``).
    """

    seed: int = 7
    members: int = 200
    items: int = 2000
    days: int = 7
    warmup_days: int = 1
    sessions_per_day: float = 4.0
    candidates: int = 100
    topics: int = 8
    cities: int = 6
    companies_per_topic: int = 5
    embedding_dim: int = 16
    item_noise: float = 0.8
    member_noise: float = 0.5
    focus_changes_per_day: float = 0.3
    moves_per_day: float = 0.1
    category_blur: float = 0.0
    popularity: bool = False
    n_requests: int = 1000

    def __post_init__(self) -> None:
        checks = {
            "members": self.members >= 2,
            "items": self.items >= 1,
            "days": self.days >= 1,
            "warmup_days": self.warmup_days >= 0,
            "sessions_per_day": self.sessions_per_day > 0,
            "candidates": 1 <= self.candidates <= self.items,
            "topics": 2 <= self.topics <= len(TOPICS),
            "cities": 1 <= self.cities <= len(CITIES),
            "companies_per_topic": self.companies_per_topic >= 1,
            "embedding_dim": self.embedding_dim >= 2,
            "item_noise": self.item_noise >= 0,
            "member_noise": self.member_noise >= 0,
            "focus_changes_per_day": self.focus_changes_per_day >= 0,
            "moves_per_day": self.moves_per_day >= 0,
            "category_blur": 0 <= self.category_blur <= 1,
            "n_requests": self.n_requests >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"world parameter out of range: {', '.join(bad)}")
        if self.moves_per_day > 0 and self.cities < 2:
            raise ValueError("members can only move with at least 2 cities")

    @property
    def total_days(self) -> int:
        """Warm-up days plus measured days: the length of the simulated time line."""
        return self.warmup_days + self.days

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemberState:
    """A member's hidden truth at one moment: what they want, where they are, what they avoid."""

    topic: int
    interest: np.ndarray
    city: int
    dislike: int  # a topic the member does not want (never the first focus; drift may reach it)


@dataclass(frozen=True)
class Session:
    """One visit: who, when (simulated seconds since the start) and the jobs on offer."""

    index: int
    member: int
    sim_time: float
    candidates: tuple[int, ...]

    @property
    def day(self) -> int:
        return int(self.sim_time // DAY)


@dataclass(frozen=True)
class _Change:
    sim_time: float
    kind: Literal["focus", "move"]
    value: int
    interest: np.ndarray | None = None


#: Each arm's feature mode in the experiment the simulator runs.
FEATURES: dict[Arm, experiments.FeatureMode] = {"nrt": "fresh", "batch": "daily"}


def experiment(
    seed: int,
    version: str = HEURISTIC_VERSION,
    day_origin: float = 0.0,
    day_length: float = DAY,
) -> experiments.Experiment:
    """The experiment a run of world ``seed`` starts: ``nrt`` and ``batch`` half and half,
    both ranked by ``version``, the batch arm's day the simulated day (``day_length`` wall
    seconds from ``day_origin``). Its id depends on the seed only, so two runs of one world
    (``simulate --train`` and its heuristic baseline) split the members alike."""
    return experiments.Experiment(
        f"sim-{seed}",
        tuple(experiments.Arm(arm, version, FEATURES[arm], 0.5) for arm in ARMS),
        day_origin=day_origin,
        day_length=day_length,
    )


@lru_cache(maxsize=8)
def _assigner(seed: int) -> experiments.Assigner:
    return experiments.Assigner(experiment(seed))


def arm_of(member_id: str, seed: int) -> Arm:
    """The arm of a member: the experiment machinery's stable hash, as the worker assigns."""
    return ARMS[_assigner(seed).index(member_id)]


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


class World:
    """Items, members, their drifting truth and their sessions, all derived from the seed."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        cfg = config
        rng = np.random.default_rng([cfg.seed, 0])
        dim = cfg.embedding_dim
        self.topic_centres = _unit(rng.standard_normal((cfg.topics, dim)))

        self.item_topic = rng.integers(0, cfg.topics, cfg.items)
        noise = rng.standard_normal((cfg.items, dim)) * cfg.item_noise / math.sqrt(dim)
        self.item_embedding = _unit(self.topic_centres[self.item_topic] + noise)
        self.item_city = rng.integers(0, cfg.cities, cfg.items)
        jitter = rng.normal(0.0, 0.2, (cfg.items, 2))
        self.city_latlon = np.array([(lat, lon) for _, lat, lon in CITIES[: cfg.cities]])
        self.item_latlon = self.city_latlon[self.item_city] + jitter
        self.item_company = self.item_topic * cfg.companies_per_topic + rng.integers(
            0, cfg.companies_per_topic, cfg.items
        )
        self.item_ids = [f"job-{i}" for i in range(cfg.items)]
        # Drawn from a stream of their own: the rest of the world is the same with or without.
        extra = np.random.default_rng([cfg.seed, 6])
        blurred = extra.random(cfg.items) < cfg.category_blur
        # Mostly the topic's category; sometimes another one, as real taxonomies blur.
        self.item_category = np.where(
            blurred, extra.integers(0, cfg.topics, cfg.items), self.item_topic
        )
        self.item_popularity = extra.lognormal(1.0, 1.0, cfg.items) if cfg.popularity else None
        self._topic_items = [np.flatnonzero(self.item_topic == t) for t in range(cfg.topics)]

        self.member_ids = [f"member-{m}" for m in range(cfg.members)]
        self.member_arm: list[Arm] = [arm_of(m, cfg.seed) for m in self.member_ids]
        self._initial = [self._initial_state(m) for m in range(cfg.members)]
        self._changes = [self._drift(m) for m in range(cfg.members)]

    # -- members ---------------------------------------------------------------------------

    def _interest_near(self, topic: int, rng: np.random.Generator) -> np.ndarray:
        dim = self.config.embedding_dim
        noise = rng.standard_normal(dim) * self.config.member_noise / math.sqrt(dim)
        return np.asarray(_unit(self.topic_centres[topic] + noise))

    def _initial_state(self, member: int) -> MemberState:
        rng = np.random.default_rng([self.config.seed, 1, member])
        topic = int(rng.integers(0, self.config.topics))
        city = int(rng.integers(0, self.config.cities))
        interest = self._interest_near(topic, rng)
        dislikes = np.random.default_rng([self.config.seed, 7, member])
        dislike = int((topic + dislikes.integers(1, self.config.topics)) % self.config.topics)
        return MemberState(topic, interest, city, dislike)

    def _drift(self, member: int) -> list[_Change]:
        """The member's changes of focus and city over the whole time line, in time order."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 2, member])
        horizon = cfg.total_days * DAY
        changes: list[tuple[float, Literal["focus", "move"]]] = []
        rates: tuple[tuple[Literal["focus", "move"], float], ...] = (
            ("focus", cfg.focus_changes_per_day),
            ("move", cfg.moves_per_day),
        )
        for kind, rate in rates:
            count = int(rng.poisson(rate * cfg.total_days)) if rate > 0 else 0
            changes.extend((float(t), kind) for t in rng.uniform(0.0, horizon, count))
        changes.sort()
        # Resolve the new values in time order, so each change moves away from the current one.
        topic, city = self._initial[member].topic, self._initial[member].city
        resolved: list[_Change] = []
        for sim_time, kind in changes:
            if kind == "focus":
                topic = int((topic + rng.integers(1, cfg.topics)) % cfg.topics)
                resolved.append(_Change(sim_time, "focus", topic, self._interest_near(topic, rng)))
            else:
                city = int((city + rng.integers(1, cfg.cities)) % cfg.cities)
                resolved.append(_Change(sim_time, "move", city))
        return resolved

    def state(self, member: int, sim_time: float) -> MemberState:
        """What ``member`` truly wants, and where they are, at ``sim_time``."""
        state = self._initial[member]
        topic, interest, city = state.topic, state.interest, state.city
        for change in self._changes[member]:
            if change.sim_time > sim_time:
                break
            if change.kind == "focus":
                assert change.interest is not None
                topic, interest = change.value, change.interest
            else:
                city = change.value
        return MemberState(topic, interest, city, state.dislike)

    def changes(self, member: int) -> list[tuple[float, str, int]]:
        """``(sim_time, "focus" | "move", new topic or city)`` for every drift of a member."""
        return [(c.sim_time, c.kind, c.value) for c in self._changes[member]]

    # -- items -----------------------------------------------------------------------------

    def item_categorical(self, item: int) -> dict[str, Any]:
        """The item's categorical attributes: category, company and popularity if the world
        has one."""
        attributes: dict[str, Any] = {
            "category": TOPICS[int(self.item_category[item])],
            "company": f"company-{int(self.item_company[item])}",
        }
        if self.item_popularity is not None:
            attributes["popularity"] = float(self.item_popularity[item])
        return attributes

    def item_geo(self, item: int, digits: int | None = None) -> dict[str, Any]:
        """Where the job is: lat/lon (rounded to ``digits`` if given) and the city as region."""
        lat, lon = (float(x) for x in self.item_latlon[item])
        if digits is not None:
            lat, lon = round(lat, digits), round(lon, digits)
        return {"lat": lat, "lon": lon, "region": CITIES[int(self.item_city[item])][0]}

    def home_geo(self, member: int, sim_time: float) -> dict[str, Any]:
        """The member's city at ``sim_time`` as a static geo attribute (its centre)."""
        city = self.state(member, sim_time).city
        lat, lon = (float(x) for x in self.city_latlon[city])
        return {"lat": lat, "lon": lon, "region": CITIES[city][0]}

    def item_record(self, item: int) -> dict[str, Any]:
        """The item as the ``item-attributes`` topic carries it (see attribute_store)."""
        return {
            "item_id": self.item_ids[item],
            "embedding": [round(float(x), 6) for x in self.item_embedding[item]],
            "geo": self.item_geo(item, digits=5),
            "attributes": self.item_categorical(item),
        }

    def sample_items(
        self, member: int, sim_time: float, count: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Jobs a topic-aware candidate generator offers ``member`` at ``sim_time`` (with
        repeats): half from their current topic, a fifth from the topic they dislike, the
        rest from the whole catalogue. (The simulator's sessions draw uniformly instead.)"""
        state = self.state(member, sim_time)
        kind = rng.random(count)
        out = rng.integers(0, self.config.items, count)
        pools = ((kind < 0.5, state.topic), ((kind >= 0.5) & (kind < 0.7), state.dislike))
        for mask, topic in pools:
            pool = self._topic_items[topic]
            if len(pool) and mask.any():
                out[mask] = rng.choice(pool, int(mask.sum()))
        return out

    # -- sessions --------------------------------------------------------------------------

    @cached_property
    def sessions(self) -> list[Session]:
        """Every session of every member over warm-up and measured days, in time order."""
        cfg = self.config
        found: list[tuple[float, int, int]] = []
        for member in range(cfg.members):
            rng = np.random.default_rng([cfg.seed, 3, member])
            for day in range(cfg.total_days):
                count = int(rng.poisson(cfg.sessions_per_day))
                for t in np.sort(rng.uniform(0.0, DAY, count)):
                    found.append((day * DAY + float(t), member, len(found)))
        found.sort()
        out = []
        for index, (sim_time, member, key) in enumerate(found):
            rng = np.random.default_rng([cfg.seed, 4, member, key])
            candidates = rng.choice(cfg.items, cfg.candidates, replace=False)
            out.append(Session(index, member, sim_time, tuple(int(c) for c in candidates)))
        return out
