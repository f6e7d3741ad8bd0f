"""How late the event loop runs, and how long the cyclic GC holds it: the worker's stall gauges.

One event loop serves HTTP, applies ingest batches and labels outcomes; the consumer that
fetches from Kafka is a thread of its own under the same GIL. Anything that holds the loop
(a large batch between two yields, a GC pass, a slow callback) delays every request by as
much, so the delay is measured directly: a task asks to wake every ``interval`` and records
how much later than that it woke. ``nearline_event_loop_lag_seconds`` is the longest such
delay of the last second, the figure to plot and alert on; the histogram keeps every one.

GC pauses are timed with :data:`gc.callbacks`, so a stall can be told apart from a long
collection without a profiler attached.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

__all__ = ["LoopMonitor"]

_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopMonitor:
    """Samples the event loop's wake-up delay every ``interval`` seconds; times GC passes."""

    def __init__(
        self, registry: CollectorRegistry, *, interval: float = 0.02, window: float = 1.0
    ) -> None:
        self.interval = interval
        self.window = window
        self._recent: deque[tuple[float, float]] = deque()  # (woke at, delay)
        self._gc_started: float | None = None
        self.delay = Histogram(
            "nearline_event_loop_delay_seconds",
            f"How much later than asked the event loop woke a task that sleeps {interval} s "
            "(every sample).",
            buckets=_DELAY_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "nearline_event_loop_lag_seconds",
            f"The longest event-loop delay of the last {window:g} s: how long a request "
            "arriving then could wait before the worker even read it.",
            registry=registry,
        )
        self.lag.set_function(self.longest_recent)
        self.gc_pause = Histogram(
            "nearline_gc_pause_seconds",
            "Cyclic garbage collector passes, by generation.",
            ["generation"],
            buckets=_DELAY_BUCKETS,
            registry=registry,
        )

    def longest_recent(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        recent = self._recent
        while recent and recent[0][0] < now - self.window:
            recent.popleft()
        return max((delay for _, delay in recent), default=0.0)

    def record(self, woke_at: float, delay: float) -> None:
        self.delay.observe(delay)
        self._recent.append((woke_at, delay))

    async def run(self) -> None:
        """Sample until cancelled; install the GC timer meanwhile."""
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                asked = time.monotonic() + self.interval
                await asyncio.sleep(self.interval)
                woke = time.monotonic()
                self.record(woke, max(0.0, woke - asked))
        finally:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.gc_pause.labels(str(info["generation"])).observe(
                time.perf_counter() - self._gc_started
            )
            self._gc_started = None
