"""Erasures under the soak's load: how long from a request until the member is gone.

Run: ``python -m bench.erasure [--seconds 60] [--erasures-per-s 2] [--serve-processes 2]``
(``--rate``, ``--recs-rate``, ``--reads-rate``: a share of the soak's mix instead).
The soak's mix without its chaos (``bench.soak``: actions at 5k/s, recommendations and
features reads over HTTP, labelling throughout) on one pod, and meanwhile erasures of
random members of the load, each ``DELETE /v1/members/{id}`` sent to the public port (a
serving process with serving processes). Each erased member's features are then read every
20 ms until they carry that erasure's marker: the online store's time from request to
completion, per erasure. The worker's ``nearline_erasure_seconds`` gives every store's
(online, pending, attributes), to its histogram's bucket bounds. Writes
bench/results/erasure.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from typing import Any

import httpx
import uvloop

from bench.harness import REPO, add_serve_processes_option, machine
from bench.recommendations import start_worker
from bench.soak import ITEMS, MEMBERS, PRELOADED, Soak, soak_stack
from nearline.app.broker import EmbeddedBroker

RESULTS = REPO / "bench" / "results"


#: Why requests were answered 503 (and retried after Retry-After, as a client would).
REFUSED: Counter[str] = Counter()


#: Seconds from each accepted DELETE's request time to its 202 (the erasures topic has it).
ACCEPTED: list[float] = []


async def _erase_one(client: httpx.AsyncClient, url: str, member: str) -> float:
    """Request an erasure; seconds from its request time until the features show it."""
    while True:
        answer = await client.delete(f"{url}/v1/members/{member}")
        answered = time.time()
        if answer.status_code != 503:
            break
        REFUSED[answer.json()["error"]] += 1
        await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
    answer.raise_for_status()
    erasure = answer.json()
    ACCEPTED.append(answered - float(erasure["requested_at"]))
    while True:
        features = (await client.get(f"{url}/v1/members/{member}/features")).json()
        if (features.get("erased") or {}).get("erasure_id") == erasure["erasure_id"]:
            return time.time() - float(erasure["requested_at"])
        await asyncio.sleep(0.02)


async def erasures(url: str, seconds: float, per_s: float, seed: int = 5) -> list[float]:
    """Erasures of random members at ``per_s`` for ``seconds``; each one's completion time."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=30) as client:
        started = time.monotonic()
        pending = []
        n = 0
        while time.monotonic() - started < seconds:
            member = f"member-{rng.randrange(MEMBERS)}"
            pending.append(asyncio.ensure_future(_erase_one(client, url, member)))
            n += 1
            await asyncio.sleep(max(0.0, started + n / per_s - time.monotonic()))
        return list(await asyncio.gather(*pending))


def histogram_p99(url: str) -> dict[str, dict[str, float | None]]:
    """Per store: count, and the p50 and p99 bucket bounds of ``nearline_erasure_seconds``."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if not line.startswith("nearline_erasure_seconds_bucket{"):
            continue
        head, _, value = line.rpartition(" ")
        labels = dict(part.split("=", 1) for part in head[head.index("{") + 1 : -1].split(","))
        le = labels["le"].strip('"')
        buckets.setdefault(labels["store"].strip('"'), []).append(
            (float("inf") if le == "+Inf" else float(le), float(value))
        )
    found: dict[str, dict[str, float | None]] = {}
    for store, cumulative in buckets.items():
        cumulative.sort()
        count = cumulative[-1][1]
        p99 = next((le for le, n in cumulative if n >= 0.99 * count), None) if count else None
        p50 = next((le for le, n in cumulative if n >= 0.5 * count), None) if count else None
        found[store] = {"count": count, "p50_at_most_s": p50, "p99_at_most_s": p99}
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(soak: Soak, seconds: float, per_s: float) -> tuple[dict[str, Any], list[float]]:
    # Erasures start once the load runs, and stop with it.
    result, times = await asyncio.gather(
        soak.run(), erasures(soak.url, max(1.0, seconds - 5), per_s)
    )
    return result, times


def bench(
    seconds: float, rate: float, per_s: float, serve: int, recs_rate: float, reads_rate: float
) -> dict[str, Any]:
    with EmbeddedBroker() as broker:
        stack = soak_stack(broker, horizon=10.0, serve=serve)
        try:
            worker = start_worker(stack, ITEMS, MEMBERS, PRELOADED)
            soak = Soak(
                stack, worker, seconds, rate, False, recs_rate=recs_rate, reads_rate=reads_rate
            )
            load, times = uvloop.run(_run(soak, seconds, per_s))
            return {
                "seconds": seconds,
                "rate": rate,
                "recs_rate": recs_rate,
                "reads_rate": reads_rate,
                "achieved_rate": load["load"]["achieved_rate"],
                "serve_processes": serve,
                "erasures": len(times),
                "refused_503": dict(REFUSED),
                "accepted_s": {"p50": percentile(ACCEPTED, 0.5), "p99": percentile(ACCEPTED, 0.99)},
                "online_all_s": sorted(times),
                "online_s": {
                    "p50": percentile(times, 0.5),
                    "p99": percentile(times, 0.99),
                    "max": max(times),
                },
                "stores": histogram_p99(worker.url),
                "features_p99_ms": load["features"]["p99_ms"],
                "recommendations_p99_ms": load["recommendations"]["p99_ms"],
                "machine": machine(),
            }
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=5000.0, help="actions per second")
    parser.add_argument("--recs-rate", type=float, default=300.0, help="recommendations/s")
    parser.add_argument("--reads-rate", type=float, default=500.0, help="features reads/s")
    parser.add_argument("--erasures-per-s", type=float, default=2.0)
    add_serve_processes_option(parser)
    args = parser.parse_args()
    result = bench(
        args.seconds,
        args.rate,
        args.erasures_per_s,
        args.serve_processes,
        args.recs_rate,
        args.reads_rate,
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "erasure.json").write_text(json.dumps(result, indent=2))
    online = result["online_s"]
    print(
        f"{result['erasures']} erasures under {result['achieved_rate']:,.0f} actions/s, "
        f"{result['recs_rate']:.0f} recommendations/s, {result['reads_rate']:.0f} reads/s "
        f"(serve processes: {result['serve_processes']}; reads p99 "
        f"{result['features_p99_ms']:,.0f} ms): online store visible p50 "
        f"{online['p50']:.3f} s, p99 {online['p99']:.3f} s, max {online['max']:.3f} s"
    )
    accepted = result["accepted_s"]
    print(f"  202 after p50 {accepted['p50']:.3f} s, p99 {accepted['p99']:.3f} s")
    if result["refused_503"]:
        print(f"  answered 503 and retried: {result['refused_503']}")
    for store, found in result["stores"].items():
        print(
            f"  {store}: {found['count']:.0f} erasures, p50 <= {found['p50_at_most_s']} s, "
            f"p99 <= {found['p99_at_most_s']} s"
        )


if __name__ == "__main__":
    main()
