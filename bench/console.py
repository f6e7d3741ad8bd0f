"""Does the console cost the API anything? Features-read latency with the console open vs closed.

Run: ``python -m bench.console [--actions 50000] [--members 10000] [--rounds 2]``.

One worker ingests pre-loaded actions and the demo's items, the demo traffic keeps coming
(20 actions/s, its shifting member among them), and reads of random members' features are
driven open-loop at 500/s (the suite's features-read load) in runs of three kinds, in a
rotating order after one settling run: no console ("closed"); the console's own requests
made by a Python client at the page's pace, no browser ("requests only": what the worker
pays); and headless Chromium showing the console on the shifting member ("open": the
system view and the member view polling every second, re-ranking as the member acts; the
browser runs at nice 19 but still on the machine's two cores with the worker and the load
generator).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import httpx

from bench.harness import WARMUP, Stack, WorkerProcess, machine, preload
from bench.spine import _reads, ingest, preload_actions
from nearline.app.broker import EmbeddedBroker
from nearline.app.console.routes import POLL_MS
from nearline.app.stack import wait_until
from nearline.app.traffic import DEMO_SHIFTING_MEMBER, demo_items, demo_traffic_running
from tests.integration.browser import Chromium

#: The console's own API routes; its member view also reads features like any client.
CONSOLE_ROUTES = 'route="/v1/console/'


def _served(worker: WorkerProcess, route: str) -> tuple[int, float]:
    """Requests served so far on the routes whose label starts with ``route``, and the
    seconds the worker spent on them (from its request-latency histogram)."""
    count = seconds = 0.0
    for line in httpx.get(f"{worker.url}/metrics", timeout=5).text.splitlines():
        if route not in line:
            continue
        if line.startswith("nearline_http_request_seconds_count{"):
            count += float(line.rpartition(" ")[2])
        elif line.startswith("nearline_http_request_seconds_sum{"):
            seconds += float(line.rpartition(" ")[2])
    return int(count), seconds


def _server_ms(worker: WorkerProcess, path: str, route: str, requests: int = 200) -> float:
    """Mean time the worker spends on one request to ``path``, asked one at a time."""
    count, spent = _served(worker, route)
    with httpx.Client(base_url=worker.url, timeout=5) as client:
        for _ in range(requests):
            client.get(path).raise_for_status()
    count_after, spent_after = _served(worker, route)
    return round(1000 * (spent_after - spent) / (count_after - count), 3)


async def _reads_with_console_requests(
    worker: WorkerProcess, members: int, rate: float, seconds: float
) -> dict[str, Any]:
    """The console's requests without a browser, as the page makes them: each second the
    system view and the member's features, and a ranking when the member changed."""
    stop = asyncio.Event()
    member = DEMO_SHIFTING_MEMBER
    sent = 0

    async def poll() -> None:
        nonlocal sent
        applied: object = object()
        async with aiohttp.ClientSession(base_url=worker.url) as client:
            while not stop.is_set():
                async with client.get("/v1/console/system") as response:
                    await response.read()
                async with client.get(f"/v1/members/{member}/features") as response:
                    features = await response.json()
                sent += 2
                if features["last_applied_at"] != applied:
                    applied = features["last_applied_at"]
                    async with client.get(f"/v1/console/members/{member}/ranking") as response:
                        await response.read()
                    sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_MS / 1000)

    polling = asyncio.ensure_future(poll())
    reads = await _reads(worker, members, rate, seconds)
    stop.set()
    await polling
    reads["console_requests"] = sent
    return reads


