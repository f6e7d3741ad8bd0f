"""Capacity: the soak's mix in steps, without chaos, and the largest step that holds.

Run: ``python -m bench.capacity [--steps 10 25 50 75 100 125 150] [--step-seconds 15]
[--serve-processes 2]``. One pod on the soak's deployment (``bench.soak``: 10k members, 5k
items, 64-dim embeddings joined at read, 20k actions applied first) takes, step after step,
a share of the soak's mix: that share of its 5k actions/s (``bench.load``), of its 300
recommendations/s of 500 candidates and of its 500 features reads/s (``bench.driver``: open
loop, latency from when each request was due), with 20 freshness probes/s at every step.
Each step runs :data:`~bench.harness.WARMUP` s not counted, then ``--step-seconds``; before
each, the worker's lag is let drain (the lag it started with is reported). A step holds when
freshness p99 < 100 ms, reads p99 < 5 ms, recommendations p99 < 20 ms, no request shed or
failed, and the actions producer achieved 98 % of the step's rate. Writes
bench/results/capacity.json.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import uvloop

from bench.driver import LOADS
from bench.harness import (
    REPO,
    SERVE_PROCESSES,
    WARMUP,
    WorkerProcess,
    add_serve_processes_option,
    machine,
)
from bench.recommendations import start_worker
from bench.soak import (
    ITEMS,
    MEMBERS,
    PRELOADED,
    PROBES_PER_S,
    TARGETS_MS,
    Soak,
    cpu_means,
    latency_line,
    soak_stack,
    worker_metrics,
)
from nearline.app.broker import EmbeddedBroker

RESULTS = REPO / "bench" / "results"
#: The soak's mix at 100 %.
ACTIONS, RECOMMENDATIONS, READS = 5000.0, 300.0, 500.0
STEPS = (10.0, 25.0, 50.0, 75.0, 100.0, 125.0, 150.0)
#: Seconds a step waits, at most, for the previous step's lag to drain.
DRAIN = 60.0


def drain(worker: WorkerProcess, timeout: float = DRAIN) -> float | None:
    """Wait until the worker reports no lag (at most ``timeout``); the lag it had then."""
    deadline = time.monotonic() + timeout
    lag: float | None = None
    while time.monotonic() < deadline:
        try:
            lag = worker_metrics(worker.url)["lag"]
        except Exception:  # a slow /metrics under the last step's backlog: ask again
            lag = None
        if lag == 0:
            break
        time.sleep(0.5)
    return lag


def verdict(step: dict[str, Any]) -> dict[str, bool]:
    """Which of the targets a step met, and ``all``."""
    met = {f"{name} p99": step[name]["p99_ms"] < limit for name, limit in TARGETS_MS.items()}
    met["nothing shed or failed"] = all(
        step[name]["shed"] == 0 and step[name]["failed"] == 0 for name in LOADS
    )
    met["actions rate achieved"] = step["achieved_rate"] >= 0.98 * step["actions_rate"]
    met["all"] = all(met.values())
    return met


def capacity(
    steps: tuple[float, ...] = STEPS,
    step_seconds: float = 15.0,
    serve: int = SERVE_PROCESSES,
    horizon: float = 5.0,
) -> dict[str, Any]:
    """Run the steps (percent of the soak's mix) on one pod; each step's figures."""
    done: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        stack = soak_stack(broker, horizon, serve)
        try:
            worker = start_worker(stack, ITEMS, MEMBERS, PRELOADED)
            for percent in steps:
                share = percent / 100
                lag_before = drain(worker)
                run = Soak(
                    stack,
                    worker,
                    WARMUP + step_seconds,
                    ACTIONS * share,
                    chaos=False,
                    recs_rate=RECOMMENDATIONS * share,
                    reads_rate=READS * share,
                    warmup=WARMUP,
                )
                result = uvloop.run(run.run())
                step: dict[str, Any] = {
                    "percent": percent,
                    "actions_rate": ACTIONS * share,
                    "recs_rate": RECOMMENDATIONS * share,
                    "reads_rate": READS * share,
                    "achieved_rate": result["load"]["achieved_rate"] + PROBES_PER_S,
                    "lag_before": lag_before,
                    "max_lag": max(
                        (row["w1_lag"] for row in run.timeline if "w1_lag" in row), default=None
                    ),
                    **result["outside_chaos"],
                    "cpu_percent": cpu_means(run.timeline),
                }
                step["met"] = verdict(step)
                done.append(step)
                print("\n".join(step_lines(step)), flush=True)
        finally:
            stack.stop()
    held = [step["percent"] for step in done if step["met"]["all"]]
    return {
        "steps": done,
        "largest_met_percent": max(held) if held else None,
        "step_seconds": step_seconds,
        "warmup_s": WARMUP,
        "serve_processes": serve,
        "machine": machine(),
    }


def step_lines(step: dict[str, Any]) -> list[str]:
    missed = [name for name, ok in step["met"].items() if not ok and name != "all"]
    return [
        f"{step['percent']:.0f} % of the mix ({step['actions_rate']:,.0f} actions/s, achieved "
        f"{step['achieved_rate']:,.0f}; {step['recs_rate']:.0f} recommendations/s, "
        f"{step['reads_rate']:.0f} reads/s): "
        + ("every target held" if not missed else "missed " + ", ".join(missed))
        + f"; lag before {step['lag_before']}, highest {step['max_lag']}",
        *(f"  {latency_line(name, step[name])}" for name in LOADS),
        "  mean CPU, % of one core: "
        + ", ".join(f"{name} {share}" for name, share in step["cpu_percent"].items()),
    ]


def summary(result: dict[str, Any]) -> str:
    largest = result["largest_met_percent"]
    return (
        "largest step at which every target held: "
        + (f"{largest:.0f} % of the soak's mix" if largest is not None else "none")
        + f" ({result['step_seconds']:.0f} s steps after {result['warmup_s']:.0f} s of warm-up; "
        f"{machine()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=float, nargs="+", default=list(STEPS), help="percent of the mix"
    )
    parser.add_argument("--step-seconds", type=float, default=15.0, help="counted, per step")
    add_serve_processes_option(parser)
    args = parser.parse_args()
    result = capacity(tuple(args.steps), args.step_seconds, args.serve_processes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "capacity.json").write_text(json.dumps(result, indent=2, default=str))
    print(summary(result))


if __name__ == "__main__":
    main()
