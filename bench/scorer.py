"""Benchmark: vectorize + score 500 candidates (64-dim embeddings, 100 recent actions).

Reports median and p99 in microseconds over N runs for each torch thread count and
backend (default vs oneDNN), the vectorizer alone for each embedding encoding of attribute
dicts (what training does), and the serving path: candidate rows gathered from
:class:`~nearline.model.item_rows.ItemRows`, the transform on them, and the log record's encoding.

    python -m bench.scorer [--runs 1000] [--candidates 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from nearline.attribute_store import ItemAttributes
from nearline.attribute_store.schema import Geo
from nearline.model.feature_log import encode_matrix
from nearline.model.heuristic import HeuristicRanker
from nearline.model.item_rows import ItemRows
from nearline.model.scorer import Scorer, ScorerConfig, TorchRanker, configure_threads
from nearline.model.vectorizer import Vectorizer, VectorizerConfig

NOW = 1_764_384_000.0
ACTIONS = ("click", "view", "view", "apply", "save", "dismiss")


def member_features(rng: np.random.Generator, dim: int, n_actions: int) -> dict[str, Any]:
    actions = []
    for i in range(n_actions):
        actions.append(
            {
                "event_id": f"e{i}",
                "item_id": f"h{i}",
                "action": ACTIONS[i % len(ACTIONS)],
                "ts": NOW - 60.0 * (i + 1),
                "attributes": {
                    "category": f"cat-{i % 7}",
                    "company": f"co-{i % 11}",
                    "geo": {"lat": 52.0 + rng.random(), "lon": 4.0 + rng.random(), "region": "nl"},
                    "embedding": rng.standard_normal(dim).tolist(),
                },
                "joined": True,
            }
        )
    counts = {w: {a: int(rng.integers(0, 20)) for a in set(ACTIONS)} for w in ("1h", "24h", "96h")}
    return {
        "member_id": "m1",
        "as_of": NOW,
        "last_event_ts": NOW - 60.0,
        "last_applied_at": NOW - 59.8,
        "recent_actions": actions,
        "counts": counts,
    }


def candidates(rng: np.random.Generator, dim: int, n: int, encoding: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(n):
        vector = rng.standard_normal(dim).astype(np.float32)
        embedding: Any = {
            "list": vector.tolist(),
            "ndarray": vector,
            "bytes": vector.astype("<f4").tobytes(),
        }[encoding]
        out[f"c{i}"] = {
            "embedding": embedding,
            "geo": {"lat": 50.0 + rng.random() * 3, "lon": 3.0 + rng.random() * 5, "region": "nl"},
            "category": f"cat-{i % 9}",
            "company": f"co-{i % 13}",
            "popularity": float(rng.lognormal()),
        }
    return out


def records(cands: dict[str, Any]) -> dict[str, ItemAttributes]:
    """The same candidates as attribute-store records (list embeddings)."""
    out = {}
    for item_id, attrs in cands.items():
        geo = attrs["geo"]
        out[item_id] = ItemAttributes(
            item_id,
            list(attrs["embedding"]),
            Geo(geo["lat"], geo["lon"], geo["region"]),
            {k: attrs[k] for k in ("category", "company", "popularity")},
        )
    return out


def measure(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    for _ in range(min(100, runs)):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000.0)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def _vectorize_and_score(
    vectorizer: Vectorizer, ranker: TorchRanker, features: dict[str, Any], cands: dict[str, Any]
) -> np.ndarray:
    return ranker.score(vectorizer.transform(features, cands, NOW))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    vectorizer = Vectorizer(VectorizerConfig(embedding_dim=args.dim))
    features = member_features(rng, args.dim, args.actions)
    by_encoding = {
        e: candidates(rng, args.dim, args.candidates, e) for e in ("list", "ndarray", "bytes")
    }
    torch.manual_seed(0)
    scorer = Scorer(ScorerConfig(vectorizer.dim, hidden=(128, 64))).eval()
    rankers = {
        backend: TorchRanker(scorer, "bench", vectorizer.feature_names, backend=backend)  # type: ignore[arg-type]
        for backend in ("default", "mkldnn")
    }
    heuristic = HeuristicRanker(vectorizer.feature_names)
    matrix = vectorizer.transform(features, by_encoding["list"], NOW)

    print(
        f"# {args.candidates} candidates x {args.dim}-dim embeddings, {args.actions} recent "
        f"actions, {vectorizer.dim} features, MLP {vectorizer.dim}-128-64-1, {args.runs} runs"
    )
    print(f"# {os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}")
    print(f"{'step':<44} {'threads':>7} {'median us':>10} {'p99 us':>10}")
    rows: list[tuple[str, int, float, float]] = []
    configure_threads(1)
    for encoding, cands in by_encoding.items():
        median, p99 = measure(partial(vectorizer.transform, features, cands, NOW), args.runs)
        rows.append((f"vectorize (embeddings as {encoding})", 1, median, p99))
    # The serving path: every candidate already has its row (the steady state).
    stored = records(by_encoding["list"])
    item_rows = ItemRows(vectorizer)
    item_ids = list(stored)

    async def fetch(ids: list[str]) -> dict[str, tuple[ItemAttributes | None, float]]:
        return {item_id: (stored.get(item_id), float("inf")) for item_id in ids}

    loop = asyncio.new_event_loop()

    def gather() -> Any:
        return loop.run_until_complete(item_rows.fetch_rows(item_ids, fetch, 0.0))[0]

    candidate_rows = gather()
    median, p99 = measure(gather, args.runs)
    rows.append(("serving: gather candidate rows", 1, median, p99))
    serving = partial(vectorizer.transform_rows, features, candidate_rows, NOW)
    median, p99 = measure(serving, args.runs)
    rows.append(("serving: transform_rows", 1, median, p99))
    median, p99 = measure(partial(encode_matrix, matrix), args.runs)
    rows.append(("serving: log record features", 1, median, p99))
    loop.close()
    median, p99 = measure(lambda: heuristic.score(matrix), args.runs)
    rows.append(("score: heuristic", 1, median, p99))
    for threads in (1, 2):
        configure_threads(threads)
        for backend, ranker in rankers.items():
            median, p99 = measure(partial(ranker.score, matrix), args.runs)
            rows.append((f"score: MLP {backend}", threads, median, p99))
            end_to_end = partial(
                _vectorize_and_score, vectorizer, ranker, features, by_encoding["list"]
            )
            median, p99 = measure(end_to_end, args.runs)
            rows.append((f"vectorize(list) + score: MLP {backend}", threads, median, p99))
    for name, threads, median, p99 in rows:
        print(f"{name:<44} {threads:>7} {median:>10.0f} {p99:>10.0f}")


if __name__ == "__main__":
    main()
