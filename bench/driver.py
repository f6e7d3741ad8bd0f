"""Open-loop HTTP load from a process of its own: features reads, recommendations, probes.

Started by the soak, ``bench.capacity`` and ``bench.isolation`` through :class:`Driver`, so
that the load competes with the worker for the cores as a client on another machine would
not, but is never slowed by the benchmark's own bookkeeping (chaos, sampling). By hand:
``python -m bench.driver URL --seconds 10 --reads-rate 500``. It prints ``{"ready": true}``
once every request body is encoded and the probes' producer is connected, then waits for
one line on stdin: the start, a ``time.perf_counter()`` value (CLOCK_MONOTONIC on Linux, the
same clock in every process), or an empty line for "now". Each load then runs open-loop for
``seconds`` from that start, latency counted from when each request was due; the closing
JSON line has every load's samples (:class:`bench.harness.Samples`) and the probe actions
the broker acknowledged (what the online store must count); with ``--out FILE``, in that
file, and the line says where.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiokafka import AIOKafkaProducer

from bench.harness import ANSWERED, FAILED, Samples, outcome, paced, probe_freshness
from bench.load import BenchProcess
from nearline.foundation import codec

#: Connections the driver keeps to the server at most: past it, requests queue in the
#: driver, and their wait counts (latency runs from when a request was due).
CONNECTIONS = 256
#: Seconds a request may take before it counts as failed.
TIMEOUT = 10.0
#: The load names in the driver's result, in the order they are reported.
LOADS = ("freshness", "features", "recommendations")


async def reads(
    client: aiohttp.ClientSession, url: str, rate: float, seconds: float, start: float, members: int
) -> Samples:
    """GETs of random members' features."""
    rng = random.Random(9)

    async def one(_: int) -> str:
        member = f"member-{rng.randrange(members)}"
        async with client.get(f"{url}/v1/members/{member}/features") as response:
            return outcome(response.status, await response.read())

    return await paced(one, rate, seconds, start)


def recommendation_bodies(count: int, members: int, items: int, candidates: int) -> list[bytes]:
    """Request bodies, encoded before the clock starts: ``candidates`` random items each."""
    rng = random.Random(4)
    return [
        codec.dumps(
            {
                "member_id": f"member-{rng.randrange(members)}",
                "candidates": [f"item-{i}" for i in rng.sample(range(items), candidates)],
                "k": 20,
            }
        )
        for _ in range(count)
    ]


async def recommendations(
    client: aiohttp.ClientSession, url: str, bodies: list[bytes], rate: float, start: float
) -> Samples:
    async def one(n: int) -> str:
        async with client.post(f"{url}/v1/recommendations", data=bodies[n]) as response:
            return outcome(response.status, await response.read())

    return await paced(one, rate, len(bodies) / rate, start)


async def freshness(
    client: aiohttp.ClientSession,
    producer: AIOKafkaProducer,
    url: str,
    topic: str,
    rate: float,
    seconds: float,
    start: float,
    acked: list[tuple[str, str]],
) -> Samples:
    """Produce → visible over HTTP, for probe actions among the load; each probe the broker
    acknowledged goes to ``acked`` as (member, action)."""
    rng = random.Random(5)

    async def one(_: int) -> str:
        member = f"probe-{rng.randrange(1000)}"
        took = await probe_freshness(producer, client, url, topic, member)
        acked.append((member, "click"))
        return FAILED if took is None else ANSWERED

    return await paced(one, rate, seconds, start)


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONNECTIONS),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
    )
    producer = None
    if args.probes_per_s > 0:
        producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=1)
        await producer.start()
    bodies = recommendation_bodies(
        int(args.recs_rate * args.seconds), args.members, args.items, args.candidates
    )
    print(json.dumps({"ready": True}), flush=True)
    line = (await asyncio.to_thread(sys.stdin.readline)).strip()
    start = float(line) if line else time.perf_counter()
    acked: list[tuple[str, str]] = []
    loads: dict[str, Any] = {}
    if producer is not None:
        loads["freshness"] = freshness(
            client, producer, args.url, args.topic, args.probes_per_s, args.seconds, start, acked
        )
    if args.reads_rate > 0:
        loads["features"] = reads(
            client, args.url, args.reads_rate, args.seconds, start, args.members
        )
    if bodies:
        loads["recommendations"] = recommendations(client, args.url, bodies, args.recs_rate, start)
    try:
        done = await asyncio.gather(*loads.values())
    finally:
        await client.close()
        if producer is not None:
            await producer.stop()
    result = {name: samples.to_json() for name, samples in zip(loads, done, strict=True)}
    return {"start": start, "samples": result, "probes_acked": acked}


class Driver(BenchProcess):
    """``python -m bench.driver`` in a process of its own (see the module's doc)."""

    @classmethod
    async def prepare(
        cls,
        url: str,
        seconds: float,
        *,
        reads_rate: float = 0.0,
        recs_rate: float = 0.0,
        probes_per_s: float = 0.0,
        bootstrap: str = "",
        topic: str = "",
        members: int = 10_000,
        items: int = 5000,
    ) -> Driver:
        """Started and ready: bodies encoded, producer connected; waiting for :meth:`go`."""
        out = Path(tempfile.mkdtemp(prefix="nearline-driver-")) / "result.json"
        return await cls.launch(
            "bench.driver",
            *("--out", str(out)),
            *(url, "--seconds", str(seconds), "--reads-rate", str(reads_rate)),
            *("--recs-rate", str(recs_rate), "--probes-per-s", str(probes_per_s)),
            *("--bootstrap", bootstrap, "--topic", topic),
            *("--members", str(members), "--items", str(items)),
        )

    def go(self, start: float) -> None:
        """Start the loads, as of ``start`` (``time.perf_counter()``; may be a little past)."""
        self.tell(repr(start))

    async def samples(self) -> tuple[dict[str, Samples], list[tuple[str, str]]]:
        """Wait for the end; each load's samples and the probe actions acknowledged."""
        out = Path((await self.result())["out"])
        found = json.loads(out.read_text())
        out.unlink()
        out.parent.rmdir()
        samples = {name: Samples.from_json(data) for name, data in found["samples"].items()}
        return samples, [(member, action) for member, action in found["probes_acked"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, http://host:port")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reads-rate", type=float, default=500.0, help="features reads/s")
    parser.add_argument("--recs-rate", type=float, default=0.0, help="recommendations/s")
    parser.add_argument("--candidates", type=int, default=500, help="per recommendation")
    parser.add_argument("--probes-per-s", type=float, default=0.0, help="freshness probes/s")
    parser.add_argument("--bootstrap", default="", help="the broker, for the probes")
    parser.add_argument("--topic", default="", help="the actions topic, for the probes")
    parser.add_argument("--members", type=int, default=10_000, help="member-0 … member-N")
    parser.add_argument("--items", type=int, default=5000, help="item-0 … item-N")
    parser.add_argument("--out", type=Path, help="write the result here, not to stdout")
    args = parser.parse_args()
    result = json.dumps(uvloop.run(drive(args)))
    if args.out is None:
        print(result, flush=True)
        return
    # A file, not the pipe: after uvloop.run, a print of more than the pipe's 64 KiB to a
    # reader not yet reading was seen cut short at 64 KiB, silently and with exit code 0.
    args.out.write_text(result)
    print(json.dumps({"out": str(args.out)}), flush=True)


if __name__ == "__main__":
    main()
