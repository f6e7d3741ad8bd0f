"""Spine benchmarks: ingest rate, freshness (produce → visible over HTTP), features reads.

Run: ``python -m bench.spine [--actions 200000] [--members 10000]``. Prints medians and p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.harness import (
    Stack,
    WorkerProcess,
    cpu_seconds,
    machine,
    open_loop,
    percentiles,
    preload,
    probe_freshness,
)
from bench.load import LoadProcess
from nearline.app.broker import EmbeddedBroker
from nearline.app.traffic import generate_actions

#: Probe actions per second in the freshness runs: 1 in 50 at 1k/s, 1 in 250 at 5k/s.
PROBES_PER_S = 20.0
#: Seconds of load before freshness probes count.
FRESHNESS_WARMUP = 2.0
#: Seconds between two polls of one probe; measured latencies are up to this much late.


def librdkafka_partition(partitions: int) -> Callable[[bytes], int]:
    """The default partitioner of librdkafka (confluent-kafka): ``consistent_random``, CRC32."""
    return lambda key: zlib.crc32(key) % partitions


def preload_actions(stack: Stack, actions: int, members: int, partitioner: str = "kafka") -> float:
    """Create the stack's topics and pre-load ``actions`` over ``members``; returns seconds.

    ``partitioner="librdkafka"`` places them as confluent-kafka's default would: most on
    another partition than nearline's, so the worker repartitions them.
    """
    stack.create_topics()
    records = [
        (e.member_id.encode(), e.to_json())
        for e in generate_actions(actions, members=members, items=50_000, seed=11)
    ]
    partition_of = librdkafka_partition(stack.partitions) if partitioner == "librdkafka" else None
    return asyncio.run(preload(stack.broker.bootstrap, stack.topic, records, partition_of))


def ingest(stack: Stack, actions: int, members: int) -> dict[str, Any]:
    """Actions/s applied by one worker from the pre-loaded topic (see :func:`preload_actions`).

    Timed from the first batch applied to the last, counting the actions in between: the
    worker's start-up and group join are not ingest. Also the broker's CPU over that time
    per 1,000 actions/s ingested (the share of a core it took, divided by the rate in
    thousands), and the online store's changelog bytes per action applied.
    """
    started = time.perf_counter()
    worker = stack.start_worker("ingest")
    ready = time.perf_counter()
    first: tuple[float, float] | None = None
    broker_pid = stack.broker.pid
    broker_cpu: float | None = None
    while True:
        done = worker.metric("nearline_events_in_total")
        if first is None and done > 0:
            first = (time.perf_counter(), done)
            broker_cpu = cpu_seconds(broker_pid) if broker_pid else None
        if done >= actions:
            break
        time.sleep(0.05)
    finished = time.perf_counter()
    broker_cpu_end = cpu_seconds(broker_pid) if broker_pid else None
    changelog = worker.metric('nearline_changelog_bytes_total{table="members"}')
    rss = worker.rss_mb()
    applied = worker.metric("nearline_events_applied_total")
    repartitioned = worker.metric("nearline_events_repartitioned_total")
    since, done_at_first = first or (ready, 0.0)
    seconds = finished - since
    rate = (actions - done_at_first) / seconds
    broker_share = (
        (broker_cpu_end - broker_cpu) / seconds
        if broker_cpu is not None and broker_cpu_end is not None
        else None
    )
    return {
        "actions": actions,
        "members": members,
        "startup_s": round(ready - started, 2),
        "timed_actions": int(actions - done_at_first),
        "seconds": round(seconds, 2),
        "actions_per_s": round(rate),
        "broker_cpu_percent": None if broker_share is None else round(100 * broker_share, 1),
        "broker_cpu_percent_per_1k_actions_per_s": (
            None if broker_share is None else round(100 * broker_share / (rate / 1000), 2)
        ),
        "changelog_bytes_per_action": round(changelog / applied) if applied else None,
        "applied": applied,
        "repartitioned": repartitioned,
        "rss_mb": round(rss),
        "worker": worker,
    }


async def _freshness(
    worker: WorkerProcess,
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    *,
    probes_per_s: float = PROBES_PER_S,
    warmup: float = FRESHNESS_WARMUP,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Produce → visible over HTTP for probe actions, while ``python -m bench.load`` (a
    process of its own) keeps the topic at ``rate`` actions/s in all, probes included.

    Probes of the first ``warmup`` seconds are not counted; ``achieved_rate`` is what the
    broker acknowledged per second, load and probes together.
    """
    load = await LoadProcess.start(bootstrap, topic, rate - probes_per_s, warmup + seconds)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    latencies: list[float] = []
    rng = random.Random(5)

    async def probe(member: str, counted: bool) -> None:
        took = await probe_freshness(producer, client, worker.url, topic, member, give_up=10)
        if counted and took is not None:
            latencies.append(took)

    probes: list[asyncio.Future[None]] = []
    started = time.perf_counter()
    broker_cpu: tuple[float, float | None] | None = None  # (when, CPU seconds) after warm-up
    try:
        while (elapsed := time.perf_counter() - started) < warmup + seconds:
            if broker_cpu is None and elapsed >= warmup and broker_pid:
                broker_cpu = (time.perf_counter(), cpu_seconds(broker_pid))
            while len(probes) < int(elapsed * probes_per_s):
                member = f"probe-{rng.randrange(1000)}"
                probes.append(asyncio.ensure_future(probe(member, elapsed >= warmup)))
            await asyncio.sleep(0.005)
        broker_end = (time.perf_counter(), cpu_seconds(broker_pid) if broker_pid else None)
        await asyncio.gather(*probes)
        probe_rate = len(probes) / (warmup + seconds)
    finally:
        await client.close()
        await producer.stop()
        background = await load.result()
    achieved = background["achieved_rate"] + probe_rate
    result = {"rate": rate, "achieved_rate": round(achieved), **_ms(percentiles(latencies))}
    if broker_cpu is not None and broker_cpu[1] is not None and broker_end[1] is not None:
        # The broker's share of a core while the load ran, per 1,000 actions/s of it.
        share = (broker_end[1] - broker_cpu[1]) / (broker_end[0] - broker_cpu[0])
        result["broker_cpu_percent"] = round(100 * share, 1)
        result["broker_cpu_percent_per_1k_actions_per_s"] = round(
            100 * share / (achieved / 1000), 2
        )
    return result


