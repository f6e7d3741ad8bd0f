"""The promotion gate: paired bootstrap over requests, and what it lets through."""

from __future__ import annotations

import numpy as np
import pytest

from nearline.model.evaluation import RequestMetrics, per_request
from nearline.model.gate import GateRules, decide


def metrics(
    ndcg: np.ndarray, rr: np.ndarray | None = None, hit: np.ndarray | None = None
) -> RequestMetrics:
    n = len(ndcg)
    return RequestMetrics(
        requests=np.arange(n),
        ndcg=ndcg,
        reciprocal_rank=ndcg if rr is None else rr,
        hit=np.ones(n) if hit is None else hit,
        k=10,
    )


def test_per_request_metrics_by_hand() -> None:
    labels = np.array([0, 1, 0, 0, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.3, 0.4])
    groups = np.array(["a", "a", "a", "b", "b", "c", "c"])
    result = per_request(labels, scores, groups, k=1)
    assert list(result.requests) == ["a", "b"]  # c has no positive
    assert list(result.reciprocal_rank) == [0.5, 1.0]  # a: the positive is second
    assert list(result.hit) == [0.0, 1.0]  # top 1 only
    assert result.ndcg == pytest.approx([0.0, 1.0])


def test_a_clearly_better_ranker_passes() -> None:
    rng = np.random.default_rng(0)
    served = rng.uniform(0.2, 0.6, 200)
    decision = decide(metrics(served + 0.1), metrics(served), "heuristic-v1")
    assert decision.passed, decision.reasons
    gain = decision.metrics["ndcg_at_10"]
    assert gain.difference == pytest.approx(0.1) and gain.low > 0


def test_no_gain_or_noise_is_refused() -> None:
    rng = np.random.default_rng(1)
    served = rng.uniform(0.2, 0.6, 200)
    same = decide(metrics(served), metrics(served), "v1")
    assert not same.passed and "does not lie above the margin" in same.reasons[0]
    noisy = decide(metrics(served + rng.normal(0.0, 0.2, 200)), metrics(served), "v1")
    gain = noisy.metrics["ndcg_at_10"]
    assert gain.low < 0 < gain.high and not noisy.passed


def test_a_margin_raises_the_bar() -> None:
    served = np.random.default_rng(2).uniform(0.2, 0.6, 200)
    better = metrics(served + 0.02)
    assert decide(better, metrics(served), "v1").passed
    assert not decide(better, metrics(served), "v1", GateRules(margin=0.05)).passed


def test_too_few_requests_or_a_significantly_worse_mrr_is_refused() -> None:
    served = np.full(10, 0.3)
    few = decide(metrics(served + 0.3), metrics(served), "v1")
    assert not few.passed and "only 10 validation requests" in few.reasons[0]
    n = 200
    base = np.random.default_rng(3).uniform(0.3, 0.6, n)
    worse_rr = decide(metrics(base + 0.05, rr=base - 0.2), metrics(base, rr=base), "v1")
    assert not worse_rr.passed and "mrr is significantly worse" in worse_rr.reasons[0]


def test_the_rankers_must_be_judged_on_the_same_requests() -> None:
    a = metrics(np.ones(30))
    b = RequestMetrics(np.arange(1, 31), np.ones(30), np.ones(30), np.ones(30), 10)
    with pytest.raises(ValueError, match="same requests"):
        decide(a, b, "v1")
