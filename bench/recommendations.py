"""Recommendations latency: 500 candidates per request, open-loop at fixed request rates.

Run: ``python -m bench.recommendations [--rates 100 300] [--candidates 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

import aiohttp

from bench.harness import WARMUP, Stack, WorkerProcess, machine, open_loop, percentiles, preload
from bench.joins import _items
from nearline.app.broker import EmbeddedBroker
from nearline.app.traffic import generate_actions
from nearline.foundation import codec


def recommendation_stack(broker: EmbeddedBroker) -> Stack:
    """The stack the latency is measured on: 64-dim embeddings joined at read."""
    return Stack.isolated(broker, embedding_dim="64", join_at_read="embedding")


def start_worker(stack: Stack, items: int, members: int, actions: int = 20_000) -> WorkerProcess:
    """Topics, ``items`` item attributes and ``actions`` over ``members``, all applied."""
    stack.create_topics()
    topic = stack.settings["NEARLINE_TOPIC_ITEM_ATTRIBUTES"]
    asyncio.run(preload(stack.broker.bootstrap, topic, _items(items, 64)))
    worker = stack.start_worker()
    worker.wait_for_metric('nearline_attribute_records_total{outcome="upserted"}', items)
    records = [
        (e.member_id.encode(), e.to_json())
        for e in generate_actions(actions, members=members, items=items)
    ]
    asyncio.run(preload(stack.broker.bootstrap, stack.topic, records))
    worker.wait_for_metric("nearline_events_in_total", len(records))
    return worker


async def _load(
    worker: WorkerProcess, rate: float, seconds: float, candidates: int, items: int, members: int
) -> dict[str, Any]:
    """Open-loop POSTs at ``rate`` per second, bodies encoded before the clock starts.

    The client is aiohttp: httpx costs ~1-2 ms of CPU a request, and on two shared cores
    the load generator, not the worker, then sets the latency.
    """
    rng = random.Random(4)
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64),
        timeout=aiohttp.ClientTimeout(total=10),
        headers={"content-type": "application/json"},
    )
    url = f"{worker.url}/v1/recommendations"
    statuses: dict[int | str, int] = {}
    versions: set[str] = set()

    def body() -> bytes:
        return codec.dumps(
            {
                "member_id": f"member-{rng.randrange(members)}",
                "candidates": [f"item-{i}" for i in rng.sample(range(items), candidates)],
                "k": 20,
            }
        )

    bodies = [body() for _ in range(int(rate * (WARMUP + seconds)))]

    async def one(n: int) -> None:
        try:
            async with client.post(url, data=bodies[n]) as response:
                content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:  # counted: an overloaded run reports
            name = type(exc).__name__
            statuses[name] = statuses.get(name, 0) + 1
            return
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if response.status == 200:
            versions.add(codec.loads(content)["model_version"])

    latencies = await open_loop(one, rate, seconds)
    await client.close()
    stats = percentiles(latencies)
    return {
        "rate": rate,
        "candidates": candidates,
        "statuses": statuses,
        "model": sorted(versions),
        "p50_ms": round(stats["p50"] * 1000, 2),
        "p99_ms": round(stats["p99"] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 300.0])
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--members", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with EmbeddedBroker() as broker:
        stack = recommendation_stack(broker)
        try:
            worker = start_worker(stack, args.items, args.members)
            for rate in args.rates:
                result = asyncio.run(
                    _load(worker, rate, args.seconds, args.candidates, args.items, args.members)
                )
                print(result, flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
