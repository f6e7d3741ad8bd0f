"""Shared pieces of the benchmarks: a broker, worker processes, load, and statistics."""

from __future__ import annotations

import argparse
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

from nearline.agents.events import ActionEvent
from nearline.app.stack import Stack, WorkerProcess

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "ANSWERED",
    "FAILED",
    "OUTCOMES",
    "REPO",
    "SERVE_PROCESSES",
    "SHED",
    "STALE",
    "WARMUP",
    "Samples",
    "Stack",
    "WorkerProcess",
    "add_serve_processes_option",
    "cpu_seconds",
    "machine",
    "open_loop",
    "outcome",
    "paced",
    "percentiles",
    "pod_pids",
    "pod_rss_mb",
    "preload",
    "probe_freshness",
    "process_tree",
    "rss_mb",
    "serve_processes",
    "shows_recent",
]


#: Serving processes beside each worker in the benchmarks' stacks unless told otherwise.
SERVE_PROCESSES = 2


def serve_processes(stack: Stack, count: int) -> Stack:
    """Run ``stack``'s pods with ``count`` serving processes beside each worker
    (``NEARLINE_SERVE_PROCESSES``; 0: the worker serves the API itself)."""
    stack.settings["NEARLINE_SERVE_PROCESSES"] = str(count)
    return stack


def add_serve_processes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--serve-processes",
        type=int,
        default=SERVE_PROCESSES,
        help="NEARLINE_SERVE_PROCESSES of the stack: serving processes beside each worker "
        "(0: the worker serves the API itself)",
    )


def pod_pids(worker: WorkerProcess) -> list[int]:
    """The processes of a worker's pod: the worker and, when the harness runs them beside
    it (``NEARLINE_SERVE_PROCESSES``), its serving processes; the worker alone on a harness
    that has no serving processes."""
    pids = getattr(worker, "pod_pids", None)
    return list(pids()) if pids is not None else [worker.pid]


def pod_rss_mb(worker: WorkerProcess) -> float:
    """Resident memory of a worker's pod (:func:`pod_pids`), MB."""
    return sum(found for pid in pod_pids(worker) if (found := rss_mb(pid)) is not None)


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


def shows_recent(body: Any, event: ActionEvent) -> bool:
    """nearline: the probe's action is among the member's recent actions.

    Anywhere among them, not only the newest: another probe of the same member may have
    landed after this one, and then it would never be first and would wait until it gave up.
    """
    return any(action["event_id"] == event.event_id for action in body["recent_actions"])


async def probe_freshness(
    producer: AIOKafkaProducer,
    client: aiohttp.ClientSession,
    worker_url: str,
    topic: str,
    member: str,
    give_up: float = 30.0,
    *,
    read: ReadFeatures | None = None,
    shows: Shows = shows_recent,
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


#: What became of one request of an open loop: answered (200), answered from state that may
#: be stale (a 200 whose body has ``"stale_ms"``), shed (503) or failed (any other status,
#: a timeout, a refused connection).
ANSWERED, STALE, SHED, FAILED = "answered", "stale", "shed", "failed"
OUTCOMES = (ANSWERED, STALE, SHED, FAILED)


def outcome(status: int, body: bytes) -> str:
    """The outcome of an HTTP answer (see :data:`OUTCOMES`)."""
    if status == 200:
        # A byte search, not a JSON parse: the driver must stay cheap at 800 requests/s.
        return STALE if b'"stale_ms"' in body else ANSWERED
    return SHED if status == 503 else FAILED


@dataclass
class Samples:
    """Requests of an open loop: (seconds from the start to when it was due, seconds from
    then until it was answered or given up, outcome (:data:`OUTCOMES`)) of each."""

    requests: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def ok(self) -> list[tuple[float, float]]:
        """(due, latency) of the requests answered, stale answers included."""
        return [(t, lat) for t, lat, what in self.requests if what in (ANSWERED, STALE)]

    @property
    def failed(self) -> int:
        """Requests not answered: shed or failed."""
        return sum(1 for _, _, what in self.requests if what in (SHED, FAILED))

    def counts(self, since: float = float("-inf"), until: float = float("inf")) -> dict[str, int]:
        """Requests due in [since, until) by outcome, and ``total``."""
        found = dict.fromkeys(OUTCOMES, 0)
        for t, _, what in self.requests:
            if since <= t < until:
                found[what] += 1
        found["total"] = sum(found.values())
        return found

    def stats(self, outside: Sequence[tuple[float, float]] = ()) -> dict[str, Any]:
        """Percentiles of the answered requests and counts of the others, of those that
        neither were due nor ended in an ``outside`` window.

        A request due before a window and answered in it (a probe waiting through a
        worker's restart) belongs to the window, not to the steady state.
        """
        chosen = [
            (lat, what)
            for t, lat, what in self.requests
            if not any(t < b and t + lat >= a for a, b in outside)
        ]
        found = percentiles([lat for lat, what in chosen if what in (ANSWERED, STALE)])
        outcomes = [what for _, what in chosen]
        return {
            "n": found["n"],
            "failed": outcomes.count(FAILED),
            "shed": outcomes.count(SHED),
            "stale": outcomes.count(STALE),
            "p50_ms": round(found["p50"] * 1000, 2),
            "p99_ms": round(found["p99"] * 1000, 2),
            "max_ms": round(found["max"] * 1000, 2),
        }

    def to_json(self) -> list[tuple[float, float, str]]:
        return self.requests

    @classmethod
    def from_json(cls, data: list[list[Any]]) -> Samples:
        return cls([(t, lat, what) for t, lat, what in data])


async def paced(
    send: Callable[[int], Awaitable[bool | str]], rate: float, seconds: float, start: float
) -> Samples:
    """Start ``send(n)`` at ``rate`` per second for ``seconds`` (an open loop).

    ``send`` returns an outcome (:data:`OUTCOMES`), or True (answered) / False (failed); one
    that raises has failed. Latency counts from when a request was due (``start + n /
    rate``), not from when this loop got round to sending it: a request the driver sent late
    (its own loop busy, the connection pool full) counts its wait, as a user's would.
    """
    samples = Samples()

    async def timed(n: int, due: float) -> None:
        try:
            got = await send(n)
        except Exception:  # counted: an overloaded or restarting worker is part of the figure
            got = FAILED
        what = got if isinstance(got, str) else (ANSWERED if got else FAILED)
        samples.requests.append((due - start, time.perf_counter() - due, what))

    tasks = []
    for n in range(int(rate * seconds)):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(timed(n, due)))
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
