"""Isolation: features reads while the worker catches up a backlog at full speed.

Run: ``python -m bench.isolation [--backlog 200000] [--reads-rate 500] [--seconds 30]
[--serve-processes 2]``. A pod applies 20k actions over 10k members and is stopped
(SIGTERM, its offsets committed); ``--backlog`` actions are produced while it is down. It is
started again on its port and data dir, and from the moment it is ready ``bench.driver`` (a
process of its own) reads random members' features open-loop at ``--reads-rate`` for
``--seconds``, latency from when each read was due, while the worker applies the backlog as
fast as it can. Reported: the reads due and answered before the backlog was applied (lag 0
and every backlog action consumed), the catch-up's rate, and the CPU of the pod and of the
driver over it. The target: reads p99 < 5 ms. Writes bench/results/isolation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx
import uvloop

from bench.driver import Driver
from bench.harness import (
    REPO,
    SERVE_PROCESSES,
    Samples,
    Stack,
    WorkerProcess,
    add_serve_processes_option,
    cpu_seconds,
    machine,
    pod_pids,
    preload,
    serve_processes,
)
from bench.soak import TARGETS_MS, latency_line, worker_metrics
from bench.spine import preload_actions
from nearline.app.broker import EmbeddedBroker
from nearline.app.traffic import generate_actions

RESULTS = REPO / "bench" / "results"
#: Actions applied before the backlog: the members the reads find.
APPLIED_FIRST = 20_000


def _consumed(worker: WorkerProcess) -> float | None:
    """Actions the worker has consumed since it started; None if /metrics did not answer."""
    try:
        return worker.metric("nearline_events_in_total")
    except httpx.HTTPError:
        return None


async def _catch_up(
    stack: Stack, port: int, backlog: int, reads_rate: float, seconds: float, members: int
) -> dict[str, Any]:
    driver = await Driver.prepare(
        f"http://127.0.0.1:{port}", seconds, reads_rate=reads_rate, members=members
    )
    worker = await asyncio.to_thread(stack.start_worker, "w1", 120.0, port=port)
    pids = [*pod_pids(worker), driver.process.pid]
    cpu_at_go = {pid: cpu_seconds(pid) for pid in pids}
    start = time.perf_counter()
    driver.go(start)
    consumed_at_go = await asyncio.to_thread(_consumed, worker)
    caught_up: float | None = None
    progress: list[tuple[float, float | None]] = []
    while time.perf_counter() - start < seconds:
        try:
            lag = (await asyncio.to_thread(worker_metrics, worker.url))["lag"]
            consumed = await asyncio.to_thread(worker.metric, "nearline_events_in_total")
        except httpx.HTTPError:  # /metrics slow behind the catch-up: ask again
            await asyncio.sleep(0.1)
            continue
        progress.append((round(time.perf_counter() - start, 2), lag))
        if lag == 0 and consumed >= backlog:
            caught_up = time.perf_counter() - start
            break
        await asyncio.sleep(0.1)
    observed = time.perf_counter() - start  # the catch-up, or as much of it as the reads saw
    cpu_then = {pid: cpu_seconds(pid) for pid in pids}
    samples, _ = await driver.samples()
    reads = samples["features"]
    # The reads due before the backlog was applied, however late they were answered.
    end = caught_up if caught_up is not None else float("inf")
    during = Samples([request for request in reads.requests if request[0] < end])

    def cpu_share(chosen: list[int]) -> float:
        used = 0.0
        for pid in chosen:
            before, after = cpu_at_go.get(pid), cpu_then.get(pid)
            if before is not None and after is not None:
                used += after - before
        return round(100 * used / observed, 1)

    return {
        "backlog": backlog,
        "consumed_before_reads": consumed_at_go,
        "caught_up_s": round(caught_up, 2) if caught_up is not None else None,
        "catch_up_rate": (
            round((backlog - (consumed_at_go or 0)) / caught_up) if caught_up is not None else None
        ),
        "reads_during_catch_up": during.stats(),
        "reads_whole_run": reads.stats(),
        "lag_left": progress[-1][1] if progress else None,
        "cpu_percent_during_catch_up": {
            "pod": cpu_share(pids[:-1]),
            "driver": cpu_share(pids[-1:]),
        },
        "lag_progress": progress,
    }


def isolation(
    backlog: int = 200_000,
    reads_rate: float = 500.0,
    seconds: float = 30.0,
    serve: int = SERVE_PROCESSES,
    members: int = 10_000,
) -> dict[str, Any]:
    with EmbeddedBroker() as broker:
        stack = serve_processes(Stack.isolated(broker), serve)
        try:
            preload_actions(stack, APPLIED_FIRST, members)
            worker = stack.start_worker("w1")
            worker.wait_for_metric("nearline_events_in_total", APPLIED_FIRST)
            port = int(worker.url.rsplit(":", 1)[1])
            worker.stop()  # SIGTERM: a clean stop, its offsets committed
            # Another seed than the first actions': new event ids, none deduplicated away.
            records = [
                (e.member_id.encode(), e.to_json())
                for e in generate_actions(backlog, members=members, items=50_000, seed=12)
            ]
            asyncio.run(preload(broker.bootstrap, stack.topic, records))
            result = uvloop.run(_catch_up(stack, port, backlog, reads_rate, seconds, members))
        finally:
            stack.stop()
    result |= {
        "reads_rate": reads_rate,
        "seconds": seconds,
        "serve_processes": serve,
        "machine": machine(),
    }
    return result


def summary(result: dict[str, Any]) -> list[str]:
    reads = result["reads_during_catch_up"]
    caught = result["caught_up_s"]
    target = TARGETS_MS["features"]
    return [
        f"backlog of {result['backlog']:,} actions ({result['consumed_before_reads'] or 0:,.0f} "
        "consumed before the worker was ready and the reads began): "
        + (
            f"applied {caught:.1f} s after, {result['catch_up_rate']:,} actions/s"
            if caught is not None
            else f"not applied within the {result['seconds']:.0f} s of reads "
            f"({result['lag_left']} actions of lag left)"
        ),
        latency_line(f"features read at {result['reads_rate']:.0f}/s during the catch-up", reads)
        + f" (target p99 < {target:.0f} ms: {'met' if reads['p99_ms'] < target else 'NOT met'})",
        latency_line("features read, the whole run", result["reads_whole_run"]),
        "mean CPU during the catch-up, % of one core: "
        + ", ".join(f"{k} {v}" for k, v in result["cpu_percent_during_catch_up"].items())
        + f" (serving processes asked for: {result['serve_processes']}; {machine()})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200_000, help="actions to catch up")
    parser.add_argument("--reads-rate", type=float, default=500.0, help="features reads/s")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="of reads; the catch-up counts within"
    )
    parser.add_argument("--members", type=int, default=10_000)
    add_serve_processes_option(parser)
    args = parser.parse_args()
    result = isolation(
        args.backlog, args.reads_rate, args.seconds, args.serve_processes, args.members
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "isolation.json").write_text(json.dumps(result, indent=2, default=str))
    print("\n".join(summary(result)))


if __name__ == "__main__":
    main()