async def _reads_with_console(
    worker: WorkerProcess, members: int, rate: float, seconds: float
) -> dict[str, Any]:
    # At the lowest CPU priority: it stands in for a browser on someone's own machine, and
    # should not take the worker's CPU here (the two cores are shared by everything).
    async with Chromium(niceness=19) as browser:
        await browser.goto(f"{worker.url}/console?member={DEMO_SHIFTING_MEMBER}")
        await browser.wait_for(
            "document.querySelectorAll('#ranking-now li[data-item]').length > 0 && "
            "document.querySelectorAll('#partitions tr').length > 1",
            what="the console showing a ranking and the partitions",
        )
        count, spent = _served(worker, CONSOLE_ROUTES)
        cpu = browser.cpu_seconds()
        reads = await _reads(worker, members, rate, seconds)
        # Chromium shares the two cores with the worker and the load generator.
        reads["chromium_cpu_share"] = round((browser.cpu_seconds() - cpu) / (WARMUP + seconds), 3)
        count_after, spent_after = _served(worker, CONSOLE_ROUTES)
        reads["console_requests"] = count_after - count
        reads["console_ms_per_request"] = round(
            1000 * (spent_after - spent) / max(1, count_after - count), 2
        )
        reads["page_errors"] = list(browser.errors)
    return reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=50_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="features reads per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each of the three ways")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        stack = Stack.isolated(broker, prefix="console")
        try:
            preload_actions(stack, args.actions, args.members)
            items = list(demo_items(5000, 64))
            asyncio.run(
                preload(broker.bootstrap, stack.settings["NEARLINE_TOPIC_ITEM_ATTRIBUTES"], items)
            )
            result = ingest(stack, args.actions, args.members)
            worker: WorkerProcess = result.pop("worker")
            worker.wait_for_metric('nearline_attribute_records_total{outcome="upserted"}', 5000)
            print(f"ingest: {result['actions_per_s']:,} actions/s; demo traffic at 20/s from now")
            with demo_traffic_running(stack.app_settings(), rate=20.0, members=20):
                member = DEMO_SHIFTING_MEMBER
                features = f"/v1/members/{member}/features"
                wait_until(  # until the watched member has a history worth ranking
                    lambda: len(worker.get(features).json()["recent_actions"]) >= 20,
                    timeout=60,
                    interval=0.5,
                    message=f"{member} to have 20 actions of demo traffic",
                    workers=[worker],
                )
                costs = {
                    "features read": _server_ms(
                        worker, f"/v1/members/{member}/features", 'route="/v1/members/'
                    ),
                    "console system view": _server_ms(
                        worker, "/v1/console/system", 'route="/v1/console/system"'
                    ),
                    "console ranking (24 candidates)": _server_ms(
                        worker,
                        f"/v1/console/members/{member}/ranking",
                        'route="/v1/console/members/',
                    ),
                }
                print(f"worker time per request, one at a time, ms: {json.dumps(costs)}")
                # Reads right after a large ingest have their own, worse tail (see the
                # README's benchmarks): one run to settle, not counted.
                settle = asyncio.run(_reads(worker, args.members, args.rate, args.seconds))
                print(json.dumps({**settle, "console": "closed, settling (not counted)"}))
                # Three ways, in a rotating order so that a drift over time favours none.
                runs = {
                    "closed": _reads,
                    "requests only": _reads_with_console_requests,
                    "open": _reads_with_console,
                }
                order = list(runs)
                for n in range(args.rounds):
                    for state in order[n % 3 :] + order[: n % 3]:
                        reads = asyncio.run(
                            runs[state](worker, args.members, args.rate, args.seconds)
                        )
                        reads.update(round=n + 1, console=state)
                        results.append(reads)
                        print(json.dumps(reads), flush=True)
        finally:
            stack.stop()
    for state in ("closed", "requests only", "open"):
        same = [r for r in results if r["console"] == state]
        p99s = ", ".join(f"{r['p99']}" for r in same)
        p50s = ", ".join(f"{r['p50']}" for r in same)
        print(
            f"features read at {args.rate:.0f}/s, console {state}: p50 {p50s} ms; p99 {p99s} ms "
            f"({WARMUP:.0f} s warm-up, then {args.seconds:.0f} s per run)"
        )


if __name__ == "__main__":
    main()