def _ms(stats: dict[str, float]) -> dict[str, float]:
    return {k: (v if k == "n" else round(v * 1000, 2)) for k, v in stats.items()}


async def _reads(
    worker: WorkerProcess, members: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Open-loop GETs of random members' features at ``rate`` per second.

    The client is aiohttp: httpx costs ~1 ms of CPU a request, and on two shared cores
    the load generator, not the worker, then sets the latency.
    """
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=5)
    )
    rng = random.Random(9)
    errors = 0

    async def one(_: int) -> None:
        nonlocal errors
        member = f"member-{rng.randrange(members)}"
        async with client.get(f"{worker.url}/v1/members/{member}/features") as response:
            await response.read()
        errors += response.status != 200

    latencies = await open_loop(one, rate, seconds)
    await client.close()
    return {"rate": rate, "errors": errors, **_ms(percentiles(latencies))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--fresh-rate", type=float, nargs="*", default=[1000.0])
    parser.add_argument("--read-rate", type=float, nargs="*", default=[200.0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--partitioner",
        choices=["kafka", "librdkafka"],
        default="kafka",
        help="how the pre-loaded actions are placed: Kafka's default (murmur2), or "
        "librdkafka's (CRC32), most of which the worker then repartitions",
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with EmbeddedBroker() as broker:
        stack = Stack.isolated(broker)
        try:
            preloaded_s = preload_actions(stack, args.actions, args.members, args.partitioner)
            print(f"pre-loaded {args.actions:,} actions in {preloaded_s:.1f} s")
            result = ingest(stack, args.actions, args.members)
            worker = result.pop("worker")
            print(f"ingest: {result}")
            for rate in args.read_rate:
                reads = asyncio.run(_reads(worker, args.members, rate, args.seconds))
                print(f"features read: {reads}")
            for rate in args.fresh_rate:
                fresh = asyncio.run(
                    _freshness(
                        worker,
                        broker.bootstrap,
                        stack.topic,
                        rate,
                        args.seconds,
                        broker_pid=broker.pid,
                    )
                )
                print(f"freshness: {fresh}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
