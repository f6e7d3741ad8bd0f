"""The experiment's numbers: per-arm rates with bootstrap intervals, the NRT-vs-batch and
trained-vs-heuristic differences, permutation p-values and daily series.

The arms' outcome metrics (dismiss rate, positive rate, NDCG@10 and MRR of the served
order) are the experiment machinery's:
:attr:`~nearline.simulation.runner.SimulationResult.experiment`, computed from the
training-examples topic as ``nearline experiment status`` computes them
(:func:`experiment_table`). The rest is the simulator's own, from its session records:
session-level rates and the ranking against the true click odds, which only the
simulator knows; the daily series and the permutation test use those records too.

The simulator's confidence intervals are a **cluster bootstrap over members**: a member's
sessions are not independent (same interests, same history), so members are resampled with
replacement within each arm, and each replicate recomputes the ratio metric (sum over the
resampled members' sessions). The difference and the relative change NRT vs batch take one
replicate of each arm, independently, per bootstrap draw. Percentile intervals, from the
bootstrap the promotion gate uses (:mod:`nearline.model.bootstrap`).
:mod:`nearline.simulation.report` writes these numbers as Markdown and plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nearline.model import experiments
from nearline.model.bootstrap import percentile_interval, resample
from nearline.simulation.runner import SessionRecord
from nearline.simulation.world import ARMS, Arm

__all__ = [
    "ARM_METRICS",
    "METRICS",
    "ArmSummary",
    "Comparison",
    "Estimate",
    "RankerEstimates",
    "compare",
    "compare_rankers",
    "daily_series",
    "experiment_table",
    "member_totals",
    "members_needed",
    "permutation_p_values",
]

#: name -> (numerator column, denominator column, label)
METRICS: dict[str, tuple[str, str, str]] = {
    "dismiss_rate": ("dismisses", "impressions", "dismiss rate (dismisses / impressions)"),
    "engaged_sessions": (
        "engaged",
        "sessions",
        "engaged-session share (click, apply or save)",
    ),
    "applies_per_session": ("applies", "sessions", "applies per session"),
    "true_ndcg": ("true_ndcg", "sessions", "NDCG@k of the shown list against true click odds"),
    "true_hr": ("true_hit", "sessions", "HR@k: the best candidate was shown"),
    "true_mrr": ("true_rr", "sessions", "MRR of the best candidate (0 if not shown)"),
}
#: The experiment machinery's metrics as the report names them (see :func:`experiment_table`).
ARM_METRICS: dict[str, str] = {
    "dismiss_rate": "dismiss rate (dismissed / served)",
    "positive_rate": "positive rate (clicked, applied or saved / served)",
    "ndcg_at_10": "NDCG@10 of the served order (positives as gains)",
    "mrr": "MRR (first positive in the served order)",
}
_COLUMNS = (
    "sessions",
    "impressions",
    "dismisses",
    "engaged",
    "applies",
    "clicks",
    "saves",
    "true_ndcg",
    "true_hit",
    "true_rr",
)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def fmt(self, digits: int = 4, percent: bool = False) -> str:
        if percent:
            return f"{self.value:+.1%} [{self.low:+.1%}, {self.high:+.1%}]"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class ArmSummary:
    arm: Arm
    members: int
    sessions: int
    impressions: int
    metrics: dict[str, Estimate]


@dataclass(frozen=True)
class Comparison:
    """Both arms, and NRT minus batch (absolute and relative), at confidence ``level``."""

    level: float
    arms: dict[Arm, ArmSummary]
    difference: dict[str, Estimate]
    relative: dict[str, Estimate]


def member_totals(records: Sequence[SessionRecord], arm: Arm) -> dict[str, np.ndarray]:
    """Per-member sums of each column over the measured sessions of one arm."""
    members = sorted({r.member for r in records if r.arm == arm and r.measured})
    index = {m: i for i, m in enumerate(members)}
    totals = {name: np.zeros(len(members)) for name in _COLUMNS}
    for r in records:
        if r.arm != arm or not r.measured:
            continue
        i = index[r.member]
        totals["sessions"][i] += 1
        totals["impressions"][i] += r.impressions
        totals["dismisses"][i] += r.dismisses
        totals["engaged"][i] += r.engaged
        totals["applies"][i] += r.applies
        totals["clicks"][i] += r.clicks
        totals["saves"][i] += r.saves
        totals["true_ndcg"][i] += r.true_ndcg
        totals["true_hit"][i] += r.true_hit
        totals["true_rr"][i] += r.true_rr
    return totals


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    total = float(den.sum())
    return float(num.sum()) / total if total else math.nan


def _replicates(
    totals: dict[str, np.ndarray], rng: np.random.Generator, draws: int
) -> dict[str, np.ndarray]:
    picks = resample(len(totals["sessions"]), draws, rng)
    out = {}
    for name, (num, den, _) in METRICS.items():
        nums = totals[num][picks].sum(axis=1)
        dens = totals[den][picks].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = nums / dens
    return out


def _interval(value: float, samples: np.ndarray, level: float) -> Estimate:
    return Estimate(value, *percentile_interval(samples, level))


def compare(
    records: Sequence[SessionRecord], level: float = 0.95, draws: int = 2000, seed: int = 0
) -> Comparison:
    """Per-arm metrics and NRT-vs-batch differences with cluster-bootstrap intervals."""
    rng = np.random.default_rng(seed)
    arms: dict[Arm, ArmSummary] = {}
    reps: dict[Arm, dict[str, np.ndarray]] = {}
    points: dict[Arm, dict[str, float]] = {}
    for arm in ARMS:
        totals = member_totals(records, arm)
        reps[arm] = _replicates(totals, rng, draws)
        points[arm] = {
            name: _ratio(totals[num], totals[den]) for name, (num, den, _) in METRICS.items()
        }
        arms[arm] = ArmSummary(
            arm=arm,
            members=len(totals["sessions"]),
            sessions=int(totals["sessions"].sum()),
            impressions=int(totals["impressions"].sum()),
            metrics={
                name: _interval(points[arm][name], reps[arm][name], level) for name in METRICS
            },
        )
    difference, relative = {}, {}
    for name in METRICS:
        nrt, batch = points["nrt"][name], points["batch"][name]
        difference[name] = _interval(nrt - batch, reps["nrt"][name] - reps["batch"][name], level)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = reps["nrt"][name] / reps["batch"][name] - 1.0
        relative[name] = _interval(nrt / batch - 1.0 if batch else math.nan, rel, level)
    return Comparison(level, arms, difference, relative)


def experiment_table(
    results: experiments.ExperimentResults,
) -> dict[str, tuple[Estimate, Estimate, Estimate, Estimate]]:
    """Per machinery metric: NRT, batch, NRT - batch and NRT vs batch (relative).

    The arms and the difference are exactly what ``nearline experiment status`` shows
    (:func:`nearline.model.experiments.compare`); the relative change pairs the same bootstrap
    draws.
    """
    table = {}
    for name in ARM_METRICS:
        nrt, batch = results.arms["nrt"], results.arms["batch"]
        diff = experiments.compare(results, name, "nrt", "batch")
        a, b = nrt.draws[name], batch.draws[name]
        size = min(len(a), len(b))
        value, base = nrt.metrics[name][0], batch.metrics[name][0]
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = _interval(
                value / base - 1.0 if base else math.nan, a[:size] / b[:size] - 1.0, results.level
            )
        table[name] = (
            Estimate(*nrt.metrics[name]),
            Estimate(*batch.metrics[name]),
            Estimate(diff.difference, diff.low, diff.high),
            relative,
        )
    return table


def permutation_p_values(
    records: Sequence[SessionRecord], permutations: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Two-sided p-value of NRT - batch per metric, permuting arm labels over members.

    Randomization inference: under the null that the arm changes nothing, every split of
    the members into arms of the same sizes was equally likely, so the observed difference
    is compared with the differences of random re-splits. Exact, whatever the number of
    members, unlike a bootstrap interval with few members.
    """
    nrt, batch = member_totals(records, "nrt"), member_totals(records, "batch")
    n_nrt = len(nrt["sessions"])
    pooled = {name: np.concatenate([nrt[name], batch[name]]) for name in _COLUMNS}
    total = len(pooled["sessions"])
    rng = np.random.default_rng(seed)
    # Row 0 is the observed split; the others are random permutations of the members.
    orders = np.vstack([np.arange(total)] + [rng.permutation(total) for _ in range(permutations)])
    out = {}
    for name, (num, den, _) in METRICS.items():
        nums, dens = pooled[num][orders], pooled[den][orders]
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = nums[:, :n_nrt].sum(1) / dens[:, :n_nrt].sum(1) - nums[:, n_nrt:].sum(1) / dens[
                :, n_nrt:
            ].sum(1)
        observed = abs(diff[0])
        if not np.isfinite(observed):
            out[name] = math.nan
            continue
        extreme = np.sum(np.abs(diff[1:]) >= observed - 1e-12)
        out[name] = float((extreme + 1) / (permutations + 1))
    return out


