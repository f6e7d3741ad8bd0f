"""Synthetic training examples from a small seeded world, vectorized by the real Vectorizer.

The world: items belong to latent topics (embeddings near a topic centre), have a
category (mostly their topic), a company, a region and a popularity. Members like one or
two topics, dislike one, and live in a region. True affinity of a member for an item is

    3.0 * cos(member taste, item embedding) + 0.4 * (log1p(popularity) - 1.5)
    - 0.6 * min(distance_km / 1000, 3) - 2.0 * [item topic is disliked] - 1.0

A request samples a recent-action history in the member-features shape the online store
serves (engaged items drawn with probability sigmoid(affinity), dismisses mostly on disliked
topics), then candidates; each candidate's label is Bernoulli(sigmoid(affinity)). Some
attributes are dropped at random so the missing-value flags carry weight.

Run ``python -m model.examples OUT.parquet`` to write a file for :mod:`model.training`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.settings import parse_duration
from model.dataset import ExampleSet, write_examples
from model.heuristic import HEURISTIC_VERSION
from model.vectorizer import Vectorizer, VectorizerConfig, haversine_km

__all__ = ["SyntheticWorld", "WorldConfig", "generate_examples", "main"]

_REGIONS = (  # (name, lat, lon)
    ("nl", 52.37, 4.90),
    ("de", 52.52, 13.40),
    ("uk", 51.51, -0.13),
    ("fr", 48.86, 2.35),
    ("es", 40.42, -3.70),
    ("us", 40.71, -74.01),
)
_HOUR = 3600.0


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of the synthetic world; the same config always yields the same rows."""

    seed: int = 0
    n_members: int = 300
    n_items: int = 3000
    n_topics: int = 10
    n_companies: int = 60
    embedding_dim: int = 64
    n_requests: int = 1000
    candidates_per_request: int = 30
    max_history: int = 60
    start_ts: float = 1_764_000_000.0
    span_days: float = 14.0
    missing_embedding: float = 0.05
    missing_geo: float = 0.10
    unknown_candidate: float = 0.02


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class SyntheticWorld:
    """Members, items and the true affinity between them."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.rng = rng
        dim, k = config.embedding_dim, config.n_topics
        centres = rng.standard_normal((k, dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        self.item_topic = rng.integers(0, k, config.n_items)
        noise = rng.standard_normal((config.n_items, dim)) / math.sqrt(dim)
        emb = centres[self.item_topic] + 0.8 * noise
        self.item_embedding = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
        company_topic = rng.integers(0, k, config.n_companies)
        self.item_company = np.array(
            [
                rng.choice(np.flatnonzero(company_topic == t))
                if (company_topic == t).any()
                else rng.integers(0, config.n_companies)
                for t in self.item_topic
            ]
        )
        # Mostly the topic's category; sometimes a neighbouring one, as real taxonomies blur.
        off = rng.random(config.n_items) < 0.1
        self.item_category = np.where(off, rng.integers(0, k, config.n_items), self.item_topic)
        self.item_region = rng.integers(0, len(_REGIONS), config.n_items)
        base = np.array([(lat, lon) for _, lat, lon in _REGIONS])
        self.item_latlon = base[self.item_region] + rng.normal(0, 0.5, (config.n_items, 2))
        self.item_popularity = rng.lognormal(1.0, 1.0, config.n_items)
        self.item_ids = [f"item-{i}" for i in range(config.n_items)]

        likes = [
            rng.choice(k, size=rng.integers(1, 3), replace=False) for _ in range(config.n_members)
        ]
        taste = np.stack([centres[topics].sum(axis=0) for topics in likes])
        self.member_taste = taste / np.linalg.norm(taste, axis=1, keepdims=True)
        self.member_likes = likes
        self.member_dislike = np.array(
            [rng.choice([t for t in range(k) if t not in topics]) for topics in likes]
        )
        self.member_region = rng.integers(0, len(_REGIONS), config.n_members)
        self.member_latlon = base[self.member_region] + rng.normal(0, 0.3, (config.n_members, 2))
        self.member_has_static_geo = rng.random(config.n_members) < 0.5

    def affinity(self, member: int, items: np.ndarray) -> np.ndarray:
        """The true (unobserved) log-odds that ``member`` engages with each item."""
        cosine = self.item_embedding[items] @ self.member_taste[member]
        km = haversine_km(
            self.item_latlon[items, 0],
            self.item_latlon[items, 1],
            self.member_latlon[member, 0],
            self.member_latlon[member, 1],
        )
        return (
            3.0 * cosine
            + 0.4 * (np.log1p(self.item_popularity[items]) - 1.5)
            - 0.6 * np.minimum(km / 1000.0, 3.0)
            - 2.0 * (self.item_topic[items] == self.member_dislike[member])
            - 1.0
        )

    def _sample_items(self, member: int, count: int) -> np.ndarray:
        """Items a member is shown: half from liked topics, some disliked, the rest random."""
        rng, cfg = self.rng, self.config
        kind = rng.random(count)
        liked = np.isin(self.item_topic, self.member_likes[member])
        disliked = self.item_topic == self.member_dislike[member]
        pools = (np.flatnonzero(liked), np.flatnonzero(disliked))
        out = rng.integers(0, cfg.n_items, count)
        for mask, pool in ((kind < 0.5, pools[0]), ((kind >= 0.5) & (kind < 0.7), pools[1])):
            if len(pool) and mask.any():
                out[mask] = rng.choice(pool, int(mask.sum()))
        return out

    def item_attributes(self, item: int, drop: bool = True) -> dict[str, Any]:
        """Attributes as the attribute store serves them (some dropped at random)."""
        rng, cfg = self.rng, self.config
        attrs: dict[str, Any] = {
            "category": f"cat-{self.item_category[item]}",
            "company": f"company-{self.item_company[item]}",
            "popularity": float(self.item_popularity[item]),
        }
        if not drop or rng.random() >= cfg.missing_embedding:
            attrs["embedding"] = self.item_embedding[item]
        if not drop or rng.random() >= cfg.missing_geo:
            lat, lon = self.item_latlon[item]
            attrs["geo"] = {
                "lat": float(lat),
                "lon": float(lon),
                "region": _REGIONS[self.item_region[item]][0],
            }
        return attrs

    def member_features(
        self, member: int, now: float, windows: tuple[float, ...], names: tuple[str, ...]
    ) -> dict[str, Any]:
        """Recent actions and windowed counts, newest first, in the online store's shape."""
        rng, cfg = self.rng, self.config
        count = int(rng.integers(0, cfg.max_history + 1))
        items = self._sample_items(member, count)
        ages = np.sort(rng.uniform(0, max(windows), count))
        engaged = rng.random(count) < _sigmoid(self.affinity(member, items))
        disliked = self.item_topic[items] == self.member_dislike[member]
        dismiss = rng.random(count) < np.where(disliked, 0.6, 0.1)
        kinds = rng.choice(["click", "apply", "save"], size=count, p=[0.7, 0.15, 0.15])
        actions: list[dict[str, Any]] = []
        counts = {name: dict[str, int]() for name in names}
        for i in range(count):
            action = str(kinds[i]) if engaged[i] else "dismiss" if dismiss[i] else "view"
            ts = now - float(ages[i])
            actions.append(
                {
                    "event_id": f"e-{member}-{int(ts * 1000)}-{i}",
                    "item_id": self.item_ids[items[i]],
                    "action": action,
                    "ts": ts,
                    "attributes": self.item_attributes(int(items[i])),
                    "joined": True,
                }
            )
            for name, window in zip(names, windows, strict=True):
                if ages[i] < window:
                    counts[name][action] = counts[name].get(action, 0) + 1
        return {
            "member_id": f"member-{member}",
            "as_of": now,
            "last_event_ts": actions[0]["ts"] if actions else None,
            "last_applied_at": actions[0]["ts"] + 0.2 if actions else None,
            "recent_actions": actions,
            "counts": counts,
        }


