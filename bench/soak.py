"""The mixed-load soak: everything at once on one worker, with a crash and a rebalance midway.

Run: ``python -m bench.soak [--seconds 60]``. One worker serves, as in production, all of:
actions at 5k/s from a process of its own (confluent_kafka), recommendations (500
candidates) at 300 req/s, features reads at 500 req/s, freshness probes, and an outcome
horizon short enough that labelling runs throughout. At 40 % of the run the worker is
SIGKILLed and restarted on its port and data dir; at 60 % a second worker joins, and at 80 %
it leaves. Latencies are reported over the whole soak, and apart for the requests outside
the chaos windows (from each event until the workers are ready again with no lag).
Afterwards every member's counts are compared with what the broker acknowledged (actions
lost, counted twice), and every logged response with the example sets written for it.
Writes bench/results/soak.json and soak.png (lag and RSS over time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvloop
from aiokafka import AIOKafkaProducer

from agents.events import ActionEvent
from app import codec
from app.broker import EmbeddedBroker
from app.settings import format_duration
from app.stack import consume_topic, read_metric
from bench.harness import (
    REPO,
    Samples,
    Stack,
    WorkerProcess,
    cpu_seconds,
    machine,
    paced,
    probe_freshness,
)
from bench.load import LoadProcess
from bench.recommendations import recommendation_stack, start_worker

RESULTS = REPO / "bench" / "results"
ITEMS, MEMBERS, PRELOADED = 5000, 10_000, 20_000
PROBES_PER_S = 20.0


class Soak:
    def __init__(
        self,
        stack: Stack,
        worker: WorkerProcess,
        seconds: float,
        rate: float,
        chaos: bool = True,
        recs_rate: float = 300.0,
        reads_rate: float = 500.0,
    ) -> None:
        self.stack = stack
        self.recs_rate = recs_rate
        self.reads_rate = reads_rate
        self.with_chaos = chaos
        self.workers = [worker]
        self.url = worker.url
        self.seconds = seconds
        self.rate = rate
        self.timeline: list[dict[str, Any]] = []
        self.load: LoadProcess | None = None
        self._cpu_before: dict[str, tuple[float, float] | None] = {}
        self.events: list[tuple[float, str]] = []
        self.windows: list[tuple[float, float]] = []  # chaos: event until ready without lag
        self.probe_events: list[tuple[str, str]] = []  # (member, action) acknowledged
        self.start = 0.0

    # -- load --------------------------------------------------------------------------

    async def recommendations(self, client: aiohttp.ClientSession, rate: float) -> Samples:
        rng = random.Random(4)
        url = f"{self.url}/v1/recommendations"

        def body() -> bytes:
            candidates = [f"item-{i}" for i in rng.sample(range(ITEMS), 500)]
            member = f"member-{rng.randrange(MEMBERS)}"
            return codec.dumps({"member_id": member, "candidates": candidates, "k": 20})

        bodies = [body() for _ in range(int(rate * self.seconds))]

        async def one(n: int) -> bool:
            async with client.post(url, data=bodies[n]) as response:
                await response.read()
                return response.status == 200

        return await paced(one, rate, self.seconds, self.start)

    async def reads(self, client: aiohttp.ClientSession, rate: float) -> Samples:
        rng = random.Random(9)

        async def one(_: int) -> bool:
            member = f"member-{rng.randrange(MEMBERS)}"
            async with client.get(f"{self.url}/v1/members/{member}/features") as response:
                await response.read()
                return response.status == 200

        return await paced(one, rate, self.seconds, self.start)

    async def freshness(self, client: aiohttp.ClientSession) -> Samples:
        """Produce → visible over HTTP, for probe actions among the load."""
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.broker.bootstrap, linger_ms=1)
        await producer.start()
        rng = random.Random(5)
        topic = self.stack.topic

        async def one(_: int) -> bool:
            member = f"probe-{rng.randrange(1000)}"
            took = await probe_freshness(producer, client, self.url, topic, member)
            self.probe_events.append((member, "click"))
            return took is not None

        try:
            return await paced(one, PROBES_PER_S, self.seconds, self.start)
        finally:
            await producer.stop()

    # -- chaos and sampling ------------------------------------------------------------

    async def chaos(self) -> None:
        if not self.with_chaos:
            return
        first = self.workers[0]
        port = int(first.url.rsplit(":", 1)[1])
        await self._at(0.4)
        began = self._event("SIGKILL + restart")
        first.kill()
        restarted = await asyncio.to_thread(
            self.stack.start_worker, "w1", 120.0, wait=False, port=port
        )
        self.workers[0] = restarted
        await self._settled(began)
        await self._at(0.6)
        began = self._event("worker 2 joins")
        second = await asyncio.to_thread(self.stack.start_worker, "w2", 120.0, wait=False)
        self.workers.append(second)
        await self._settled(began)
        await self._at(0.8)
        began = self._event("worker 2 leaves")
        await asyncio.to_thread(second.stop)
        await self._settled(began)

    def _event(self, what: str) -> float:
        now = time.perf_counter() - self.start
        self.events.append((now, what))
        return now

    async def _settled(self, began: float) -> None:
        """Wait until every live worker is ready with no lag; the chaos window ends there."""
        while time.perf_counter() - self.start < self.seconds:
            if await asyncio.to_thread(self._all_ready):
                break
            await asyncio.sleep(0.2)
        self.windows.append((began, time.perf_counter() - self.start))

    def _all_ready(self) -> bool:
        for worker in self.workers:
            if worker.exited:
                continue
            try:
                ready = httpx.get(f"{worker.url}/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            # Ready, and its lag measured since it took its partitions: an empty lag list
            # (no refresh yet) is not "no lag".
            lag = ready.json()["lag"] if ready.status_code == 200 else []
            if not lag or any(p["lag"] > 0 for p in lag):
                return False
        return True

    async def _at(self, share: float) -> None:
        await asyncio.sleep(max(0.0, self.start + share * self.seconds - time.perf_counter()))

    def _processes(self) -> dict[str, int | None]:
        """Who shares the two cores: the workers, the broker, the actions producer, and this
        process (the HTTP load and the probes)."""
        found: dict[str, int | None] = {
            f"w{n}": None if w.exited else w.pid for n, w in enumerate(self.workers, 1)
        }
        load = self.load
        found |= {
            "broker": self.stack.broker.pid,
            "producer": load.process.pid if load is not None else None,
            "driver": os.getpid(),
        }
        return found

    def _cpu_shares(self) -> dict[str, float]:
        """Per process, the share of one core used since the last call (100 = a whole core)."""
        now = time.perf_counter()
        shares: dict[str, float] = {}
        for name, pid in self._processes().items():
            seconds = cpu_seconds(pid) if pid is not None else None
            before = self._cpu_before.get(name)
            if seconds is not None and before is not None and before[1] <= seconds:
                shares[f"cpu_{name}"] = round(100 * (seconds - before[1]) / (now - before[0]), 1)
            self._cpu_before[name] = (now, seconds) if seconds is not None else None
        return shares

    async def sample(self, until: float) -> None:
        while time.perf_counter() < until:
            row: dict[str, Any] = {"t": round(time.perf_counter() - self.start, 2)}
            row |= self._cpu_shares()
            for n, worker in enumerate(self.workers, 1):
                if worker.exited:
                    continue
                try:
                    metrics = await asyncio.to_thread(_metrics, worker.url)
                except Exception:
                    continue
                try:
                    rss = round(worker.rss_mb())
                except OSError:  # it exited (the chaos) between the two reads
                    continue
                if metrics["lag"] is None:
                    continue  # starting, rebalancing: no partition to report yet
                row[f"w{n}_lag"] = metrics["lag"]
                row[f"w{n}_stalled"] = metrics["stalled"]
                if metrics["loop_ms"] is not None:
                    row[f"w{n}_loop_ms"] = metrics["loop_ms"]
                row[f"w{n}_rss_mb"] = rss
            self.timeline.append(row)
            await asyncio.sleep(1.0)

    # -- the run -----------------------------------------------------------------------

    async def run(self, oracle_path: Path) -> dict[str, Any]:
        load = self.load = await LoadProcess.start(
            self.stack.broker.bootstrap,
            self.stack.topic,
            self.rate - PROBES_PER_S,
            self.seconds,
            *("--members", str(MEMBERS), "--oracle", str(oracle_path)),
        )
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), timeout=aiohttp.ClientTimeout(total=10)
        )
        self.start = time.perf_counter()
        try:
            recs, reads, fresh, *_ = await asyncio.gather(
                self.recommendations(client, self.recs_rate),
                self.reads(client, self.reads_rate),
                self.freshness(client),
                self.chaos(),
                self.sample(self.start + self.seconds),
            )
        finally:
            await client.close()
        return {
            "load": await load.result(),
            "freshness": fresh.stats(),
            "features": reads.stats(),
            "recommendations": recs.stats(),
            "outside_chaos": {
                "freshness": fresh.stats(self.windows),
                "features": reads.stats(self.windows),
                "recommendations": recs.stats(self.windows),
            },
            "chaos_windows": self.windows,
        }


def cpu_means(timeline: list[dict[str, Any]]) -> dict[str, float]:
    """Each process's mean share of a core over the samples it was alive for."""
    seen: dict[str, list[float]] = {}
    for row in timeline:
        for key, value in row.items():
            if key.startswith("cpu_"):
                seen.setdefault(key.removeprefix("cpu_"), []).append(value)
    return {name: round(sum(v) / len(v), 1) for name, v in sorted(seen.items())}


