"""Side by side with the stack a team would build instead: Quix Streams → Feast → feast serve.

Run: ``python -m bench.peer_stack [--seconds 5] [--preload 50000]`` (``--help`` for all).
nearline (one ``nearline worker``, as the harness starts it) and the peer stack (a Quix
Streams app keeping per-member windowed counts in RocksDB and pushing them to Feast's Redis
online store; reads through ``feast serve``) each get a fresh embedded broker and the same
workload, one after the other:

1. a backlog of ``--preload`` actions, drained from the moment the stack starts: the
   highest action rate it keeps up with;
2. actions at ``--rate`` from a process of their own (bench.load), no reads: CPU per action,
   and how long after the last send the stack had caught up;
3. features reads at ``--read-rate`` for random members, open loop, no actions: read
   latency and CPU per read;
4. all at once, with freshness probes (produce an action, poll the read until it shows);
5. every member's counts against an oracle of what the broker acknowledged.

CPU is summed over every process of a stack (nearline: each process the harness started,
with their children; the peer: the Quix app, ``feast serve`` and its workers, Redis); the
broker, the load generator and this driver are left out of both. The peer's packages live in
a virtual environment of their own (``bench/.peer-venv``, made on first use), Redis is
Debian's ``redis-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiokafka import AIOKafkaProducer

from bench.harness import (
    REPO,
    WARMUP,
    ReadFeatures,
    Samples,
    Shows,
    Stack,
    cpu_seconds,
    machine,
    nearline_features,
    paced,
    percentiles,
    probe_freshness,
    process_tree,
    rss_mb,
    shows_recent,
)
from bench.load import LoadProcess
from bench.peer_feast import ACTIONS, FEATURE_VIEW, FEATURES
from bench.soak import tally
from bench.spine import preload_actions
from nearline.app.broker import EmbeddedBroker, free_port
from nearline.app.stack import wait_until
from nearline.app.traffic import generate_actions

PEER_VENV = REPO / "bench" / ".peer-venv"
#: The peer's packages, pinned (checked together here; nearline's venv is left alone).
PEER_PINS = ("feast[redis]==0.67.0", "quixstreams==3.28.1")
PEER_NAME = "Quix Streams 3.28.1 → Feast 0.67.0 → Redis 7"
MEMBERS = 10_000
PROBES_PER_S = 20.0
#: The window every member's counts are checked in: all of the run's actions fall in it.
CHECKED_WINDOW = "96h"
#: Seeds of the preloaded actions and of the two load phases: distinct event ids, as
#: nearline drops an event id it has seen.
PRELOAD_SEED, INGEST_SEED, MIXED_SEED = 11, 21, 22


def peer_python() -> Path:
    """The peer venv's interpreter; creates the venv and installs the pins on first use."""
    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".installed"
    wanted = "\n".join(PEER_PINS)
    if marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    print(f"installing {', '.join(PEER_PINS)} into {PEER_VENV} …", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PINS], check=True)
    marker.write_text(wanted)
    return python


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "redis-server is not installed: the peer stack's online store is Debian's "
            "redis-server (`make bench` installs it; or apt-get install redis-server)"
        )
    return found


def _wait_port(port: int, process: subprocess.Popen[Any], what: str, timeout: float) -> None:
    def accepts() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(accepts, timeout, 0.1, f"{what} to listen on {port}", workers=[])


@dataclass
class Side:
    """One stack as the workload sees it."""

    name: str
    url: str
    #: GET or POST one member's features: (status, body).
    fetch: Callable[[aiohttp.ClientSession, str], Awaitable[tuple[int, bytes]]]
    read: ReadFeatures
    shows: Shows
    #: A member's counts in :data:`CHECKED_WINDOW` for many members at once.
    counts: Callable[[list[str]], Coroutine[Any, Any, dict[str, dict[str, int]]]]
    #: Actions visible to reads so far (end to end).
    processed: Callable[[], float]
    #: Every process of the stack now.
    pids: Callable[[], list[int]]
    #: Serving processes (for the peer's ``--workers``).
    serving: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


