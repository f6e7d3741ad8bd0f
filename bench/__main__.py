"""The benchmark suite (`make bench`): nearline beside a peer on one broker and workload.

Writes bench/results/latest.md and latest.json. Every figure names its command, warm-up
and run count; all run on this machine's embedded broker, the load generator included.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.capacity import STEPS, capacity
from bench.console import _reads_with_console
from bench.harness import REPO, WARMUP, Stack, add_serve_processes_option, machine
from bench.isolation import isolation
from bench.peer_stack import command_line as peer_stack_command
from bench.peer_stack import compare_stacks
from bench.peer_stack import parser as peer_stack_parser
from bench.peer_stack import table as peer_stack_table
from bench.recommendations import _load as recommendations_load
from bench.recommendations import recommendation_stack, start_worker
from bench.recovery import recovery
from bench.serving_cpu import HOW as serving_cpu_how
from bench.serving_cpu import serving_cpu
from bench.soak import LAG_BACK, TARGETS_MS, soak
from bench.soak import plot as plot_soak
from bench.spine import (
    FRESHNESS_WARMUP,
    PROBES_PER_S,
    _freshness,
    _reads,
    ingest,
    preload_actions,
)
from nearline.app.broker import EmbeddedBroker

RESULTS = REPO / "bench" / "results"


def peer(broker: Any, topic: str, actions: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.peer_quix", broker.bootstrap, topic, str(actions)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the peer produced no result: {done.stderr[-2000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


#: ``row(figure, value, target, command, detail, met)``: adds one row to the table.
Row = Callable[..., None]


def sigkill_rows(row: Row, killed: dict[str, Any]) -> None:
    """The soak's SIGKILL window: reads and recommendations answered, the lag's return."""
    if killed:
        for name in ("features", "recommendations"):
            c = killed[name]
            row(
                f"soak: {name} through the SIGKILL window",
                f"{c['answered_share']:.1%} answered of {c['total']:,} ({c['answered']:,} "
                f"fresh, {c['stale']:,} flagged stale, {c['shed']:,} shed, {c['failed']:,} "
                "failed)",
                "≥ 99 % answered",
                "requests due from the SIGKILL until the workers were ready with no lag "
                f"({killed['window_s'][0]:.1f}-{killed['window_s'][1]:.1f} s); stale: a 200 "
                'whose body has "stale_ms"',
                c,
                c["answered_share"] >= 0.99,
            )
        back = killed["lag"]["under_5000_after_s"]
        observed = killed["lag"]["observed_s"]
        row(
            f"soak: restarted worker back under {LAG_BACK:,} actions of lag",
            f"{back:.1f} s after the SIGKILL"
            if back is not None
            else f"not within the {observed:.0f} s of load after it",
            "≤ 30 s, under load",
            "nearline_consumer_lag of the restarted worker, sampled every second while the "
            "load went on",
            killed["lag"],
            # Undecided when the soak ended less than 30 s after the kill with lag left.
            back <= 30 if back is not None else (False if observed >= 30 else None),
        )


def capacity_rows(row: Row, stepped: dict[str, Any], isolated: dict[str, Any]) -> None:
    """The capacity row (``bench.capacity``) and the isolation row (``bench.isolation``)."""
    largest = stepped["largest_met_percent"]
    steps = ", ".join(f"{step['percent']:.0f}" for step in stepped["steps"])
    serve = stepped["serve_processes"]
    row(
        "capacity: the largest step of the soak's mix at which every target held",
        f"{largest:.0f} %" if largest is not None else f"none of {steps} %",
        "100 %",
        f"python -m bench.capacity --step-seconds {stepped['step_seconds']:.0f} "
        f"--serve-processes {serve}: steps of {steps} % of the soak's mix, no chaos, "
        f"{WARMUP:.0f} s warm-up each; targets: freshness p99 < 100 ms, reads p99 < 5 ms, "
        "recommendations p99 < 20 ms, nothing shed",
        [{k: step[k] for k in ("percent", "met", *TARGETS_MS)} for step in stepped["steps"]],
        largest is not None and largest >= 100,
    )
    reads = isolated["reads_during_catch_up"]
    caught = isolated["caught_up_s"]
    row(
        f"isolation: features read at {isolated['reads_rate']:.0f} req/s while a "
        f"{isolated['backlog']:,}-action backlog is caught up",
        f"p50 {reads['p50_ms']} ms, p99 {reads['p99_ms']} ms of {reads['n']:,} answered; "
        f"{reads['shed']:,} shed, {reads['failed']:,} failed; "
        + (
            f"caught up in {caught:.1f} s ({isolated['catch_up_rate']:,} actions/s)"
            if caught is not None
            else "not caught up during the reads"
        ),
        "p99 < 5 ms",
        f"python -m bench.isolation --serve-processes {isolated['serve_processes']}: the "
        f"worker stopped, {isolated['backlog']:,} actions produced, the worker started again; "
        "reads due until the backlog was applied, from bench.driver (open loop)",
        {k: v for k, v in isolated.items() if k != "lag_progress"},
        reads["p99_ms"] < 5 and reads["shed"] == 0 and reads["failed"] == 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--soak-seconds", type=float, default=40.0, help="length of the soak")
    parser.add_argument(
        "--step-seconds", type=float, default=15.0, help="counted seconds of each capacity step"
    )
    add_serve_processes_option(parser)
    parser.add_argument(
        "--peer-stack-preload",
        type=int,
        default=100_000,
        help="the backlog each stack drains in the Quix → Feast → Redis comparison",
    )
    args = parser.parse_args()
    serve = args.serve_processes
    rows: list[dict[str, Any]] = []

    def row(
        figure: str, value: str, target: str, command: str, detail: Any, met: bool | None = None
    ) -> None:
        verdict = "" if met is None else ("met" if met else "**not met**")
        rows.append(
            {
                "figure": figure,
                "value": value,
                "target": target,
                "met": verdict,
                "command": command,
                "detail": detail,
            }
        )
        print(f"{figure}: {value}  (target {target} {verdict})", flush=True)

    started = time.time()
    with EmbeddedBroker() as broker:
        stack = Stack.isolated(broker)
        try:
            preload_actions(stack, args.actions, args.members)
            # The peer first, alone on the machine; then nearline on the same topic.
            theirs = peer(broker, stack.topic, args.actions)
            result = ingest(stack, args.actions, args.members)
            worker = result.pop("worker")
            ratio = result["actions_per_s"] / theirs["actions_per_s"]
            row(
                "ingest, one worker (nearline)",
                f"{result['actions_per_s']:,} actions/s",
                "≥ 2.0x peer",
                f"python -m bench.spine: {args.actions:,} pre-loaded actions over "
                f"{args.members:,} members, from the first batch applied to the last",
                result,
            )
            row(
                "ingest, same topic (Quix Streams 3.28, RocksDB, changelog)",
                f"{theirs['actions_per_s']:,} actions/s",
                "—",
                "python -m bench.peer_quix",
                theirs,
            )
            row("nearline / peer", f"{ratio:.2f}x", "≥ 2.0x", "the two rows above", {}, ratio >= 2)
            for when in ("right after the ingest", "a second run, right after the first"):
                reads = asyncio.run(_reads(worker, args.members, 500.0, args.seconds))
                row(
                    f"features read at 500 req/s, {when}",
                    f"p50 {reads['p50']} ms, p99 {reads['p99']} ms",
                    "p99 < 5 ms",
                    f"open loop (aiohttp), random members; {WARMUP:.0f} s warm-up at the rate, "
                    f"then {args.seconds:.0f} s",
                    reads,
                    reads["p99"] < 5,
                )
            # The same load with the console open on the worker in headless Chromium (its
            # polling, and the browser on the same two cores). python -m bench.console
            # compares the three ways, with demo traffic, in alternating runs.
            reads = asyncio.run(_reads_with_console(worker, args.members, 500.0, args.seconds))
            row(
                "features read at 500 req/s, the console open in headless Chromium",
                f"p50 {reads['p50']} ms, p99 {reads['p99']} ms",
                "p99 < 5 ms",
                f"as the two rows above, a third run; Chromium used "
                f"{reads['chromium_cpu_share']:.0%} of a core, the console made "
                f"{reads['console_requests']} /v1/console requests",
                reads,
                reads["p99"] < 5,
            )
            for rate, target in ((1000.0, "p99 < 250 ms"), (5000.0, "p99 < 250 ms")):
                fresh = asyncio.run(
                    _freshness(worker, broker.bootstrap, stack.topic, rate, args.seconds)
                )
                row(
                    f"freshness at {int(rate)} actions/s (achieved {fresh['achieved_rate']})",
                    f"p50 {fresh['p50']} ms, p99 {fresh['p99']} ms",
                    target,
                    f"background load from python -m bench.load (confluent_kafka, a process "
                    f"of its own); {PROBES_PER_S:.0f} probe actions/s polled over HTTP; "
                    f"{FRESHNESS_WARMUP:.0f} s warm-up, then {args.seconds:.0f} s",
                    fresh,
                    fresh["p99"] < 250 and fresh["achieved_rate"] >= 0.98 * rate,
                )
            row(
                "worker RSS after ingest",
                f"{result['rss_mb']} MB",
                "bounded",
                "/proc/PID/status VmRSS once the last action is applied",
                {},
            )
        finally:
            stack.stop()
    # Recommendations on a broker of their own, as `python -m bench.recommendations` runs
    # them, not on one holding the peer's, the ingest's and the freshness runs' data.
    with EmbeddedBroker() as broker:
        stack = recommendation_stack(broker)
        try:
            items = 5000
            worker = start_worker(stack, items, 1000)
            for rate in (100.0, 300.0):
                recs = asyncio.run(
                    recommendations_load(worker, rate, args.seconds, 500, items, 1000)
                )
                row(
                    f"recommendations, 500 candidates, {int(rate)} req/s",
                    f"p50 {recs['p50_ms']} ms, p99 {recs['p99_ms']} ms",
                    "p99 < 20 ms at 300/s",
                    f"python -m bench.recommendations: open loop; {WARMUP:.0f} s warm-up at "
                    f"the rate, then {args.seconds:.0f} s; 64-dim embeddings joined at read, "
                    "heuristic ranker",
                    recs,
                    recs["p99_ms"] < 20 if rate == 300.0 else None,
                )
        finally:
            stack.stop()
    # The stack a team would build instead (Quix Streams → Feast → Redis → feast serve),
    # each on a broker of its own, the same workload one after the other.
    side_by_side = peer_stack_parser().parse_args(
        ["--seconds", str(args.seconds), "--preload", str(args.peer_stack_preload)]
    )
    compared = compare_stacks(side_by_side)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peer_stack.json").write_text(json.dumps(compared, indent=2, default=str))
    for figure, value, target, how, detail, met in peer_stack_table(
        compared, peer_stack_command(side_by_side)
    ):
        row(figure, value, target, how, detail, met)
    # CPU per request of the serving path (HTTP included), the web app alone in a process.
    for cpu in serving_cpu():
        row(
            f"server CPU per request: {cpu['figure']}",
            f"{cpu['cpu_ms']:.3f} ms (p50 {cpu['p50_ms']} ms, p99 {cpu['p99_ms']} ms)",
            f"≤ {cpu['target_ms']} ms",
            serving_cpu_how,
            cpu,
            cpu["met"],
        )
    for members in (100_000, 1_000_000):
        restored = recovery(members)
        row(
            f"recovery of {members:,} members, local store deleted",
            f"{restored['recovery_s']} s, {restored['members_per_s']:,} members/s "
            f"(ready {restored['ready_s']} s after process start)",
            "< 60 s for 1M",
            f"python -m bench.recovery --members {members}: a broker of its own, cold start "
            "(no warm-up), 200 members checked over HTTP, every member counted in RocksDB",
            restored,
            restored["recovery_s"] < 60 if members == 1_000_000 else None,
        )
        row(
            f"worker RSS after recovering {members:,} members",
            f"{restored['rss_mb']} MB",
            "bounded",
            "measured once /readyz says 200",
            {},
        )
    # Everything at once, with a crash and a rebalance: the figures that count from now on.
    soaked = soak(args.soak_seconds, 5000.0, 5.0, serve=serve)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(soaked, indent=2, default=str))
    plot_soak(soaked, RESULTS / "soak.png")
    soak_how = (
        f"python -m bench.soak --seconds {args.soak_seconds:.0f} --serve-processes {serve}: "
        "one pod, actions at 5k/s (bench.load), and from bench.driver (a process of its own, "
        "open loop, latency from when each request was due) 300 recommendations/s (500 "
        "candidates), 500 reads/s, 20 probes/s; 5 s outcome horizon; SIGKILL + restart at "
        "40 %, a 2nd worker joins at 60 % and leaves at 80 %; latencies of the requests "
        "outside the chaos windows (from each event until the workers are ready with no "
        "lag); the whole soak's in the detail"
    )
    for name, limit in TARGETS_MS.items():
        stats, whole = soaked["outside_chaos"][name], soaked[name]
        row(
            f"soak: {name}",
            f"p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms of {stats['n']:,} answered; "
            f"{stats['shed']:,} shed, {stats['failed']:,} failed (whole soak, chaos included: "
            f"p99 {whole['p99_ms']} ms; {whole['shed']:,} shed, {whole['failed']:,} failed)",
            f"p99 < {limit:.0f} ms, nothing shed",
            soak_how,
            {"outside_chaos": stats, "whole_soak": whole},
            stats["p99_ms"] < limit and stats["shed"] == 0 and stats["failed"] == 0,
        )
    sigkill_rows(row, soaked["sigkill"])
    row(
        "soak: longest stall of a partition with lag",
        f"{soaked['max_stalled_s']:.1f} s",
        "< 5 s",
        "nearline_partition_stalled_seconds sampled every second",
        {},
        soaked["max_stalled_s"] < 5,
    )
    loop = soaked["loop_lag_ms"]
    row(
        "soak: event-loop lag, the longest of each second",
        f"p50 {loop['p50']} ms, p90 {loop['p90']} ms, max {loop['max']} ms" if loop else "none",
        "—",
        "nearline_event_loop_lag_seconds sampled every second",
        loop,
    )
    row(
        "soak: mean CPU, % of one core",
        ", ".join(f"{name} {share}" for name, share in soaked["cpu_percent"].items()),
        "—",
        "/proc/PID/stat of each process, every second (wN: a worker's pod, wN_serve its "
        "serving processes alone; driver: the HTTP load, a process of its own; harness: the "
        "soak's chaos and sampling)",
        soaked["cpu_percent"],
    )
    state = soaked["state"]
    row(
        "soak: actions lost / counted twice",
        f"{state['lost']} / {state['counted_twice']} of {soaked['actions_expected']:,}",
        "0 / 0",
        "every member's 96h counts vs the actions the broker acknowledged",
        state,
        state["lost"] == 0 and state["counted_twice"] == 0,
    )
    examples = soaked["examples"]
    row(
        "soak: example sets per response",
        f"{examples['exactly_one']:,} of {examples['responses']:,} exactly one",
        "exactly one each",
        "request ids of recommendations-log vs training-examples",
        examples,
        examples["exactly_one"] == examples["responses"],
    )
    # The mix in steps without chaos, and reads while a backlog is caught up.
    stepped = capacity(STEPS, args.step_seconds, serve)
    (RESULTS / "capacity.json").write_text(json.dumps(stepped, indent=2, default=str))
    isolated = isolation(serve=serve)
    (RESULTS / "isolation.json").write_text(json.dumps(isolated, indent=2, default=str))
    capacity_rows(row, stepped, isolated)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {stamp} on {machine()}; embedded broker; one run each; "
        f"{time.time() - started:.0f} s in all.",
        "",
        "| figure | result | target | | how |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['figure']} | {r['value']} | {r['target']} | {r['met']} | {r['command']} |"
        for r in rows
    ]
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "latest.json").write_text(
        json.dumps({"when": stamp, "machine": machine(), "rows": rows}, indent=2, default=str)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
