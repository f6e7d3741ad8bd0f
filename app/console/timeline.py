"""Rolling per-second window of ingest: records handled and freshness, for the console."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nearline.agents.ingest import BatchPlan

__all__ = ["FRESHNESS_EDGES", "IngestTimeline", "freshness_sample", "percentile_of"]

#: Upper edges (seconds) of the freshness histogram: 20 buckets a decade from 1 ms to
#: ~1 h, so a percentile read from it is within ~6 % of the exact one. Anything slower
#: lands in the last bucket.
FRESHNESS_EDGES = np.logspace(-3, 3.6, 133)

#: Members per batch whose events' freshness is measured, and events per such member: a
#: batch of 20,000 actions costs the same as one of 256, and each sample is weighted by
#: what it stands for.
SAMPLED_MEMBERS = 256
EVENTS_PER_MEMBER = 4


def freshness_sample(
    plan: BatchPlan, members: int = SAMPLED_MEMBERS, per_member: int = EVENTS_PER_MEMBER
) -> tuple[list[float], list[float]]:
    """Event times of a sample of a batch's valid events, and the weight of each: how many
    of the batch's events it stands for.

    Every ``step``-th member is taken, and up to ``per_member`` of their events spread over
    them: only the sampled members' lists are touched, which matters at 10,000 members a
    batch (touching every list cost ~3 ms a batch, reading cold memory).
    """
    step = max(1, len(plan.by_member) // members)
    times: list[float] = []
    weights: list[float] = []
    for events in islice(plan.by_member.values(), 0, None, step):
        taken = events[:: max(1, len(events) // per_member)][:per_member]
        weight = step * len(events) / len(taken)
        for planned in taken:
            times.append(planned[-1].ts)  # the event comes last, after where it was read
            weights.append(weight)
    return times, weights


def percentile_of(histogram: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of a freshness histogram (counts per bucket), or None if empty.

    The answer is the geometric middle of the bucket the quantile falls in.
    """
    total = float(histogram.sum())
    if total <= 0:
        return None
    index = int(np.searchsorted(np.cumsum(histogram), q * total, side="left"))
    index = min(index, len(FRESHNESS_EDGES) - 1)
    upper = float(FRESHNESS_EDGES[index])
    lower = float(FRESHNESS_EDGES[index - 1]) if index else upper / 10 ** (1 / 20)
    return math.sqrt(lower * upper)


class IngestTimeline:
    """Per-second ring buffers over the last ``seconds``: records handled, freshness.

    Updated once per ingest batch (numpy over a bounded sample, no per-event Python),
    read by the console's system view. Also remembers the members seen most recently,
    so the console can offer some to pick from.
    """

    def __init__(self, seconds: int = 300, recent_members: int = 50) -> None:
        self.seconds = seconds
        self._second = np.full(seconds, -1, dtype=np.int64)  # which second a slot holds
        self._handled = np.zeros(seconds, dtype=np.int64)
        self._freshness = np.zeros((seconds, len(FRESHNESS_EDGES)), dtype=np.float64)
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._recent_limit = recent_members

    def _slot(self, now: float) -> int:
        second = int(now)
        slot = second % self.seconds
        if self._second[slot] != second:  # a slot from an earlier lap: start it afresh
            self._second[slot] = second
            self._handled[slot] = 0
            self._freshness[slot] = 0.0
        return slot

    def record(
        self,
        now: float,
        handled: int,
        event_times: Sequence[float],
        weights: Sequence[float] | None = None,
    ) -> None:
        """A batch applied at ``now``: ``handled`` records, and the event times of events
        applied (each standing for its weight in events; 1 if no weights are given)."""
        slot = self._slot(now)
        self._handled[slot] += handled
        if len(event_times):
            ages = now - np.asarray(event_times, dtype=np.float64)
            buckets = np.searchsorted(FRESHNESS_EDGES, ages, side="left")
            np.minimum(buckets, len(FRESHNESS_EDGES) - 1, out=buckets)
            self._freshness[slot] += np.bincount(
                buckets, weights=weights, minlength=len(FRESHNESS_EDGES)
            )

    def record_batch(self, now: float, handled: int, plan: BatchPlan) -> None:
        """What one applied ingest batch adds: its records, a freshness sample, members."""
        event_times, weights = freshness_sample(plan)
        self.record(now, handled, event_times, weights)
        self.saw_members(now, (key.decode() for _, key in islice(plan.by_member, 64)))

    def saw_members(self, now: float, member_ids: Iterable[str]) -> None:
        recent = self._recent
        for member_id in member_ids:
            recent[member_id] = now
            recent.move_to_end(member_id)
        while len(recent) > self._recent_limit:
            recent.popitem(last=False)

    def recent_members(self) -> list[str]:
        """Members seen most recently, newest first."""
        return list(reversed(self._recent))

    def _window(self, now: float, seconds: int) -> np.ndarray:
        """Mask of the slots holding one of the ``seconds`` complete seconds before ``now``."""
        current = int(now)
        return (self._second >= current - seconds) & (self._second < current)

    def ingest_rate(self, now: float, seconds: int = 10) -> float:
        """Records handled per second over the last ``seconds`` complete seconds."""
        return float(self._handled[self._window(now, seconds)].sum()) / seconds

    def freshness(self, now: float, seconds: int) -> dict[str, Any]:
        """p50/p99 freshness (seconds) of events applied in the last ``seconds``."""
        mask = self._window(now, seconds) | (self._second == int(now))
        histogram = self._freshness[mask].sum(axis=0)
        return {
            "events": round(float(histogram.sum())),
            "p50": percentile_of(histogram, 0.50),
            "p99": percentile_of(histogram, 0.99),
        }

    def series(self, now: float, seconds: int = 120, step: int = 5) -> dict[str, list[Any]]:
        """Charts: records/s per second; freshness p50/p99 per ``step`` seconds."""
        start = int(now) - seconds
        handled = np.zeros(seconds, dtype=np.int64)
        freshness = np.zeros((seconds, len(FRESHNESS_EDGES)))
        mask = self._window(now, seconds)
        offsets = self._second[mask] - start
        handled[offsets] = self._handled[mask]
        freshness[offsets] = self._freshness[mask]
        groups = range(0, seconds, step)
        grouped = [freshness[g : g + step].sum(axis=0) for g in groups]
        return {
            "t": [start + n for n in range(seconds)],
            "ingest_per_s": handled.tolist(),
            "freshness_t": [start + g + step for g in groups],
            "freshness_p50": [percentile_of(h, 0.50) for h in grouped],
            "freshness_p99": [percentile_of(h, 0.99) for h in grouped],
        }
