"""Serving CPU per request: features reads and recommendations of 500 candidates, in process.

Run: ``python -m bench.serving_cpu [--requests 300] [--repeats 3] [--rate 100]``.

The bench process serves the real web app (``create_web_app``) under the real uvicorn
server the worker runs (``nearline.app.web_server.WebServer``: httptools, uvloop), over a socket on
loopback. Behind it: the online store on RocksDB (one rocksdict database per partition,
filled with :class:`MemberState` values written straight into it; the table is a read-only
:class:`ChangelogTable` without Faust), the embedded attribute store with ``--items`` items
(64-dim embeddings, geo, category, company) behind the attribute cache, and the heuristic
ranker from :class:`ModelRegistry`. The recommendations log is a sink that encodes each
record (``codec.dumps``, as the Kafka sink does before producing) and drops it: producing
is not measured here.

A client in another process (aiohttp, as the other benches use) warms up, then sends
``--requests`` requests open-loop at ``--rate`` per second; the bench reads its own CPU
time (``time.process_time``, every thread of this process) around them, subtracts what the
idle server uses over as long (uvicorn's tick, RocksDB's threads), and divides. So a
figure is the server's CPU per request with HTTP parsing, routing, middleware and JSON
encoding included. Medians over ``--repeats`` runs; latencies are the client's, from when
each request was due.
"""

from __future__ import annotations

import os

# As the worker runs (app/cli.py): one OpenBLAS thread, set before numpy loads. A second
# one spins beside the event loop and would be counted in this process's CPU time.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import gc
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import rocksdict
import uvloop
from starlette.types import Message

from bench.harness import Samples, machine, paced, percentiles
from bench.joins import _items
from nearline.agents.erasures import Erasure
from nearline.app.compose import cached_attributes, model_registry, state_policy
from nearline.app.console.timeline import IngestTimeline
from nearline.app.lag import PartitionLag
from nearline.app.recommend import Recommender
from nearline.app.web import WebServices
from nearline.app.web_app import create_web_app
from nearline.app.web_server import WebServer
from nearline.attribute_store import (
    EmbeddedAttributeStore,
    ItemAttributes,
    StoreHealth,
    ingest_fields,
    split_fields,
    validate_item,
)
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.metrics import Metrics
from nearline.foundation.settings import Settings, load_settings
from nearline.tables.changelog import ChangelogTable, write_batch
from nearline.tables.features import FeatureReader
from nearline.tables.member_state import MemberState, RecentAction
from nearline.tables.online_store import OnlineStore

#: Kept actions of the two kinds of member read: a light history and a full one (the
#: default NEARLINE_MAX_RECENT_ACTIONS is 100).
HISTORIES = (20, 100)
_KINDS = ("view", "view", "view", "view", "click", "click", "save", "apply", "dismiss")


class ReadOnlyTable(ChangelogTable):
    """The member table's reads over local rocksdict partitions: no Faust, no changelog.

    Only what :class:`OnlineStore` reads uses: ``get`` and ``scan`` (ChangelogTable's own,
    through :meth:`db`) and ownership, every partition being owned here.
    """

    def __init__(self, path: Path, partitions: int) -> None:
        self.write_lock = asyncio.Lock()
        self._dbs = {
            p: rocksdict.Rdict(str(path / f"p{p}"), options=rocksdict.Options(raw_mode=True))
            for p in range(partitions)
        }

    @property
    def changelog_topic(self) -> str:
        return "bench-members-changelog"

    def db(self, partition: int) -> rocksdict.Rdict:
        return self._dbs[partition]

    def owns(self, partition: int) -> bool:
        return partition in self._dbs

    def owned_partitions(self) -> list[int]:
        return sorted(self._dbs)

    def owner_url(self, partition: int) -> str | None:
        return None

    def restoring(self) -> bool:
        return False

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()


