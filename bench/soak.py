"""The mixed-load soak: everything at once on one worker, with a crash and a rebalance midway.

Run: ``python -m bench.soak [--seconds 60] [--serve-processes 2]``. One pod (a worker and
its serving processes) serves, as in production, all of: actions at 5k/s from a process of
its own (``bench.load``, confluent_kafka), and from another (``bench.driver``) open-loop
HTTP load, latency counted from when each request was due: recommendations (500 candidates)
at 300 req/s, features reads at 500 req/s and freshness probes; an outcome horizon short
enough that labelling runs throughout. At 40 % of the run the worker is SIGKILLed and
restarted on its port and data dir; at 60 % a second worker joins, and at 80 % it leaves.
Latencies are reported over the whole soak, and apart for the requests outside the chaos
windows (from each event until the workers are ready again with no lag). Through the
SIGKILL's window it counts the reads and recommendations answered, answered but flagged
stale (``"stale_ms"`` in the body), shed (503) and failed, and when the restarted worker's
lag was first under 5,000 actions. Afterwards every member's counts are compared with what
the broker acknowledged (actions lost, counted twice), and every logged response with the
example sets written for it. Each process's CPU is sampled every second (the driver's too).
Writes bench/results/soak.json and soak.png (lag and RSS over time).

With ``--experiment`` an experiment runs throughout: two arms of the heuristic on fresh
features, half the members each, so every request is assigned an arm and every labelled
response is counted per arm, and nothing else differs (a daily arm would read less history
and be cheaper for it). Run it alternately with a soak without, to see what that costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.driver import LOADS, Driver
from bench.harness import (
    ANSWERED,
    REPO,
    SERVE_PROCESSES,
    STALE,
    Samples,
    Stack,
    WorkerProcess,
    add_serve_processes_option,
    cpu_seconds,
    machine,
    pod_pids,
    pod_rss_mb,
    serve_processes,
)
from bench.load import LoadProcess
from bench.recommendations import recommendation_stack, start_worker
from nearline.agents.events import ActionEvent
from nearline.app.broker import EmbeddedBroker
from nearline.app.stack import consume_topic, read_metric
from nearline.foundation import codec
from nearline.foundation.settings import format_duration

RESULTS = REPO / "bench" / "results"
ITEMS, MEMBERS, PRELOADED = 5000, 10_000, 20_000
PROBES_PER_S = 20.0
#: The issue's latency targets, p99 in ms, for the soak's loads (``bench.driver``'s names).
TARGETS_MS = {"freshness": 100.0, "features": 5.0, "recommendations": 20.0}
SIGKILL = "SIGKILL + restart"
#: Actions of lag under which a restarted worker counts as back (the issue's target: within
#: 30 s of the SIGKILL, while the load goes on).
LAG_BACK = 5000


class Soak:
    """One run of the soak's mix on a stack's worker: actions, probes, reads and
    recommendations for ``seconds``, with the chaos unless ``chaos`` is False."""

    def __init__(
        self,
        stack: Stack,
        worker: WorkerProcess,
        seconds: float,
        rate: float,
        chaos: bool = True,
        recs_rate: float = 300.0,
        reads_rate: float = 500.0,
        warmup: float = 0.0,
    ) -> None:
        self.stack = stack
        self.recs_rate = recs_rate
        self.reads_rate = reads_rate
        self.with_chaos = chaos
        self.workers = [worker]
        self.url = worker.url
        self.seconds = seconds
        self.rate = rate
        #: Seconds at the start whose requests are not counted in the steady figures.
        self.warmup = warmup
        self.timeline: list[dict[str, Any]] = []
        self.load: LoadProcess | None = None
        self.driver: Driver | None = None
        self._cpu_before: dict[int, tuple[float, float]] = {}
        self.events: list[tuple[float, str]] = []
        self.windows: list[tuple[float, float]] = []  # chaos: event until ready without lag
        self.probe_events: list[tuple[str, str]] = []  # (member, action) acknowledged
        self.samples: dict[str, Samples] = {}
        self.start = 0.0

    # -- chaos and sampling ------------------------------------------------------------

    async def chaos(self) -> None:
        if not self.with_chaos:
            return
        first = self.workers[0]
        port = int(first.url.rsplit(":", 1)[1])
        await self._at(0.4)
        began = self._event(SIGKILL)
        first.kill()
        restarted = await asyncio.to_thread(
            self.stack.start_worker, "w1", 120.0, wait=False, port=port
        )
        self.workers[0] = restarted
        await self._settled(began)
        if self._over():  # the restart's window lasted to the end: no rebalance to measure
            return
        await self._at(0.6)
        began = self._event("worker 2 joins")
        second = await asyncio.to_thread(self.stack.start_worker, "w2", 120.0, wait=False)
        self.workers.append(second)
        await self._settled(began)
        await self._at(0.8)
        if self._over():
            await asyncio.to_thread(second.stop)
            return
        began = self._event("worker 2 leaves")
        await asyncio.to_thread(second.stop)
        await self._settled(began)

    def _over(self) -> bool:
        return time.perf_counter() - self.start >= self.seconds

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

    def _processes(self) -> dict[str, list[int]]:
        """Who shares the two cores: each worker's pod (``wN``; ``wN_serve``, its serving
        processes alone, when it has any), the broker, the actions producer, the HTTP load's
        driver, and this process (chaos and sampling)."""
        found: dict[str, list[int]] = {}
        for n, worker in enumerate(self.workers, 1):
            if worker.exited:
                continue
            pids = pod_pids(worker)
            found[f"w{n}"] = pids
            if len(pids) > 1:
                found[f"w{n}_serve"] = [pid for pid in pids if pid != worker.pid]
        if self.stack.broker.pid is not None:
            found["broker"] = [self.stack.broker.pid]
        for name, child in (("producer", self.load), ("driver", self.driver)):
            if child is not None:
                found[name] = [child.process.pid]
        found["harness"] = [os.getpid()]
        return found

    def _cpu_shares(self) -> dict[str, float]:
        """Per process group, the share of one core used since the last call (100 = a
        whole core); a process first seen now counts from the next call."""
        now = time.perf_counter()
        shares: dict[str, float] = {}
        seen: dict[int, tuple[float, float]] = {}
        for name, pids in self._processes().items():
            total: float | None = None
            for pid in pids:
                seconds = cpu_seconds(pid)
                if seconds is None:
                    continue
                seen[pid] = (now, seconds)
                before = self._cpu_before.get(pid)
                if before is not None and before[1] <= seconds:
                    total = (total or 0.0) + (seconds - before[1]) / (now - before[0])
            if total is not None:
                shares[f"cpu_{name}"] = round(100 * total, 1)
        self._cpu_before = seen
        return shares

    async def sample(self, until: float) -> None:
        while time.perf_counter() < until:
            row: dict[str, Any] = {"t": round(time.perf_counter() - self.start, 2)}
            row |= self._cpu_shares()
            for n, worker in enumerate(self.workers, 1):
                if worker.exited:
                    continue
                try:
                    metrics = await asyncio.to_thread(worker_metrics, worker.url)
                except Exception:
                    continue
                if metrics["lag"] is None:
                    continue  # starting, rebalancing: no partition to report yet
                row[f"w{n}_lag"] = metrics["lag"]
                row[f"w{n}_stalled"] = metrics["stalled"]
                if metrics["loop_ms"] is not None:
                    row[f"w{n}_loop_ms"] = metrics["loop_ms"]
                row[f"w{n}_rss_mb"] = round(pod_rss_mb(worker))
            self.timeline.append(row)
            await asyncio.sleep(1.0)

    # -- the run -----------------------------------------------------------------------

    async def run(self, oracle_path: Path | None = None) -> dict[str, Any]:
        """The run; ``oracle_path``: where the actions producer writes what was acknowledged."""
        driver = self.driver = await Driver.prepare(
            self.url,
            self.seconds,
            reads_rate=self.reads_rate,
            recs_rate=self.recs_rate,
            probes_per_s=PROBES_PER_S,
            bootstrap=self.stack.broker.bootstrap,
            topic=self.stack.topic,
            members=MEMBERS,
            items=ITEMS,
        )
        oracle = ("--oracle", str(oracle_path)) if oracle_path is not None else ()
        load = self.load = await LoadProcess.start(
            self.stack.broker.bootstrap,
            self.stack.topic,
            self.rate - PROBES_PER_S,
            self.seconds,
            *("--members", str(MEMBERS), *oracle),
        )
        self.start = time.perf_counter()
        driver.go(self.start)
        await asyncio.gather(self.chaos(), self.sample(self.start + self.seconds))
        self.samples, self.probe_events = await driver.samples()
        steady = [(float("-inf"), self.warmup)] if self.warmup else []
        steady += self.windows
        return {
            "load": await load.result(),
            **{name: self.samples[name].stats() for name in LOADS},
            "outside_chaos": {name: self.samples[name].stats(steady) for name in LOADS},
            "chaos_windows": self.windows,
            "sigkill": self.sigkill() if self.with_chaos else {},
        }

    def sigkill(self) -> dict[str, Any]:
        """Through the SIGKILL's chaos window (from the kill until the workers are ready with
        no lag): what became of the reads and recommendations due in it; and how long after
        the kill the restarted worker's lag (``nearline_consumer_lag``, sampled every
        second) was first under :data:`LAG_BACK`, while the load went on."""
        killed = next((t for t, what in self.events if what == SIGKILL), None)
        if killed is None:  # the soak ended before the kill
            return {}
        until = next((b for a, b in self.windows if a == killed), self.seconds)
        found: dict[str, Any] = {"window_s": [round(killed, 2), round(until, 2)]}
        for name in ("features", "recommendations"):
            counts = self.samples[name].counts(killed, until)
            answered = counts[ANSWERED] + counts[STALE]
            share = answered / counts["total"] if counts["total"] else float("nan")
            found[name] = {**counts, "answered_share": round(share, 4)}
        lags = [(row["t"] - killed, row["w1_lag"]) for row in self.timeline if "w1_lag" in row]
        after = [(t, lag) for t, lag in lags if t >= 0]
        back = next((t for t, lag in after if lag < LAG_BACK), None)
        found["lag"] = {
            "under_5000_after_s": round(back, 1) if back is not None else None,
            "observed_s": round(self.seconds - killed, 1),
            "max_after_kill": max((lag for _, lag in after), default=None),
            "samples": [(round(t, 1), lag) for t, lag in after],
        }
        return found


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


def worker_metrics(url: str) -> dict[str, float | None]:
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


def soak_stack(broker: EmbeddedBroker, horizon: float, serve: int) -> Stack:
    """The soak's deployment: 64-dim embeddings joined at read, an outcome horizon of
    ``horizon`` seconds, ``serve`` serving processes beside each worker."""
    stack = serve_processes(recommendation_stack(broker), serve)
    stack.settings["NEARLINE_OUTCOME_HORIZON"] = f"{horizon}s"
    return stack


def start_experiment(stack: Stack) -> str:
    """Give ``stack`` a model directory with an experiment running in it, as ``nearline
    experiment start`` would: two arms of the heuristic on fresh features, half and half.
    Returns the experiment's id."""
    from nearline.app.compose import model_registry
    from nearline.model.experiments import Arm, Experiment
    from nearline.model.heuristic import HEURISTIC_VERSION

    stack.settings["NEARLINE_MODEL_DIR"] = str(Path(tempfile.mkdtemp()) / "models")
    registry = model_registry(stack.app_settings())
    arms = tuple(Arm(name, HEURISTIC_VERSION, "fresh", 0.5) for name in ("a", "b"))
    registry.start_experiment(Experiment("soak", arms))
    return "soak"