# -- nearline ---------------------------------------------------------------------------

#: Processes this driver started that are no part of either stack (load generators).
_NOT_A_STACK: set[int] = set()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            found.extend(int(child) for child in children.read().split())
    return found


def nearline_side(stack: Stack) -> Side:
    """nearline as the harness started it, measured through the worker's URL.

    Its processes: every child of this driver except the broker and the load generators
    (so serving processes started beside the workers count), with their descendants.
    """
    worker = stack.workers[0]

    def pids() -> list[int]:
        roots = {w.pid for w in stack.workers if not w.exited}
        roots |= set(_children(os.getpid())) - _NOT_A_STACK - {stack.broker.pid or -1}
        return process_tree(roots)

    def applied() -> float:
        if worker.exited:
            raise RuntimeError(f"the worker exited: {worker.log_tail()}")
        try:
            return worker.metric("nearline_events_applied_total")
        except httpx.HTTPError:
            return 0.0  # starting: not serving /metrics yet

    async def fetch(client: aiohttp.ClientSession, member: str) -> tuple[int, bytes]:
        async with client.get(f"{worker.url}/v1/members/{member}/features") as response:
            return response.status, await response.read()

    async def counts(members: list[str]) -> dict[str, dict[str, int]]:
        async with _client(32) as client:
            semaphore = asyncio.Semaphore(32)

            async def one(member: str) -> tuple[str, dict[str, int]]:
                async with semaphore:
                    status, body = await fetch(client, member)
                assert status == 200, f"{member}: {status}"
                return member, json.loads(body)["counts"][CHECKED_WINDOW]

            return dict(await asyncio.gather(*(one(m) for m in members)))

    return Side(
        name="nearline",
        url=worker.url,
        fetch=fetch,
        read=nearline_features(worker.url),
        shows=shows_recent,
        counts=counts,
        processed=applied,
        pids=pids,
    )


# -- the peer: Redis, the Quix app, feast serve -------------------------------------------


