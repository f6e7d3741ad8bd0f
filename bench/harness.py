"""Shared pieces of the benchmarks: a broker, worker processes, load, and statistics."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer

from app.stack import Stack, WorkerProcess

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO",
    "WARMUP",
    "Stack",
    "WorkerProcess",
    "machine",
    "open_loop",
    "percentiles",
    "preload",
]


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": at(0.99),
        "max": ordered[-1],
    }


#: Seconds of load at the measured rate before latencies count: connections opened, caches
#: and the worker's allocator warm, as in a service that has been up for a while.
WARMUP = 2.0


async def open_loop(
    send: Callable[[int], Awaitable[object]], rate: float, seconds: float, warmup: float = WARMUP
) -> list[float]:
    """Start ``send(n)`` at ``rate`` per second, not waiting for answers (an open loop).

    Runs ``warmup + seconds``; returns the latencies of the requests after the warm-up.
    """
    latencies: list[float] = []
    counted_from = int(rate * warmup)

    async def timed(n: int) -> None:
        started = time.perf_counter()
        await send(n)
        if n >= counted_from:
            latencies.append(time.perf_counter() - started)

    tasks = []
    begin = time.perf_counter()
    for n in range(int(rate * (warmup + seconds))):
        delay = begin + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(timed(n)))
    await asyncio.gather(*tasks)
    return latencies


async def preload(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes]],
    partition_of: Callable[[bytes], int] | None = None,
) -> float:
    """Produce ``records`` as fast as possible; returns seconds taken.

    ``partition_of`` (a key's partition) stands in for another client's partitioner; by
    default Kafka's (murmur2) places each record. Pre-loading a source topic may batch
    normally: the embedded broker's offset quirk only matters to readers of a topic's end
    offset (changelog recovery), not to consumers.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value in records:
            partition = None if partition_of is None else partition_of(key)
            pending.append(await producer.send(topic, value, key=key, partition=partition))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started