def experiment_counts(url: str, experiment: str) -> dict[str, float]:
    """The worker's per-arm response counters of ``experiment`` (labelled, by arm)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "nearline_experiment_responses_total"
                and labels.get("experiment") == experiment
            ):
                counts[f"{labels['arm']},{labels['outcome']}"] = sample.value
    return counts


def soak(
    seconds: float,
    rate: float,
    horizon: float,
    *,
    chaos: bool = True,
    profile: Path | None = None,
    recs_rate: float = 300.0,
    reads_rate: float = 500.0,
    serve: int = SERVE_PROCESSES,
    experiment: bool = False,
) -> dict[str, Any]:
    from nearline.app.traffic import generate_actions

    with EmbeddedBroker() as broker:
        stack = soak_stack(broker, horizon, serve)
        experiment_id = start_experiment(stack) if experiment else None
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
                try:
                    lag = read_metric(first.url, "nearline_consumer_lag")
                    behind = read_metric(first.url, "nearline_outcomes_behind_seconds")
                except httpx.HTTPError:  # slow behind its backlog on a busy machine
                    continue
                if lag == 0 and behind == 0 and time.monotonic() > settled_after:
                    break
                time.sleep(0.5)
            result.update(
                {
                    "seconds": seconds,
                    "rate": rate,
                    "recs_rate": recs_rate,
                    "reads_rate": reads_rate,
                    "serve_processes": serve,
                    "horizon_s": horizon,
                    "actions_expected": total,
                    "state": compare(first.url, expected, format_duration(345600.0)),
                    "examples": examples_per_response(stack),
                    "experiment": (
                        experiment_counts(first.url, experiment_id) if experiment_id else None
                    ),
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


def latency_line(name: str, stats: dict[str, Any]) -> str:
    """One load's latencies (from when each request was due) and what was not answered."""
    return (
        f"{name}: p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms (answered {stats['n']:,}, "
        f"of which stale {stats['stale']:,}; shed {stats['shed']:,}, failed {stats['failed']:,})"
    )


