"""Micro-benchmark: a member's arm, as every recommendation request of an experiment asks it.

Times :meth:`nearline.model.registry.ModelRegistry.assign` (the hash, the arm and the ranker; the
target is under 5 us) and the join's per-arm accounting of one labelled response
(:func:`nearline.model.experiments.response_outcome` and the /metrics counters) beside what
labelling that response costs anyway (:func:`nearline.agents.outcomes.label_response` on a decoded
record of 10 served items), per call, as the median and p99 of ``--runs`` batches of 1000 calls.

    python -m bench.experiments [--runs 200] [--arms 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nearline.agents.outcomes import label_response
from nearline.foundation import codec
from nearline.foundation.metrics import Metrics
from nearline.model.experiments import Arm, Experiment, response_outcome
from nearline.model.feature_log import log_record
from nearline.model.heuristic import HEURISTIC_VERSION
from nearline.model.registry import ModelRegistry
from nearline.model.vectorizer import Vectorizer, VectorizerConfig

_BATCH = 1000


def _per_call_us(work: Callable[[int], object], runs: int) -> tuple[float, float]:
    """Median and p99 over ``runs`` batches of the time of one call, in microseconds."""
    times = []
    for run in range(runs):
        start = time.perf_counter()
        for n in range(run * _BATCH, (run + 1) * _BATCH):
            work(n)
        times.append((time.perf_counter() - start) / _BATCH * 1e6)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--arms", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        registry = ModelRegistry(Path(directory), Vectorizer(VectorizerConfig(embedding_dim=4)))
        share = 1.0 / args.arms
        arms = tuple(Arm(f"arm{n}", HEURISTIC_VERSION, "fresh", share) for n in range(args.arms))
        registry.start_experiment(Experiment("bench", arms))
        registry.load_latest()
        members = [f"member-{n:08d}" for n in range(args.runs * _BATCH)]
        assign = registry.assign
        median, p99 = _per_call_us(lambda n: assign(members[n]), args.runs)
        print(f"assign ({args.arms} arms): median {median:.2f} us, p99 {p99:.2f} us per request")

        metrics = Metrics()
        ranked = [f"item-{n}" for n in range(10)]
        reactions = {"item-3": {"click"}, "item-7": {"dismiss"}}

        def account(n: int) -> None:
            outcome = response_outcome(ranked, reactions)
            metrics.count_arm_outcome({"id": "bench", "arm": f"arm{n % args.arms}", **outcome})

        median, p99 = _per_call_us(account, args.runs)
        print(f"per-arm accounting: median {median:.2f} us, p99 {p99:.2f} us per labelled response")

        names = registry.vectorizer.feature_names
        record = log_record(
            request_id="r",
            member_id="m",
            ts=0.0,
            features_as_of=0.0,
            model_version=HEURISTIC_VERSION,
            feature_names=names,
            item_ids=ranked,
            matrix=np.random.default_rng(0).random((10, len(names)), dtype=np.float32),
            ranked=ranked,
            context={},
        )
        decoded = codec.loads(codec.dumps(record))
        actions = [("item-3", "click", 1.0), ("item-7", "dismiss", 1.0)]
        runs = max(1, args.runs // 10)
        median, p99 = _per_call_us(
            lambda n: label_response(decoded, actions, 60.0, "negative"), runs
        )
        print(f"labelling (for scale): median {median:.2f} us, p99 {p99:.2f} us per response")


if __name__ == "__main__":
    main()
