"""Synthetic training examples from the simulator's seeded world, vectorized by the real Vectorizer.

The world is :class:`nearline.simulation.world.World` (topics, jobs with a category, company,
city and here a popularity; members with an interest near one topic, a city and a disliked
topic), and its members behave as :class:`nearline.simulation.behaviour.BehaviourModel` says,
with the weights of :data:`EXAMPLES_BEHAVIOUR`: a member's true affinity for a job is

    4.0 * cos(interest, embedding) + 1.5 * [same city] - 3.0
    + 0.4 * (log1p(popularity) - 1.5) - 0.6 * min(distance_km / 1000, 3)
    - 2.0 * [job's topic is the disliked one]

A request at a random time of the world's time line samples a recent-action history in the
member-features shape the online store serves (jobs a topic-aware candidate generator
offered, each reacted to by the behaviour model), then candidates the same way; each
candidate's label is Bernoulli(sigmoid(1.5 * affinity)): would the member engage. Some
attributes are dropped at random so the missing-value flags carry weight.

Run ``python -m nearline.simulation.examples OUT.parquet`` to write a file for
:mod:`nearline.model.training`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nearline.foundation.settings import parse_duration
from nearline.model.dataset import ExampleSet, write_examples
from nearline.model.heuristic import HEURISTIC_VERSION
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from nearline.simulation.behaviour import BehaviourModel
from nearline.simulation.world import DAY, World, WorldConfig

# WorldConfig is the simulator's, named here too: callers size their examples' world with it.
__all__ = ["EXAMPLES_BEHAVIOUR", "EXAMPLES_WORLD", "WorldConfig", "generate_examples", "main"]

#: The world the examples come from unless told otherwise: the simulator's, with the
#: vectorizer's default embedding dimension, popularity and blurred categories, and members
#: whose interests and cities hold still (the simulator is where drift is studied; here it
#: would only blur what the tests hold the trainer to).
EXAMPLES_WORLD = WorldConfig(
    embedding_dim=VectorizerConfig().embedding_dim,
    popularity=True,
    category_blur=0.1,
    focus_changes_per_day=0.0,
    moves_per_day=0.0,
)

#: How the examples' members react: the simulator's members, who also weigh a job's
#: popularity and distance, and avoid the topic they dislike.
EXAMPLES_BEHAVIOUR = BehaviourModel(popularity_weight=0.4, distance_weight=0.6, dislike_weight=2.0)

_START_TS = 1_764_000_000.0  # Unix time of the world's simulated second 0
_MAX_HISTORY = 60  # jobs a member came across before a request, at most
_MISSING_EMBEDDING = 0.05  # share of served attributes without their embedding
_MISSING_GEO = 0.10  # … without their geo
_UNKNOWN_CANDIDATE = 0.02  # share of candidates the attribute store does not know
_HOME_GEO = 0.5  # share of members with a static home location in the attribute store


def _served_attributes(world: World, item: int, rng: np.random.Generator) -> dict[str, Any]:
    """The job's attributes as the attribute store serves them, some dropped at random."""
    attrs = world.item_categorical(item)
    if rng.random() >= _MISSING_EMBEDDING:
        attrs["embedding"] = world.item_embedding[item].astype(np.float32)
    if rng.random() >= _MISSING_GEO:
        attrs["geo"] = world.item_geo(item)
    return attrs