class Status:
    """A ready worker that owns every partition and has no lag (the probes are not measured)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.attribute_health = StoreHealth(ok=True, backend="embedded", detail="")

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"

    def liveness(self) -> tuple[bool, str]:
        return True, "ok"

    def consumer_lag(self) -> list[PartitionLag]:
        return []

    def ingest_behind(self) -> bool:
        return False

    def owned_partitions(self) -> list[int]:
        return list(range(self.partitions))

    def owner_url(self, partition: int) -> str | None:
        return None


class EncodingLog:
    """The recommendations log minus the producer: each record is encoded, then dropped."""

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0

    async def log(self, member_id: str, record: dict[str, Any]) -> None:
        self.bytes += len(codec.dumps(record))
        self.records += 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def member_id(history: int, n: int) -> str:
    return f"m{history}-{n}"


def fill_members(
    path: Path,
    settings: Settings,
    items: dict[str, ItemAttributes],
    members: int,
    now: float,
) -> None:
    """``members`` members of each history length, written into one RocksDB per partition.

    Actions are spread over the last two days, on random items, with the ingest-time
    fields (category, company, geo) joined as the worker's ingest would.
    """
    policy = state_policy(settings)
    joined = ingest_fields(items, split_fields(settings.join_at_ingest, []).ingest)
    ids = list(items)
    rng = random.Random(5)
    dbs = {
        p: rocksdict.Rdict(str(path / f"p{p}"), options=rocksdict.Options(raw_mode=True))
        for p in range(settings.topic_partitions)
    }
    try:
        for history in HISTORIES:
            for n in range(members):
                key = member_id(history, n).encode()
                state = MemberState()
                for offset in range(history):
                    item = rng.choice(ids)
                    action = RecentAction(
                        event_id=f"{key.decode()}-{offset}",
                        item_id=item,
                        action=rng.choice(_KINDS),
                        ts=round(now - rng.random() * 2 * 86400, 3),
                        attributes=dict(joined[item]),
                        joined=True,
                    )
                    state.apply(action, offset=offset, applied_at=now, policy=policy)
                    if offset % 5 == 4 or offset == history - 1:
                        # Written a few actions at a time, as ingest batches write them.
                        write_batch(
                            dbs[partition_for_key(key, settings.topic_partitions)],
                            state.records(key, policy),
                        )
        for db in dbs.values():  # no flush or compaction left to run while measuring
            db.flush()
            db.compact_range(None, None)
    finally:
        for db in dbs.values():
            db.close()


async def load_items(store: EmbeddedAttributeStore, count: int, dim: int) -> dict[str, Any]:
    records = [validate_item(codec.loads(raw), dim) for _, raw in _items(count, dim)]
    for start in range(0, len(records), 1000):
        await store.put_many(records[start : start + 1000])
    return {record.item_id: record for record in records}


# -- the client, in a process of its own ---------------------------------------------------


def requests_of(job: dict[str, Any]) -> list[tuple[str, bytes | None]]:
    """The paths (and bodies, for a POST) of a job's warm-up and measured requests."""
    rng = random.Random(job["seed"])
    requests: list[tuple[str, bytes | None]] = []
    for _ in range(job["warmup"] + job["requests"]):
        member = member_id(rng.choice(job["histories"]), rng.randrange(job["members"]))
        if job["kind"] == "features":
            requests.append((f"/v1/members/{member}/features", None))
        else:
            candidates = [f"item-{i}" for i in rng.sample(range(job["items"]), 500)]
            body = {"member_id": member, "candidates": candidates, "k": job["k"]}
            requests.append(("/v1/recommendations", codec.dumps(body)))
    return requests


async def _send_all(
    session: aiohttp.ClientSession, requests: list[tuple[str, bytes | None]], rate: float
) -> Samples:
    """``requests`` (a GET of the URL, or a POST of the body) open-loop at ``rate``."""

    async def send(n: int) -> bool:
        target, body = requests[n]
        call = session.get(target) if body is None else session.post(target, data=body)
        async with call as response:
            content = await response.read()
        if response.status != 200:  # shown: a bench that fails should say why
            print(response.status, content[:300], file=sys.stderr)
        return response.status == 200

    return await paced(send, rate, len(requests) / rate, time.perf_counter())