def loop_lag(timeline: list[dict[str, Any]]) -> dict[str, float]:
    """The per-second longest event-loop delay, over the seconds sampled (all workers)."""
    values = sorted(v for row in timeline for k, v in row.items() if k.endswith("_loop_ms"))
    if not values:
        return {}
    return {
        "p50": values[len(values) // 2],
        "p90": values[int(len(values) * 0.9)],
        "max": values[-1],
    }


def _metrics(url: str) -> dict[str, float | None]:
    """Summed lag and the longest stall; ``None`` while the worker reports no partition."""
    lag: float | None = None
    stalled = 0.0
    loop_ms: float | None = None
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith("nearline_consumer_lag{"):
            lag = (lag or 0.0) + float(value)
        elif head.startswith("nearline_partition_stalled_seconds{"):
            stalled = max(stalled, float(value))
        elif head == "nearline_event_loop_lag_seconds":
            loop_ms = round(1000 * float(value), 1)
    return {"lag": lag, "stalled": stalled, "loop_ms": loop_ms}


def expected_counts(
    preloaded: list[ActionEvent], acked: dict[str, dict[str, int]], probes: list[tuple[str, str]]
) -> dict[str, Counter[str]]:
    expected: dict[str, Counter[str]] = {}
    for event in preloaded:
        expected.setdefault(event.member_id, Counter())[event.action] += 1
    for member, counts in acked.items():
        expected.setdefault(member, Counter()).update(counts)
    for member, action in probes:
        expected.setdefault(member, Counter())[action] += 1
    return expected


def compare(url: str, expected: dict[str, Counter[str]], window: str) -> dict[str, int]:
    with httpx.Client(timeout=10) as client:
        served = {
            member: client.get(f"{url}/v1/members/{member}/features").json()["counts"][window]
            for member in expected
        }
    return tally(expected, served)


def tally(expected: dict[str, Counter[str]], served: dict[str, dict[str, int]]) -> dict[str, int]:
    """Actions lost and counted twice: each member's served counts against ``expected``."""
    lost = twice = members_off = 0
    for member, counts in expected.items():
        got = served.get(member, {})
        off = False
        for action in set(counts) | {a for a, n in got.items() if n}:
            difference = got.get(action, 0) - counts.get(action, 0)
            lost += max(0, -difference)
            twice += max(0, difference)
            off = off or difference != 0
        members_off += off
    return {"members": len(expected), "lost": lost, "counted_twice": twice, "off": members_off}


def examples_per_response(stack: Stack) -> dict[str, int]:
    env = stack.settings
    bootstrap = stack.broker.bootstrap
    logged = asyncio.run(
        consume_topic(bootstrap, env["NEARLINE_TOPIC_RECOMMENDATIONS_LOG"], 10**9, timeout=10)
    )
    sets = asyncio.run(
        consume_topic(bootstrap, env["NEARLINE_TOPIC_TRAINING_EXAMPLES"], 10**9, timeout=10)
    )
    responses = {codec.loads(r.value)["request_id"] for r in logged}
    written = Counter(codec.loads(r.value)["request_id"] for r in sets)
    per = Counter(written.get(rid, 0) for rid in responses)
    return {
        "responses": len(responses),
        "exactly_one": per.get(1, 0),
        "none": per.get(0, 0),
        "more_than_one": sum(n for k, n in per.items() if k > 1),
        "sets_for_unknown_responses": sum(n for rid, n in written.items() if rid not in responses),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["timeline"]

    def series(name: str) -> tuple[list[float], list[float]]:
        """Samples of ``name``, broken (NaN) where the worker did not answer for > 2.5 s."""
        ts: list[float] = []
        values: list[float] = []
        for row in timeline:
            if name not in row:
                continue
            if ts and row["t"] - ts[-1] > 2.5:
                ts.append(ts[-1])
                values.append(float("nan"))
            ts.append(row["t"])
            values.append(row[name])
        return ts, values

    fig, (lag_ax, loop_ax, rss_ax, cpu_ax) = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    for n in (1, 2):
        ts, values = series(f"w{n}_lag")
        if ts:
            lag_ax.plot(ts, values, label=f"worker {n} lag (records)")
        ts, values = series(f"w{n}_loop_ms")
        if ts:
            loop_ax.plot(ts, values, label=f"worker {n} event-loop lag (ms)")
        ts, values = series(f"w{n}_rss_mb")
        if ts:
            rss_ax.plot(ts, values, label=f"worker {n} RSS (MB)")
    for name in result.get("cpu_percent", {}):
        ts, values = series(f"cpu_{name}")
        if ts:
            cpu_ax.plot(ts, values, label=name, linewidth=1)
    for t, what in result["events"]:
        for ax in (lag_ax, loop_ax, rss_ax, cpu_ax):
            ax.axvline(t, color="grey", linestyle="--", linewidth=0.8)
        lag_ax.annotate(what, (t, 0), rotation=90, fontsize=7, va="bottom")
    lag_ax.set_ylabel("consumer lag (gaps: no answer)")
    loop_ax.set_ylabel("longest loop delay\nin the last second (ms)")
    rss_ax.set_ylabel("RSS (MB)")
    cpu_ax.set_ylabel("CPU (% of a core)")
    cpu_ax.set_xlabel("seconds into the soak")
    for ax in (lag_ax, loop_ax, rss_ax, cpu_ax):
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"nearline mixed soak: {result['rate']:.0f} actions/s, {result['recs_rate']:.0f} "
        f"recommendations/s, {result['reads_rate']:.0f} reads/s "
        f"({machine()})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def soak(
    seconds: float,
    rate: float,
    horizon: float,
    *,
    chaos: bool = True,
    profile: Path | None = None,
    recs_rate: float = 300.0,
    reads_rate: float = 500.0,
) -> dict[str, Any]:
    from app.traffic import generate_actions

    with EmbeddedBroker() as broker:
        stack = recommendation_stack(broker)
        stack.settings["NEARLINE_OUTCOME_HORIZON"] = f"{horizon}s"
        try:
            worker = start_worker(stack, ITEMS, MEMBERS, PRELOADED)
            preloaded = list(generate_actions(PRELOADED, members=MEMBERS, items=ITEMS))
            run = Soak(stack, worker, seconds, rate, chaos, recs_rate, reads_rate)
            oracle_path = Path(tempfile.mkdtemp()) / "acked.json"
            spy = None
            if profile is not None:  # py-spy on the worker for the whole soak
                spy = subprocess.Popen(
                    [
                        *(str(Path(sys.executable).with_name("py-spy")), "record"),
                        *("--pid", str(worker.pid), "--duration", str(int(seconds))),
                        *("--rate", "100", "--format", "speedscope", "--output", str(profile)),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            result = uvloop.run(run.run(oracle_path))  # the load costs the machine less
            if spy is not None:
                spy.wait()
            first = run.workers[0]
            expected = expected_counts(
                preloaded, json.loads(oracle_path.read_text()), run.probe_events
            )
            total = sum(sum(c.values()) for c in expected.values())
            # Done when the worker (alone again) has applied everything and the last
            # responses have come due and been labelled; then the state is compared.
            settled_after = time.monotonic() + horizon + 3
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                lag = read_metric(first.url, "nearline_consumer_lag")
                behind = read_metric(first.url, "nearline_outcomes_behind_seconds")
                if lag == 0 and behind == 0 and time.monotonic() > settled_after:
                    break
                time.sleep(0.5)
            result.update(
                {
                    "seconds": seconds,
                    "rate": rate,
                    "recs_rate": recs_rate,
                    "reads_rate": reads_rate,
                    "horizon_s": horizon,
                    "actions_expected": total,
                    "state": compare(first.url, expected, format_duration(345600.0)),
                    "examples": examples_per_response(stack),
                    "max_stalled_s": max(
                        (v for r in run.timeline for k, v in r.items() if k.endswith("_stalled")),
                        default=0.0,
                    ),
                    "cpu_percent": cpu_means(run.timeline),
                    "loop_lag_ms": loop_lag(run.timeline),
                    "timeline": run.timeline,
                    "events": run.events,
                    "machine": machine(),
                }
            )
        finally:
            stack.stop()
    return result


def summary(result: dict[str, Any]) -> list[str]:
    def lat(name: str, stats: dict[str, Any]) -> str:
        return (
            f"{name}: p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms "
            f"(n {stats['n']}, failed {stats['failed']})"
        )

    steady = result["outside_chaos"]
    return [
        f"soak {result['seconds']:.0f} s at {result['load']['achieved_rate']:,} actions/s "
        f"achieved ({machine()})",
        lat("freshness", result["freshness"]),
        lat("features read", result["features"]),
        lat("recommendations", result["recommendations"]),
        lat("freshness, outside the chaos windows", steady["freshness"]),
        lat("features read, outside the chaos windows", steady["features"]),
        lat("recommendations, outside the chaos windows", steady["recommendations"]),
        "chaos windows (s): " + ", ".join(f"{a:.1f}-{b:.1f}" for a, b in result["chaos_windows"]),
        f"longest stall on a partition with lag: {result['max_stalled_s']:.1f} s",
        f"state vs oracle: {result['state']}",
        f"examples per response: {result['examples']}",
        "event-loop lag, longest of each second (ms): "
        + ", ".join(f"{name} {v}" for name, v in result["loop_lag_ms"].items()),
        "mean CPU, % of one core (2 cores in all): "
        + ", ".join(f"{name} {share}" for name, share in result["cpu_percent"].items()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the soak")
    parser.add_argument("--rate", type=float, default=5000.0, help="actions per second")
    parser.add_argument("--horizon", type=float, default=5.0, help="outcome horizon, seconds")
    parser.add_argument("--recs-rate", type=float, default=300.0, help="recommendations/s")
    parser.add_argument("--reads-rate", type=float, default=500.0, help="features reads/s")
    parser.add_argument(
        "--no-chaos", action="store_true", help="no SIGKILL, no second worker (for profiling)"
    )
    parser.add_argument(
        "--profile", type=Path, help="record the worker with py-spy into this speedscope file"
    )
    args = parser.parse_args()
    result = soak(
        args.seconds,
        args.rate,
        args.horizon,
        chaos=not args.no_chaos,
        profile=args.profile,
        recs_rate=args.recs_rate,
        reads_rate=args.reads_rate,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2, default=str))
    plot(result, RESULTS / "soak.png")
    print("\n".join(summary(result)))


if __name__ == "__main__":
    main()