def sigkill_lines(found: dict[str, Any]) -> list[str]:
    """The SIGKILL window's outcomes and the restarted worker's lag, as printed."""
    if not found:
        return ["SIGKILL window: none (the soak ended before the kill)"]
    a, b = found["window_s"]
    lines = []
    for name in ("features", "recommendations"):
        c = found[name]
        lines.append(
            f"SIGKILL window {a:.1f}-{b:.1f} s, {name}: {c['answered_share']:.1%} answered "
            f"of {c['total']:,} due ({c['answered']:,} fresh, {c['stale']:,} flagged stale, "
            f"{c['shed']:,} shed, {c['failed']:,} failed)"
        )
    lag = found["lag"]
    back = lag["under_5000_after_s"]
    lines.append(
        f"restarted worker under {LAG_BACK:,} actions of lag: "
        + (f"{back:.1f} s after the SIGKILL" if back is not None else "never")
        + f" (observed {lag['observed_s']:.0f} s under load after it; "
        f"highest lag then {lag['max_after_kill']})"
    )
    return lines


def summary(result: dict[str, Any]) -> list[str]:
    lat = latency_line
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
        *(sigkill_lines(result["sigkill"]) if result["chaos_windows"] else []),
        f"longest stall on a partition with lag: {result['max_stalled_s']:.1f} s",
        f"state vs oracle: {result['state']}",
        f"examples per response: {result['examples']}",
        *(
            [f"experiment responses by arm and outcome: {result['experiment']}"]
            if result.get("experiment") is not None
            else []
        ),
        "event-loop lag, longest of each second (ms): "
        + ", ".join(f"{name} {v}" for name, v in result["loop_lag_ms"].items()),
        f"mean CPU, % of one core (2 cores in all; serving processes asked for: "
        f"{result['serve_processes']}): "
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
    parser.add_argument(
        "--experiment",
        action="store_true",
        help="run an experiment throughout (two arms of the heuristic, fresh features)",
    )
    add_serve_processes_option(parser)
    args = parser.parse_args()
    result = soak(
        args.seconds,
        args.rate,
        args.horizon,
        chaos=not args.no_chaos,
        profile=args.profile,
        recs_rate=args.recs_rate,
        reads_rate=args.reads_rate,
        serve=args.serve_processes,
        experiment=args.experiment,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2, default=str))
    plot(result, RESULTS / "soak.png")
    print("\n".join(summary(result)))


if __name__ == "__main__":
    main()