def generate_examples(config: WorldConfig, vectorizer: Vectorizer | None = None) -> ExampleSet:
    """``config.n_requests`` requests of ``candidates_per_request`` labelled rows each."""
    vectorizer = vectorizer or Vectorizer(VectorizerConfig(embedding_dim=config.embedding_dim))
    if vectorizer.config.embedding_dim != config.embedding_dim:
        raise ValueError("the world's embedding_dim must match the vectorizer's")
    world = SyntheticWorld(config)
    rng = world.rng
    names = vectorizer.config.windows
    windows = tuple(parse_duration(w) for w in names)
    span = config.span_days * 86400.0
    times = np.sort(config.start_ts + rng.uniform(0, span, config.n_requests))
    members = rng.integers(0, config.n_members, config.n_requests)
    per = config.candidates_per_request
    rows = config.n_requests * per
    features = np.empty((rows, vectorizer.dim), dtype=np.float32)
    labels = np.empty(rows, dtype=np.int8)
    item_ids: list[str] = []
    for r, (now, member) in enumerate(zip(times, members, strict=True)):
        now = float(now)
        member = int(member)
        state = world.member_features(member, now, windows, names)
        items = world._sample_items(member, per)
        # A few candidates the member just acted on, as real candidate generators repeat.
        recent = [a["item_id"] for a in state["recent_actions"][:5]]
        candidates: dict[str, dict[str, Any]] = {}
        chosen: list[int] = []
        for item in items:
            item_id = world.item_ids[item]
            if recent and rng.random() < 0.1:
                item_id = recent[int(rng.integers(0, len(recent)))]
                item = int(item_id.removeprefix("item-"))
            if item_id in candidates:
                continue
            unknown = rng.random() < config.unknown_candidate
            candidates[item_id] = {} if unknown else world.item_attributes(int(item))
            chosen.append(int(item))
        static = None
        if world.member_has_static_geo[member]:
            lat, lon = world.member_latlon[member]
            region = _REGIONS[world.member_region[member]][0]
            static = {"geo": {"lat": float(lat), "lon": float(lon), "region": region}}
        matrix = vectorizer.transform(state, candidates, now, static)
        p = _sigmoid(world.affinity(member, np.asarray(chosen)))
        start = r * per
        features[start : start + len(chosen)] = matrix
        labels[start : start + len(chosen)] = rng.random(len(chosen)) < p
        item_ids.extend(candidates)
        # Duplicates were skipped: mark the unused tail of this request's block.
        labels[start + len(chosen) : start + per] = -1
    keep = labels >= 0
    request_ids = np.repeat([f"req-{config.seed}-{r}" for r in range(config.n_requests)], per)
    return ExampleSet(
        request_id=request_ids[keep].astype(object),
        member_id=np.repeat([f"member-{m}" for m in members], per)[keep].astype(object),
        ts=np.repeat(times, per)[keep],
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
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = WorldConfig(
        seed=args.seed, n_requests=args.requests, candidates_per_request=args.candidates
    )
    examples = generate_examples(config)
    write_examples(args.out, examples)
    print(
        f"wrote {len(examples)} examples ({examples.n_requests} requests, "
        f"{examples.label.mean():.1%} positive) to {args.out}"
    )


if __name__ == "__main__":
    main()
