"""The embedded broker's fetch cost as a partition grows, with one record per batch and batched.

The embedded profile's producers send one record per batch, so the broker's "latest offset"
(the base offset of the last batch + 1) is exact. This shows what that costs: the broker keeps
every record, and a fetch near a partition's end takes time in proportion to the batches in
it. Each step appends ``--step`` records of 100 bytes to one partition, then times ``--fetches``
fetches of its last ten records from a fresh consumer (median and p99, milliseconds).

    python -m bench.broker_fetch [--steps 6] [--step 20000] [--fetches 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.harness import machine
from nearline.app.broker import EmbeddedBroker
from nearline.foundation.broker_workarounds import EMBEDDED_MAX_BATCH_BYTES

#: aiokafka's default producer batch (what a client that needs no exact end offset sends).
BATCHED_BYTES = 16384


async def fetch_times(
    bootstrap: str, topic: str, max_batch_bytes: int, steps: int, step: int, fetches: int
) -> list[tuple[int, float, float]]:
    """(records in the partition, median ms, p99 ms) after each step."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_batch_size=max_batch_bytes, linger_ms=5
    )
    await producer.start()
    partition = TopicPartition(topic, 0)
    rows = []
    total = 0
    try:
        for _ in range(steps):
            sent = [await producer.send(topic, b"x" * 100, partition=0) for _ in range(step)]
            await asyncio.gather(*sent)
            total += step
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
            await consumer.start()
            try:
                consumer.assign([partition])
                times = []
                for _ in range(fetches):
                    consumer.seek(partition, total - 10)
                    started = time.perf_counter()
                    got = await consumer.getmany(partition, timeout_ms=5000)
                    times.append((time.perf_counter() - started) * 1000)
                    if not got.get(partition):
                        raise RuntimeError(f"no records fetched from {topic} at {total - 10}")
            finally:
                await consumer.stop()
            times.sort()
            rows.append((total, statistics.median(times), times[int(len(times) * 0.99)]))
    finally:
        await producer.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="times records are appended")
    parser.add_argument("--step", type=int, default=20_000, help="records appended per step")
    parser.add_argument("--fetches", type=int, default=20, help="fetches timed per step")
    args = parser.parse_args()
    print(f"embedded broker, one partition, 100-byte records ({machine()})")
    print("| records | one record per batch: median / p99 ms | batched: median / p99 ms |")
    print("| --- | --- | --- |")
    with EmbeddedBroker() as broker:
        single, batched = [
            asyncio.run(
                fetch_times(broker.bootstrap, topic, size, args.steps, args.step, args.fetches)
            )
            for topic, size in (("one", EMBEDDED_MAX_BATCH_BYTES), ("batched", BATCHED_BYTES))
        ]
    for (total, s50, s99), (_, b50, b99) in zip(single, batched, strict=True):
        print(f"| {total:,} | {s50:.1f} / {s99:.1f} | {b50:.1f} / {b99:.1f} |")


if __name__ == "__main__":
    main()