def _member_features(
    world: World,
    behaviour: BehaviourModel,
    member: int,
    sim_time: float,
    windows: tuple[float, ...],
    names: tuple[str, ...],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Recent actions and windowed counts, newest first, in the online store's shape."""
    now = _START_TS + sim_time
    count = int(rng.integers(0, _MAX_HISTORY + 1))
    ages = np.sort(rng.uniform(0, max(windows), count))
    # Each past job as the candidate generator offered it then: members drift.
    seen_at = sim_time - ages
    items = np.array(
        [world.sample_items(member, float(t), 1, rng)[0] for t in seen_at], dtype=np.int64
    )
    actions: list[dict[str, Any]] = []
    counts = {name: dict[str, int]() for name in names}
    for n, reaction in enumerate(behaviour.history(world, member, items, seen_at, rng)):
        # One item's events a moment apart in their order (view, then click, then apply).
        age = float(ages[reaction.rank]) - 0.01 * n / max(len(items), 1)
        ts = now - age
        actions.append(
            {
                "event_id": f"e-{member}-{int(ts * 1000)}-{n}",
                "item_id": world.item_ids[reaction.item],
                "action": reaction.action,
                "ts": ts,
                "attributes": _served_attributes(world, reaction.item, rng),
                "joined": True,
            }
        )
        for name, window in zip(names, windows, strict=True):
            if age < window:
                counts[name][reaction.action] = counts[name].get(reaction.action, 0) + 1
    actions.sort(key=lambda action: -action["ts"])
    return {
        "member_id": world.member_ids[member],
        "as_of": now,
        "last_event_ts": actions[0]["ts"] if actions else None,
        "last_applied_at": actions[0]["ts"] + 0.2 if actions else None,
        "recent_actions": actions,
        "counts": counts,
    }


def generate_examples(
    config: WorldConfig = EXAMPLES_WORLD,
    vectorizer: Vectorizer | None = None,
    behaviour: BehaviourModel = EXAMPLES_BEHAVIOUR,
    per_request: int = 30,
) -> ExampleSet:
    """``config.n_requests`` requests of up to ``per_request`` labelled rows each.

    ``per_request`` is what a response logs (the jobs it showed), not the world's
    ``candidates`` (what a simulated session asks to rank).
    """
    vectorizer = vectorizer or Vectorizer(VectorizerConfig(embedding_dim=config.embedding_dim))
    if vectorizer.config.embedding_dim != config.embedding_dim:
        raise ValueError("the world's embedding_dim must match the vectorizer's")
    world = World(config)
    index = {item_id: i for i, item_id in enumerate(world.item_ids)}
    rng = np.random.default_rng([config.seed, 8])  # the requests' own stream
    names = vectorizer.config.windows
    windows = tuple(parse_duration(w) for w in names)
    times = np.sort(rng.uniform(0, config.total_days * DAY, config.n_requests))
    members = rng.integers(0, config.members, config.n_requests)
    has_home = rng.random(config.members) < _HOME_GEO
    per = per_request
    rows = config.n_requests * per
    features = np.empty((rows, vectorizer.dim), dtype=np.float32)
    labels = np.empty(rows, dtype=np.int8)
    item_ids: list[str] = []
    for r, (sim_time, member) in enumerate(zip(times, members, strict=True)):
        sim_time = float(sim_time)
        member = int(member)
        state = _member_features(world, behaviour, member, sim_time, windows, names, rng)
        # A few candidates the member just acted on, as real candidate generators repeat.
        recent = [a["item_id"] for a in state["recent_actions"][:5]]
        candidates: dict[str, dict[str, Any]] = {}
        chosen: list[int] = []
        for item in world.sample_items(member, sim_time, per, rng):
            item_id = world.item_ids[item]
            if recent and rng.random() < 0.1:
                item_id = recent[int(rng.integers(0, len(recent)))]
            if item_id in candidates:
                continue
            unknown = rng.random() < _UNKNOWN_CANDIDATE
            candidates[item_id] = {} if unknown else _served_attributes(world, index[item_id], rng)
            chosen.append(index[item_id])
        static = {"geo": world.home_geo(member, sim_time)} if has_home[member] else None
        now = _START_TS + sim_time
        matrix = vectorizer.transform(state, candidates, now, static)
        affinity = behaviour.affinity(world, world.state(member, sim_time), np.asarray(chosen))
        start = r * per
        features[start : start + len(chosen)] = matrix
        labels[start : start + len(chosen)] = rng.random(len(chosen)) < (
            behaviour.engage_probability(affinity)
        )
        item_ids.extend(candidates)
        # Duplicates were skipped: mark the unused tail of this request's block.
        labels[start + len(chosen) : start + per] = -1
    keep = labels >= 0
    request_ids = np.repeat([f"req-{config.seed}-{r}" for r in range(config.n_requests)], per)
    return ExampleSet(
        request_id=request_ids[keep].astype(object),
        member_id=np.repeat([world.member_ids[m] for m in members], per)[keep].astype(object),
        ts=np.repeat(_START_TS + times, per)[keep],
        model_version=np.full(int(keep.sum()), HEURISTIC_VERSION, dtype=object),
        item_id=np.asarray(item_ids, dtype=object),
        features=features[keep],
        label=labels[keep],
        feature_names=vectorizer.feature_names,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic nearline training examples.")
    parser.add_argument("out", type=Path, help="Parquet file to write")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=30, help="rows per request")
    parser.add_argument("--seed", type=int, default=EXAMPLES_WORLD.seed)
    args = parser.parse_args(argv)
    config = replace(EXAMPLES_WORLD, seed=args.seed, n_requests=args.requests)
    examples = generate_examples(config, per_request=args.candidates)
    write_examples(args.out, examples)
    print(
        f"wrote {len(examples)} examples ({examples.n_requests} requests, "
        f"{examples.label.mean():.1%} positive) to {args.out}"
    )


if __name__ == "__main__":
    main()