async def client(url: str) -> None:
    """Answers the server's jobs on stdin, one JSON line each, with one JSON line on stdout.

    A job: warm up, say ``ready``, wait for ``go``, send the measured requests open-loop,
    then print their latencies' percentiles.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64),
        timeout=aiohttp.ClientTimeout(total=10),
        headers={"content-type": "application/json"},
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def line() -> dict[str, Any]:
        return json.loads(await reader.readline())  # type: ignore[no-any-return]

    def say(body: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(body) + "\n")
        sys.stdout.flush()

    try:
        while True:
            job = await line()
            if job["kind"] == "stop":
                return
            requests = [(url + path, body) for path, body in requests_of(job)]
            warm = job["warmup"]
            warmed = await _send_all(session, requests[:warm], job["rate"])
            say({"ready": True})
            await line()  # go
            samples = await _send_all(session, requests[warm:], job["rate"])
            stats = percentiles([latency for _, latency in samples.ok])
            say(
                {
                    "n": stats["n"],
                    "failed": warmed.failed + samples.failed,
                    "p50_ms": round(stats["p50"] * 1000, 2),
                    "p99_ms": round(stats["p99"] * 1000, 2),
                }
            )
    finally:
        await session.close()


# -- the server, in this process -----------------------------------------------------------


class NoErasures:
    """The benchmark measures reads: an erasure request is refused (a 503)."""

    async def request(self, member_id: str, requested_by: str) -> Erasure:
        raise RuntimeError("this benchmark records no erasures")


class Bench:
    """The server side: the web app over a real store, and the client process it drives."""

    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.data_dir = data_dir
        # No shedding: on shared cores a stall from another process would otherwise turn
        # requests into 503s, whose CPU is not a served request's.
        self.settings = load_settings(
            data_dir=str(data_dir), embedding_dim=64, max_in_flight=10_000
        )
        self.port = 0

    async def start(self) -> None:
        args, settings = self.args, self.settings
        self.attributes_store = EmbeddedAttributeStore.in_data_dir(self.data_dir)
        items = await load_items(self.attributes_store, args.items, settings.embedding_dim)
        self.attributes_store.compact()
        members_dir = self.data_dir / "members"
        members_dir.mkdir()
        fill_members(members_dir, settings, items, args.members, time.time())
        self.table = ReadOnlyTable(members_dir, settings.topic_partitions)
        store = OnlineStore(self.table, state_policy(settings), settings.topic_partitions)
        cached = cached_attributes(self.attributes_store, settings)
        models = model_registry(settings)  # no model dir: the heuristic
        self.log = EncodingLog()
        self.http = httpx.AsyncClient()
        web = create_web_app(
            WebServices(
                features=FeatureReader(
                    store,
                    cached,
                    split_fields(settings.join_at_ingest, settings.join_at_read),
                    timeout=settings.forward_timeout,
                ),
                status=Status(settings.topic_partitions),
                recommender=Recommender(
                    models, cached, self.log, log_candidates=settings.log_candidates
                ),
                settings=settings,
                metrics=Metrics(),
                timeline=IngestTimeline(),
                models=models,
                attributes=cached,
                http=self.http,
                erasures=NoErasures(),
            )
        )
        self.web = web
        self.port = args.port or free_port()
        self.server = WebServer(web, "127.0.0.1", self.port)
        await self.server.start()
        self.client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.serving_cpu",
            "--client-of",
            f"http://127.0.0.1:{self.port}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        # Objects from start-up out of the cyclic GC, and its thresholds, as the worker runs.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 20, 100)

    async def stop(self) -> None:
        if self.client.returncode is None:
            await self._tell({"kind": "stop"})
            await self.client.wait()
        await self.server.stop()
        await self.http.aclose()
        await self.attributes_store.close()
        self.table.close()

    async def _tell(self, body: dict[str, Any]) -> None:
        assert self.client.stdin is not None
        self.client.stdin.write((json.dumps(body) + "\n").encode())
        await self.client.stdin.drain()

    async def _hear(self) -> dict[str, Any]:
        assert self.client.stdout is not None
        raw = await self.client.stdout.readline()
        if not raw:
            raise RuntimeError("the client process exited; see its stderr above")
        return json.loads(raw)  # type: ignore[no-any-return]

    async def idle_cpu_per_s(self, seconds: float = 0.5, windows: int = 4) -> float:
        """CPU seconds per second the server uses with nothing to serve: the least of a
        few windows, as a background flush in one would not happen in every run."""
        rates = []
        for _ in range(windows):
            started_cpu, started = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            rates.append((time.process_time() - started_cpu) / (time.perf_counter() - started))
        return min(rates)

    def job(self, kind: str, histories: tuple[int, ...], seed: int) -> dict[str, Any]:
        args = self.args
        return {
            "kind": kind,
            "histories": list(histories),
            "members": args.members,
            "items": args.items,
            "k": 20,
            "rate": args.rate,
            "warmup": args.warmup,
            "requests": args.requests,
            "seed": seed,
        }

    async def run_in_process(self, kind: str, histories: tuple[int, ...], seed: int) -> float:
        """CPU ms per request of the web app called as ASGI in this process: the same
        requests, routing, middleware, handlers and JSON, without the socket and uvicorn's
        parsing. Far less disturbed by other processes than the run over HTTP."""
        job = self.job(kind, histories, seed + 1000)
        requests = requests_of(job)
        for path, body in requests[: job["warmup"]]:
            await self._call(path, body)
        started = time.process_time()
        for path, body in requests[job["warmup"] :]:
            await self._call(path, body)
        return 1000 * (time.process_time() - started) / job["requests"]

    async def _call(self, path: str, body: bytes | None) -> None:
        headers = [(b"host", b"127.0.0.1")]
        if body is not None:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET" if body is None else "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", self.port),
            "state": {},
        }
        sent = False
        status = 0

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # no more body; as a connection that stays open
            sent = True
            return {"type": "http.request", "body": body or b"", "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.web(scope, receive, send)
        if status != 200:
            raise RuntimeError(f"{path} answered {status} in process")

    async def run(self, kind: str, histories: tuple[int, ...], seed: int) -> Any:
        """One measured run: server CPU ms per request, and the client's latencies."""
        await self._tell(self.job(kind, histories, seed))
        await self._hear()  # warmed up
        idle = await self.idle_cpu_per_s()
        started_cpu, started = time.process_time(), time.perf_counter()
        await self._tell({"go": True})
        result = await self._hear()
        cpu = time.process_time() - started_cpu - idle * (time.perf_counter() - started)
        if result["failed"]:
            raise RuntimeError(f"{result['failed']} {kind} requests failed")
        return {"cpu_ms": 1000 * cpu / result["n"], "idle_cpu_per_s": idle, **result}


