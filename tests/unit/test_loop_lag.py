"""The event-loop lag gauge sees a blocked loop, and only for its window; GC passes are timed."""

from __future__ import annotations

import asyncio
import gc
import time

from prometheus_client import CollectorRegistry

from nearline.foundation.loop_lag import LoopMonitor


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    assert value is not None, name
    return value


def test_a_blocked_loop_shows_as_lag_for_the_window_then_clears() -> None:
    registry = CollectorRegistry()
    monitor = LoopMonitor(registry, interval=0.01, window=0.5)

    async def scenario() -> tuple[float, float, float]:
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.1)
        quiet = _sample(registry, "nearline_event_loop_lag_seconds")
        time.sleep(0.25)  # a callback that holds the loop, as a long batch would
        await asyncio.sleep(0.05)
        blocked = _sample(registry, "nearline_event_loop_lag_seconds")
        await asyncio.sleep(0.7)  # past the window
        after = _sample(registry, "nearline_event_loop_lag_seconds")
        task.cancel()
        return quiet, blocked, after

    quiet, blocked, after = asyncio.run(scenario())
    assert quiet < 0.1
    assert blocked >= 0.2
    assert after < 0.1
    assert _sample(registry, "nearline_event_loop_delay_seconds_bucket", {"le": "0.1"}) < (
        _sample(registry, "nearline_event_loop_delay_seconds_count")
    )


def test_gc_passes_are_timed_while_the_monitor_runs() -> None:
    registry = CollectorRegistry()
    monitor = LoopMonitor(registry, interval=0.01)

    async def scenario() -> None:
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.02)
        gc.collect(2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert _sample(registry, "nearline_gc_pause_seconds_count", {"generation": "2"}) >= 1
    assert monitor._on_gc not in gc.callbacks  # removed when the monitor stops
