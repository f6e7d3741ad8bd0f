"""The promotion gate: a candidate ranker is published only if it beats the one served.

Both rankers score the same validation requests. The decision is on the paired difference
of per-request NDCG@10 (candidate minus served), with a percentile bootstrap over requests:
the requests are resampled with replacement and the mean difference recomputed, so the
interval reflects how much the verdict depends on which requests happened to validate
(:mod:`nearline.model.bootstrap`, which the simulator's report uses too).

A candidate passes when the lower bound of that interval is above ``margin`` (by default
0: better, and not by luck), and neither MRR nor HR@10 is significantly worse (their
intervals' upper bounds below 0): a model that wins on one ranking metric by losing
clearly on another is not promoted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nearline.model.bootstrap import percentile_interval, resample
from nearline.model.evaluation import RequestMetrics

__all__ = ["GateDecision", "GateRules", "MetricComparison", "decide", "paired_bootstrap"]

#: Per-request arrays of :class:`RequestMetrics` and the names they are reported under.
_METRICS = (("ndcg", "ndcg_at_10"), ("reciprocal_rank", "mrr"), ("hit", "hr_at_10"))


@dataclass(frozen=True)
class GateRules:
    """How sure the gate must be; recorded with every decision."""

    margin: float = 0.0
    level: float = 0.95
    draws: int = 2000
    min_requests: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.level < 1.0:
            raise ValueError("the gate's confidence level must be in [0.5, 1)")
        if self.draws < 100:
            raise ValueError("the gate needs at least 100 bootstrap draws")


@dataclass(frozen=True)
class MetricComparison:
    """One metric for both rankers and their paired difference with its interval."""

    candidate: float
    served: float
    difference: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def fmt(self) -> str:
        return (
            f"{self.candidate:.4f} vs {self.served:.4f} "
            f"({self.difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}])"
        )


@dataclass(frozen=True)
class GateDecision:
    """Whether the candidate may be published, against which ranker, and why."""

    passed: bool
    served_version: str
    requests: int
    rules: GateRules
    metrics: dict[str, MetricComparison] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "served_version": self.served_version,
            "requests": self.requests,
            "margin": self.rules.margin,
            "level": self.rules.level,
            "draws": self.rules.draws,
            "metrics": {name: m.to_dict() for name, m in self.metrics.items()},
            "reasons": list(self.reasons),
        }

    def summary(self) -> str:
        level = f"{self.rules.level:.0%}"
        lines = [
            f"gate: candidate vs served {self.served_version} on {self.requests} validation "
            f"requests with a positive (differences with {level} paired bootstrap intervals):"
        ]
        lines += [f"  {name:<10} {m.fmt()}" for name, m in self.metrics.items()]
        verdict = "PASSED" if self.passed else "REFUSED"
        lines.append(f"gate {verdict}: " + "; ".join(self.reasons))
        return "\n".join(lines)


def paired_bootstrap(
    differences: np.ndarray, rules: GateRules, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile interval of the mean of per-request ``differences``."""
    n = len(differences)
    if n == 0:
        return math.nan, math.nan
    means = differences[resample(n, rules.draws, rng)].mean(axis=1)
    return percentile_interval(means, rules.level)


def decide(
    candidate: RequestMetrics,
    served: RequestMetrics,
    served_version: str,
    rules: GateRules | None = None,
) -> GateDecision:
    """Compare two rankers' per-request metrics on the same requests and decide."""
    rules = rules or GateRules()
    if not np.array_equal(candidate.requests, served.requests):
        raise ValueError("the gate compares rankers on the same requests only")
    rng = np.random.default_rng(rules.seed)
    metrics: dict[str, MetricComparison] = {}
    for attribute, name in _METRICS:
        ours, theirs = getattr(candidate, attribute), getattr(served, attribute)
        differences = ours - theirs
        low, high = paired_bootstrap(differences, rules, rng)
        metrics[name] = MetricComparison(
            candidate=float(ours.mean()) if len(ours) else math.nan,
            served=float(theirs.mean()) if len(theirs) else math.nan,
            difference=float(differences.mean()) if len(differences) else math.nan,
            low=low,
            high=high,
        )
    reasons: list[str] = []
    passed = True
    if len(candidate) < rules.min_requests:
        passed = False
        reasons.append(
            f"only {len(candidate)} validation requests have a positive label; the gate needs "
            f"{rules.min_requests} to tell two rankers apart (collect more examples, or "
            "publish with --force)"
        )
    ndcg = metrics["ndcg_at_10"]
    if passed and not ndcg.low > rules.margin:
        passed = False
        reasons.append(
            f"NDCG@10 {ndcg.candidate:.4f} vs {ndcg.served:.4f}: the difference's "
            f"{rules.level:.0%} interval [{ndcg.low:+.4f}, {ndcg.high:+.4f}] does not lie above "
            f"the margin {rules.margin:+.4f}"
        )
    for name in ("mrr", "hr_at_10"):
        other = metrics[name]
        if passed and other.high < 0:
            passed = False
            reasons.append(
                f"{name} is significantly worse: {other.candidate:.4f} vs {other.served:.4f} "
                f"[{other.low:+.4f}, {other.high:+.4f}]"
            )
    if passed:
        reasons.append(
            f"NDCG@10 +{ndcg.difference:.4f} [{ndcg.low:+.4f}, {ndcg.high:+.4f}] over "
            f"{served_version}, above the margin {rules.margin:+.4f}"
        )
    return GateDecision(
        passed=passed,
        served_version=served_version,
        requests=len(candidate),
        rules=rules,
        metrics=metrics,
        reasons=tuple(reasons),
    )