def daily_series(records: Sequence[SessionRecord]) -> dict[str, dict[Arm, list[tuple[int, float]]]]:
    """Per metric and arm: (simulated day, value) for every day with sessions."""
    days = sorted({r.day for r in records})
    out: dict[str, dict[Arm, list[tuple[int, float]]]] = {name: {} for name in METRICS}
    for arm in ARMS:
        for name, (num, den, _) in METRICS.items():
            series = []
            for day in days:
                rows = [r for r in records if r.arm == arm and r.day == day]
                n = sum(_column(r, num) for r in rows)
                d = sum(_column(r, den) for r in rows)
                if d:
                    series.append((day, n / d))
            out[name][arm] = series
    return out


def _column(record: SessionRecord, name: str) -> float:
    if name == "sessions":
        return 1.0
    return float(getattr(record, name))


# -- trained model vs heuristic (`nearline simulate --train`) -------------------------------

RankerEstimates = dict[Arm, dict[str, tuple[Estimate, Estimate, Estimate]]]


def compare_rankers(
    baseline: Sequence[SessionRecord],
    trained: Sequence[SessionRecord],
    level: float = 0.95,
    draws: int = 2000,
    seed: int = 0,
) -> RankerEstimates:
    """Per arm and metric: (baseline, trained, trained - baseline) with intervals.

    Both runs share the world's seed, so they have the same members with the same
    sessions and reaction draws; members are resampled once per replicate for both runs
    (a paired cluster bootstrap), and the difference is the ranker's effect alone.
    """
    rng = np.random.default_rng(seed)
    out: RankerEstimates = {}
    for arm in ARMS:
        members = sorted({r.member for r in baseline if r.arm == arm and r.measured})
        if members != sorted({r.member for r in trained if r.arm == arm and r.measured}):
            raise ValueError("the runs to compare must have the same measured members")
        a, b = member_totals(baseline, arm), member_totals(trained, arm)
        picks = resample(len(members), draws, rng)
        out[arm] = {}
        for name, (num, den, _) in METRICS.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                ra = a[num][picks].sum(1) / a[den][picks].sum(1)
                rb = b[num][picks].sum(1) / b[den][picks].sum(1)
            pa, pb = _ratio(a[num], a[den]), _ratio(b[num], b[den])
            out[arm][name] = (
                _interval(pa, ra, level),
                _interval(pb, rb, level),
                _interval(pb - pa, rb - ra, level),
            )
    return out


def members_needed(members: int, estimate: Estimate) -> float:
    """Members (per arm) for the interval's half-width to shrink below the effect itself.

    Half-widths shrink as 1/sqrt(members); NaN for a zero effect.
    """
    half = (estimate.high - estimate.low) / 2.0
    if not estimate.value or not math.isfinite(half):
        return math.nan
    return members * (half / abs(estimate.value)) ** 2
