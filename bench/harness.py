"""Shared pieces of the benchmarks: a broker, worker processes, load, and statistics."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from app.stack import Stack, WorkerProcess

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO",
    "Stack",
    "WorkerProcess",
    "machine",
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


async def preload(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Produce ``records`` as fast as possible; returns seconds taken.

    Pre-loading a source topic may batch normally: the embedded broker's offset quirk only
    matters to readers of a topic's end offset (changelog recovery), not to consumers.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started