#: (figure, request kind, kept actions of the members asked for, target ms of CPU).
FIGURES = {
    "features20": ("features read, ~20 kept actions", "features", (20,), 0.2),
    "features100": ("features read, ~100 kept actions", "features", (100,), 0.2),
    "recommend": ("recommendation, 500 candidates", "recommend", HISTORIES, 0.6),
}


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="nearline-serving-cpu-") as data_dir:
        bench = Bench(args, Path(data_dir))
        await bench.start()
        try:
            chosen = [FIGURES[key] for key in args.figures]
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in chosen}
            for repeat in range(args.repeats):
                for name, kind, histories, _ in chosen:
                    runs[name].append(await bench.run(kind, histories, repeat))
                    in_process = await bench.run_in_process(kind, histories, repeat)
                    runs[name][-1]["in_process_ms"] = in_process
        finally:
            await bench.stop()
    rows = []
    for name, _, _, target in chosen:
        done = runs[name]
        cpu = statistics.median(r["cpu_ms"] for r in done)
        rows.append(
            {
                "figure": name,
                "cpu_ms": round(cpu, 3),
                "target_ms": target,
                "met": cpu <= target,
                "p50_ms": statistics.median(r["p50_ms"] for r in done),
                "p99_ms": statistics.median(r["p99_ms"] for r in done),
                "runs_cpu_ms": [round(r["cpu_ms"], 3) for r in done],
                "in_process_ms": round(statistics.median(r["in_process_ms"] for r in done), 3),
                "runs_in_process_ms": [round(r["in_process_ms"], 3) for r in done],
                "idle_ms_per_s": round(
                    1000 * statistics.median(r["idle_cpu_per_s"] for r in done), 2
                ),
            }
        )
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per run")
    parser.add_argument("--warmup", type=int, default=200, help="requests before each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--members", type=int, default=2000, help="members per history length")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument(
        "--figures", nargs="+", choices=list(FIGURES), default=list(FIGURES), help="what to run"
    )
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument("--client-of", help=argparse.SUPPRESS)  # the client process
    return parser


def serving_cpu(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """The figures, as ``python -m bench.serving_cpu`` with ``argv`` measures them."""
    args = _parser().parse_args(argv or [])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as the worker runs
        return runner.run(measure(args))


HOW = (
    "python -m bench.serving_cpu: the web app under uvicorn (httptools, uvloop) in the bench "
    "process, over loopback; RocksDB online store (2,000 members with 20 and 2,000 with 100 "
    "kept actions), embedded attribute store (5,000 items, 64-dim embeddings joined at read), "
    "heuristic ranker, recommendations log encoded and dropped; an aiohttp client in another "
    "process, 300 requests per run at 100/s after 200 to warm up; server CPU time net of its "
    "idle CPU, median of 3 runs"
)


def main() -> None:
    args = _parser().parse_args()
    if args.client_of:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(client(args.client_of))
        return
    rows = serving_cpu(sys.argv[1:])
    print(f"machine: {machine()}")
    print(
        f"{args.members:,} members per history length, {args.items:,} items, "
        f"{args.requests} requests per run at {args.rate:.0f}/s after {args.warmup} to warm "
        f"up, median of {args.repeats} runs; server CPU net of its idle CPU (measured "
        "before each run)"
    )
    print(
        "| figure | CPU per request | target | | p50 | p99 | runs | idle CPU "
        "| in process, no socket | runs |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | --- |")
    for r in rows:
        print(
            f"| {r['figure']} | {r['cpu_ms']:.3f} ms | ≤ {r['target_ms']} ms "
            f"| {'met' if r['met'] else 'not met'} | {r['p50_ms']} ms | {r['p99_ms']} ms "
            f"| {r['runs_cpu_ms']} | {r['idle_ms_per_s']} ms/s | {r['in_process_ms']:.3f} ms "
            f"| {r['runs_in_process_ms']} |"
        )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
