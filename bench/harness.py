"""Shared pieces of the benchmarks: a broker, worker processes, load, and statistics."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from agents.events import ActionEvent
from app.stack import Stack, WorkerProcess

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO",
    "WARMUP",
    "Samples",
    "Stack",
    "WorkerProcess",
    "cpu_seconds",
    "machine",
    "open_loop",
    "paced",
    "percentiles",
    "preload",
    "probe_freshness",
    "process_tree",
    "rss_mb",
]


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident memory of a live process (VmRSS), MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and every live descendant of theirs (Linux: /proc/PID/task/TID/children)."""
    found: list[int] = []
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid in found:
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # exited
        found.append(pid)
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
            except OSError:
                continue
    return found


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


#: How often a freshness probe polls: finer polling is itself load (20 probes/s at 200 ms
#: each would be 2,000 requests/s at 2 ms), and the worker then falls behind because of it.
#: Past 250 ms a probe backs off to 1/20 of its wait (at most 50 ms, a 5 % error at most):
#: when a worker falls seconds behind, fine polling by every late probe would become the load.
PROBE_POLL_EVERY, PROBE_POLL_MAX, PROBE_RETRY_MAX = 0.005, 0.05, 1.0


#: Reads a member's features over HTTP: the answer's JSON, or None when it was not a 200.
ReadFeatures = Callable[[aiohttp.ClientSession, str], Awaitable[Any]]
#: Whether an answer of :data:`ReadFeatures` shows the probe's action.
Shows = Callable[[Any, ActionEvent], bool]


def nearline_features(worker_url: str) -> ReadFeatures:
    """GET ``/v1/members/{member}/features`` of a nearline worker."""

    async def read(client: aiohttp.ClientSession, member: str) -> Any:
        async with client.get(f"{worker_url}/v1/members/{member}/features") as response:
            return await response.json() if response.status == 200 else None

    return read


def shows_newest(body: Any, event: ActionEvent) -> bool:
    """nearline: the probe's action is the member's newest recent action."""
    recent = body["recent_actions"]
    return bool(recent) and recent[0]["event_id"] == event.event_id


async def probe_freshness(
    producer: AIOKafkaProducer,
    client: aiohttp.ClientSession,
    worker_url: str,
    topic: str,
    member: str,
    give_up: float = 30.0,
    *,
    read: ReadFeatures | None = None,
    shows: Shows = shows_newest,
) -> float | None:
    """Produce one action, poll until the member's features show it: seconds, or None.

    ``read`` and ``shows`` (by default nearline's API at ``worker_url``) let another
    stack's feature server be probed the same way (bench.peer_stack).
    """
    event = ActionEvent(str(uuid.uuid4()), member, "item-p", "click", time.time())
    sent = time.perf_counter()
    await (await producer.send(topic, event.to_json(), key=member.encode()))
    read = read or nearline_features(worker_url)
    failures = 0
    while (waited := time.perf_counter() - sent) < give_up:
        try:
            body = await read(client, member)
        except (aiohttp.ClientError, TimeoutError):
            body = None  # a worker restarting: keep polling
        if body is None:
            # Backed off as a client retries: hundreds of probes polling a restarting
            # worker every 50 ms would be a load of their own (~10k requests/s).
            failures += 1
            await asyncio.sleep(min(PROBE_RETRY_MAX, PROBE_POLL_MAX * 2**failures))
            continue
        failures = 0
        if shows(body, event):
            return time.perf_counter() - sent
        await asyncio.sleep(min(PROBE_POLL_MAX, max(PROBE_POLL_EVERY, waited / 20)))
    return None


@dataclass
class Samples:
    """(seconds since the start, latency in seconds) of requests that succeeded; failures."""

    ok: list[tuple[float, float]] = field(default_factory=list)
    failed: int = 0

    def stats(self, outside: Sequence[tuple[float, float]] = ()) -> dict[str, Any]:
        """Percentiles of the requests that neither started nor ended in an ``outside`` window.

        A request that started before a window and was answered in it (a probe waiting
        through a worker's restart) belongs to the window, not to the steady state.
        """
        chosen = [lat for t, lat in self.ok if not any(t < b and t + lat >= a for a, b in outside)]
        found = percentiles(chosen)
        return {
            "n": found["n"],
            "failed": self.failed,
            "p50_ms": round(found["p50"] * 1000, 2),
            "p99_ms": round(found["p99"] * 1000, 2),
            "max_ms": round(found["max"] * 1000, 2),
        }


async def paced(
    send: Callable[[int], Awaitable[bool]], rate: float, seconds: float, start: float
) -> Samples:
    """Start ``send(n)`` at ``rate`` per second for ``seconds`` (an open loop)."""
    samples = Samples()

    async def timed(n: int) -> None:
        began = time.perf_counter()
        try:
            ok = await send(n)
        except Exception:  # counted: an overloaded or restarting worker is part of the figure
            ok = False
        if ok:
            samples.ok.append((began - start, time.perf_counter() - began))
        else:
            samples.failed += 1

    tasks = []
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(timed(n)))
    await asyncio.gather(*tasks)
    return samples


async def open_loop(
    send: Callable[[int], Awaitable[object]], rate: float, seconds: float, warmup: float = WARMUP
) -> list[float]:
    """Start ``send(n)`` at ``rate`` per second, not waiting for answers (an open loop).

    Runs ``warmup + seconds``; returns the latencies of the requests after the warm-up.
    """

    async def sent(n: int) -> bool:
        await send(n)
        return True

    samples = await paced(sent, rate, warmup + seconds, time.perf_counter())
    if samples.failed:
        raise RuntimeError(f"{samples.failed} requests of the open loop raised")
    return [latency for started, latency in samples.ok if started >= warmup]


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