class PeerStack:
    """Redis, the feature repo, the Quix Streams app and ``feast serve``, started in order."""

    def __init__(self, bootstrap: str, topic: str, workers: int, commit_interval: float) -> None:
        self.python = peer_python()
        self.tmp = Path(tempfile.mkdtemp(prefix="nearline-peer-"))
        self.repo = self.tmp / "feature_repo"
        self.processes: list[subprocess.Popen[Any]] = []
        self.pushed = 0.0
        self.workers = workers
        self.commit_interval = commit_interval
        redis_port, self.port = free_port(), free_port()
        self.redis = self._start(
            "redis",
            [
                *(redis_server(), "--port", str(redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.tmp)),
            ],
        )
        _wait_port(redis_port, self.redis, "redis-server", 10)
        subprocess.run(
            [str(self.python), "-m", "bench.peer_feast", "apply", str(self.repo), str(redis_port)],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        self.serve = self._start(
            "feast-serve",
            [
                *(str(PEER_VENV / "bin" / "feast"), "--chdir", str(self.repo), "serve"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)),
                # Workers restart after --max-requests (1,000 by default): not mid-run.
                *("--no-access-log", "--max-requests", "1000000000"),
                *("--max-requests-jitter", "0", "--registry_ttl_sec", "3600"),
            ],
        )
        wait_until(self._healthy, 120, 0.2, "feast serve to answer /health", workers=[])
        # Last: the backlog is drained from here on (bench.peer_stack.drain times it).
        self.quix = self._start(
            "quix",
            [
                *(str(self.python), "-m", "bench.peer_feast", "stream", str(self.repo)),
                *(bootstrap, topic, "--commit-interval", str(commit_interval)),
            ],
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._follow, daemon=True).start()

    def _start(
        self, name: str, command: list[str], stdout: int | None = None
    ) -> subprocess.Popen[Any]:
        log = (self.tmp / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            text=stdout is not None,
        )
        self.processes.append(process)
        return process

    def _follow(self) -> None:
        """The Quix app's ``{"pushed": N}`` lines: actions whose features are in Redis."""
        assert self.quix.stdout is not None
        for line in self.quix.stdout:
            if line.startswith("{"):
                self.pushed = json.loads(line).get("pushed", self.pushed)

    def _healthy(self) -> bool:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited: see {self.tmp}/*.log")
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def side(self) -> Side:
        url = f"{self.url}/get-online-features"
        refs = [f"{FEATURE_VIEW}:{name}" for name in FEATURES]

        async def post(client: aiohttp.ClientSession, members: list[str]) -> tuple[int, bytes]:
            body = {"features": refs, "entities": {"member_id": members}}
            async with client.post(url, json=body) as response:
                return response.status, await response.read()

        async def fetch(client: aiohttp.ClientSession, member: str) -> tuple[int, bytes]:
            return await post(client, [member])

        async def read(client: aiohttp.ClientSession, member: str) -> Any:
            status, body = await fetch(client, member)
            return feast_rows(json.loads(body))[0] if status == 200 else None

        async def counts(members: list[str]) -> dict[str, dict[str, int]]:
            found: dict[str, dict[str, int]] = {}
            async with _client(4) as client:
                for at in range(0, len(members), 500):
                    chunk = members[at : at + 500]
                    status, body = await post(client, chunk)
                    assert status == 200, body[:500]
                    for member, row in zip(chunk, feast_rows(json.loads(body)), strict=True):
                        found[member] = {a: row.get(f"{a}_{CHECKED_WINDOW}") or 0 for a in ACTIONS}
            return found

        return Side(
            name="Quix → Feast → Redis",
            url=self.url,
            fetch=fetch,
            read=read,
            shows=lambda row, event: (row.get(f"{event.action}_1h") or 0) >= 1,
            counts=counts,
            processed=lambda: self.pushed,
            pids=lambda: process_tree(p.pid for p in self.processes if p.poll() is None),
            serving=self.workers,
            extra={"commit_interval_s": self.commit_interval, "feast_workers": self.workers},
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def feast_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``/get-online-features`` columns as one dict per entity (None where not found)."""
    names = body["metadata"]["feature_names"]
    columns = [result["values"] for result in body["results"]]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


# -- the workload -------------------------------------------------------------------------


def _client(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=READ_TIMEOUT),
    )


class Meter:
    """CPU seconds of a stack's processes between two points; its RSS."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.before = self._now()

    def _now(self) -> dict[int, float]:
        return {pid: s for pid in self.side.pids() if (s := cpu_seconds(pid)) is not None}

    def seconds(self) -> float:
        """CPU since this meter started; a process started since counts from its start."""
        after = self._now()
        return sum(s - self.before.get(pid, 0.0) for pid, s in after.items())


def rss(side: Side) -> dict[str, Any]:
    per = {pid: found for pid in side.pids() if (found := rss_mb(pid)) is not None}
    return {"total_mb": round(sum(per.values())), "processes": len(per)}


#: Seconds a read may take (the client's timeout), and a probe may wait for its action.
READ_TIMEOUT, PROBE_GIVE_UP = 5.0, 10.0


def _ms(samples: Samples, limit: float) -> dict[str, Any]:
    """Percentiles of the requests after the warm-up, a failed one counted as ``limit``:
    a stack that times out is not made to look fast by its few answers."""
    values = [lat for t, lat in samples.ok if t >= WARMUP] + [limit] * samples.failed
    found = percentiles(values)
    return {
        "failed": samples.failed,
        **{k: (v if k == "n" else round(v * 1000, 2)) for k, v in found.items()},
    }


def drain(side: Side, preloaded: int, timeout: float = 300.0) -> dict[str, Any]:
    """A backlog of ``preloaded`` actions made visible: from the first to the last."""
    meter = Meter(side)
    first: tuple[float, float] | None = None
    deadline = time.monotonic() + timeout
    while (done := side.processed()) < preloaded:
        if first is None and done > 0:
            first = (time.perf_counter(), done)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: {done} of {preloaded} actions after {timeout} s")
        time.sleep(0.05)
    if first is None:  # all of it applied before the first look: too small to time
        return {"actions": preloaded, "actions_per_s": None, "cpu_s": round(meter.seconds(), 2)}
    since, at_first = first
    seconds = max(time.perf_counter() - since, 1e-3)
    return {
        "actions": preloaded,
        "seconds": round(seconds, 2),
        "actions_per_s": round((preloaded - at_first) / seconds),
        "cpu_s": round(meter.seconds(), 2),
    }


#: Seconds a stack may take to catch up after a phase; past it the run goes on, the stack's
#: lag is reported, and the oracle check counts what it had not applied as lost.
CATCH_UP = 180.0


async def _caught_up(side: Side, expected: float) -> float | None:
    """Seconds until ``expected`` actions are visible; None if not within :data:`CATCH_UP`."""
    began = time.perf_counter()
    while (done := await asyncio.to_thread(side.processed)) < expected:
        if time.perf_counter() - began > CATCH_UP:
            print(f"{side.name}: {expected - done:,.0f} actions behind after {CATCH_UP:.0f} s")
            return None
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


async def _load(
    bootstrap: str, topic: str, rate: float, seconds: float, seed: int, oracle: Path
) -> LoadProcess:
    load = await LoadProcess.start(
        *(bootstrap, topic, rate, seconds),
        *("--members", str(MEMBERS), "--seed", str(seed), "--oracle", str(oracle)),
    )
    _NOT_A_STACK.add(load.process.pid)
    return load


async def ingest_alone(
    side: Side, bootstrap: str, topic: str, rate: float, seconds: float, base: float, oracle: Path
) -> dict[str, Any]:
    """Actions at ``rate`` and nothing else: CPU per 1,000 and catching up after the last."""
    meter = Meter(side)
    load = await _load(bootstrap, topic, rate, seconds, INGEST_SEED, oracle)
    sent = await load.result()
    behind = await _caught_up(side, base + sent["delivered"])
    cpu = meter.seconds()
    return {
        **sent,
        "caught_up_after_s": None if behind is None else round(behind, 2),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_1k": round(1000 * cpu / sent["delivered"], 3),
    }


async def reads_alone(side: Side, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop reads of random members and nothing else: latency, CPU per 1,000 reads."""
    rng = random.Random(9)
    sizes: list[int] = []
    statuses: Counter[int] = Counter()
    async with _client(64) as client:
        meter = Meter(side)

        async def one(_: int) -> bool:
            status, body = await side.fetch(client, f"member-{rng.randrange(MEMBERS)}")
            sizes.append(len(body))
            statuses[status] += 1
            return status == 200

        samples = await paced(one, rate, WARMUP + seconds, time.perf_counter())
        cpu = meter.seconds()
    requests = len(samples.ok) + samples.failed
    return {
        "rate": rate,
        **_ms(samples, READ_TIMEOUT),
        "statuses": dict(statuses),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_1k": round(1000 * cpu / requests, 3),
        "payload_bytes_median": sorted(sizes)[len(sizes) // 2],
    }


async def mixed(
    side: Side,
    bootstrap: str,
    topic: str,
    rate: float,
    read_rate: float,
    seconds: float,
    base: float,
    oracle: Path,
) -> dict[str, Any]:
    """Actions, reads and freshness probes at once; the probes' members are new each."""
    load = await _load(bootstrap, topic, rate - PROBES_PER_S, WARMUP + seconds, MIXED_SEED, oracle)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    rng = random.Random(10)
    probed: list[str] = []
    statuses: Counter[int] = Counter()  # the rest timed out
    try:
        async with _client(256) as client:

            async def read(_: int) -> bool:
                status, _body = await side.fetch(client, f"member-{rng.randrange(MEMBERS)}")
                statuses[status] += 1
                return status == 200

            async def probe(n: int) -> bool:
                member = f"probe-{n}"
                took = await probe_freshness(
                    producer,
                    client,
                    side.url,
                    topic,
                    member,
                    PROBE_GIVE_UP,
                    read=side.read,
                    shows=side.shows,
                )
                probed.append(member)
                return took is not None

            start = time.perf_counter()
            reads, fresh = await asyncio.gather(
                paced(read, read_rate, WARMUP + seconds, start),
                paced(probe, PROBES_PER_S, WARMUP + seconds, start),
            )
    finally:
        await producer.stop()
    sent = await load.result()
    behind = await _caught_up(side, base + sent["delivered"] + len(probed))
    return {
        "load": sent,
        "caught_up_after_s": None if behind is None else round(behind, 2),
        "achieved_rate": round(sent["achieved_rate"] + PROBES_PER_S),
        "reads": {**_ms(reads, READ_TIMEOUT), "statuses": dict(statuses)},
        "freshness": _ms(fresh, PROBE_GIVE_UP),
        "probes": probed,
    }


def _expected(preloaded: int, oracles: list[Path], probes: list[str]) -> dict[str, Counter[str]]:
    expected: dict[str, Counter[str]] = {}
    for event in generate_actions(preloaded, members=MEMBERS, items=50_000, seed=PRELOAD_SEED):
        expected.setdefault(event.member_id, Counter())[event.action] += 1
    for path in oracles:
        for member, counts in json.loads(path.read_text()).items():
            expected.setdefault(member, Counter()).update(counts)
    for member in probes:
        expected.setdefault(member, Counter())["click"] += 1
    return expected


def workload(side: Side, stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """Phases 1-5 of the module's docstring on one stack."""
    bootstrap, topic = stack.broker.bootstrap, stack.topic
    tmp = Path(tempfile.mkdtemp(prefix="nearline-peer-oracle-"))
    oracles = [tmp / "ingest.json", tmp / "mixed.json"]
    print(f"{side.name}: draining {args.preload:,} pre-loaded actions", flush=True)
    backlog = drain(side, args.preload)
    print(f"{side.name}: {backlog}", flush=True)
    ingest = asyncio.run(
        ingest_alone(side, bootstrap, topic, args.rate, args.seconds, args.preload, oracles[0])
    )
    print(f"{side.name}: actions alone {ingest}", flush=True)
    reads = asyncio.run(reads_alone(side, args.read_rate, args.seconds))
    print(f"{side.name}: reads alone {reads}", flush=True)
    base = args.preload + ingest["delivered"]
    both = asyncio.run(
        mixed(side, bootstrap, topic, args.rate, args.read_rate, args.seconds, base, oracles[1])
    )
    probes = both.pop("probes")
    print(f"{side.name}: all at once {both}", flush=True)
    expected = _expected(args.preload, oracles, probes)
    served = asyncio.run(side.counts(sorted(expected)))
    state = tally(expected, served)
    print(f"{side.name}: vs the oracle {state}", flush=True)
    return {
        "stack": side.name,
        "processes": len(side.pids()),
        "backlog": backlog,
        "ingest": ingest,
        "reads": reads,
        "mixed": both,
        "state": {**state, "actions": sum(sum(c.values()) for c in expected.values())},
        "rss": rss(side),
        **side.extra,
    }


def run_nearline(args: argparse.Namespace) -> dict[str, Any]:
    with EmbeddedBroker() as broker:
        stack = Stack.isolated(broker)
        try:
            preload_actions(stack, args.preload, MEMBERS)
            # Not waiting for /readyz: the backlog is drained from the process's start.
            stack.start_worker("peer-bench", wait=False)
            return workload(nearline_side(stack), stack, args)
        finally:
            stack.stop()


def run_peer(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    with EmbeddedBroker() as broker:
        stack = Stack.isolated(broker)  # its topic names and partitions; no nearline worker
        preload_actions(stack, args.preload, MEMBERS)
        peer = PeerStack(broker.bootstrap, stack.topic, workers, args.commit_interval)
        try:
            return workload(peer.side(), stack, args)
        finally:
            peer.stop()


def compare_stacks(args: argparse.Namespace) -> dict[str, Any]:
    """Both stacks on the same workload, nearline first; the ratios peer / nearline."""
    ours = run_nearline(args)
    theirs = run_peer(args, args.feast_workers or ours["processes"])

    def ratio(path: tuple[str, ...]) -> float:
        a: Any = ours
        b: Any = theirs
        for key in path:
            a, b = a[key], b[key]
        return round(b / a, 2) if a > 0 else float("nan")

    return {
        "nearline": ours,
        "peer": theirs,
        "ratios": {
            "freshness_p99": ratio(("mixed", "freshness", "p99")),
            "read_p99": ratio(("mixed", "reads", "p99")),
            "cpu_per_action": ratio(("ingest", "cpu_s_per_1k")),
            "cpu_per_read": ratio(("reads", "cpu_s_per_1k")),
        },
        "machine": machine(),
    }


def _rate(value: int | None) -> str:
    return "drained before the first look (raise --preload)" if value is None else f"{value:,}/s"


def _seconds(value: float | None) -> str:
    return f"not within {CATCH_UP:.0f} s" if value is None else f"{value} s"


def table(
    result: dict[str, Any], command: str
) -> list[tuple[str, str, str, str, Any, bool | None]]:
    """(figure, value, target, how, detail, met) rows for bench/results/latest.md."""
    ours, theirs, ratios = result["nearline"], result["peer"], result["ratios"]
    vs = f"vs {PEER_NAME}"

    def both(pick: Callable[[dict[str, Any]], str]) -> str:
        return f"nearline {pick(ours)}; peer {pick(theirs)}"

    def latency(stats: dict[str, Any]) -> str:
        shed = stats.get("statuses", {}).get(503, 0)
        failed = f", {stats['failed']:,} failed" if stats["failed"] else ""
        failed += f" ({shed:,} shed with 503)" if shed else ""
        return f"p50 {stats['p50']} / p99 {stats['p99']} ms{failed}"

    def ratio(name: str, limit: float | None = None) -> str:
        found = f" → peer/nearline **{ratios[name]}x**"
        key = {"freshness_p99": "freshness", "read_p99": "reads"}.get(name)
        if limit is not None and key is not None:
            if any(s["mixed"][key]["p99"] >= 1000 * limit for s in (ours, theirs)):
                found += f" (a p99 at the {limit:g} s limit: the ratio is a bound)"
        return found

    def ahead(name: str) -> bool:
        return bool(ratios[name] > 1)

    fresh_rate = min(s["mixed"]["achieved_rate"] for s in (ours, theirs))
    return [
        (
            f"{vs}: freshness, actions at {fresh_rate:,}/s + reads",
            both(lambda s: latency(s["mixed"]["freshness"]))
            + ratio("freshness_p99", PROBE_GIVE_UP),
            "nearline ahead on p99",
            command,
            {"nearline": ours["mixed"], "peer": theirs["mixed"]},
            ahead("freshness_p99"),
        ),
        (
            f"{vs}: features read at {ours['reads']['rate']:.0f}/s among the actions",
            both(lambda s: latency(s["mixed"]["reads"])) + ratio("read_p99", READ_TIMEOUT),
            "nearline ahead on p99",
            command,
            {},
            ahead("read_p99"),
        ),
        (
            f"{vs}: features read at {ours['reads']['rate']:.0f}/s alone; payload",
            both(lambda s: f"{latency(s['reads'])}, {s['reads']['payload_bytes_median']:,} B"),
            "—",
            command,
            {"nearline": ours["reads"], "peer": theirs["reads"]},
            None,
        ),
        (
            f"{vs}: CPU s per 1,000 actions (actions alone)",
            both(lambda s: f"{s['ingest']['cpu_s_per_1k']}") + ratio("cpu_per_action"),
            "nearline ahead",
            command,
            {"nearline": ours["ingest"], "peer": theirs["ingest"]},
            ahead("cpu_per_action"),
        ),
        (
            f"{vs}: CPU s per 1,000 reads (reads alone)",
            both(lambda s: f"{s['reads']['cpu_s_per_1k']}") + ratio("cpu_per_read"),
            "nearline ahead",
            command,
            {},
            ahead("cpu_per_read"),
        ),
        (
            f"{vs}: highest action rate kept up with (a backlog drained)",
            both(lambda s: _rate(s["backlog"]["actions_per_s"]))
            + f"; after {ours['ingest']['achieved_rate']:,}/s for {ours['ingest']['seconds']} s "
            + "caught up "
            + both(lambda s: _seconds(s["ingest"]["caught_up_after_s"]))
            + " after the last send",
            "—",
            command,
            {"nearline": ours["backlog"], "peer": theirs["backlog"]},
            None,
        ),
        (
            f"{vs}: RSS of all the stack's processes (broker excluded)",
            both(lambda s: f"{s['rss']['total_mb']} MB in {s['rss']['processes']}"),
            "—",
            command,
            {"nearline": ours["rss"], "peer": theirs["rss"]},
            None,
        ),
        (
            f"{vs}: actions lost / counted twice",
            both(
                lambda s: (
                    f"{s['state']['lost']} / {s['state']['counted_twice']} of "
                    f"{s['state']['actions']:,}"
                )
            ),
            "0 / 0 on both",
            "every member's 96h counts vs the actions the broker acknowledged",
            {"nearline": ours["state"], "peer": theirs["state"]},
            all(s["state"]["lost"] == s["state"]["counted_twice"] == 0 for s in (ours, theirs)),
        ),
    ]


def command_line(args: argparse.Namespace) -> str:
    return (
        f"python -m bench.peer_stack --seconds {args.seconds:g} --preload {args.preload} "
        f"--rate {args.rate:g} --read-rate {args.read_rate:g} "
        f"--commit-interval {args.commit_interval:g}"
    )


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    found.add_argument("--seconds", type=float, default=5.0, help="each timed phase")
    found.add_argument("--preload", type=int, default=50_000, help="actions in the backlog")
    found.add_argument("--rate", type=float, default=5000.0, help="actions per second")
    found.add_argument("--read-rate", type=float, default=500.0, help="reads per second")
    found.add_argument(
        "--commit-interval",
        type=float,
        default=0.1,
        help="the Quix app's checkpoint (and push to Feast) every this many seconds",
    )
    found.add_argument(
        "--feast-workers",
        type=int,
        default=0,
        help="feast serve --workers (0: as many as nearline's processes)",
    )
    found.add_argument(
        "--only", choices=["nearline", "peer"], help="run one stack (its figures, no ratios)"
    )
    return found


def main() -> None:
    args = parser().parse_args()
    if args.only == "nearline":
        print(json.dumps(run_nearline(args), indent=2))
        return
    if args.only == "peer":
        print(json.dumps(run_peer(args, args.feast_workers or 1), indent=2))
        return
    result = compare_stacks(args)
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "peer_stack.json").write_text(
        json.dumps(result, indent=2, default=str)
    )
    print(f"\n{machine()}; {command_line(args)}")
    for figure, value, target, _how, _detail, met in table(result, command_line(args)):
        verdict = "" if met is None else (" (met)" if met else " (NOT met)")
        print(f"{figure}: {value}  [target {target}{verdict}]")


if __name__ == "__main__":
    main()
