"""Attribute store micro-benchmark: embedded batch get of 100 items, and bytes per record.

Run: ``python -m bench.attribute_store [--items 10000] [--reads 2000]``. For embedding
dimensions 64 and 1000 it loads ``--items`` items (embedding, geo, three categorical
attributes) into a fresh embedded store, then times ``get_many`` of 100 random ids
(RocksDB multi_get plus decoding) and prints medians and p99s in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from bench.harness import machine, percentiles
from nearline.attribute_store import (
    EmbeddedAttributeStore,
    ItemAttributes,
    encode_record,
    validate_item,
)

BATCH = 100
DIMS = (64, 1000)


@dataclass
class Result:
    dim: int
    items: int
    load_s: float
    get_p50_us: float
    get_p99_us: float
    encoded_bytes: float
    disk_bytes: float


def make_items(count: int, dim: int, seed: int) -> list[ItemAttributes]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim), dtype=np.float32).astype(np.float64)
    categories = ["engineering", "sales", "design", "finance", "support"]
    return [
        validate_item(
            {
                "item_id": f"job-{n}",
                "embedding": vectors[n].tolist(),
                "geo": {
                    "lat": float(rng.uniform(-60, 60)),
                    "lon": float(rng.uniform(-180, 180)),
                    "region": f"region-{n % 50}",
                },
                "category": categories[n % len(categories)],
                "company": f"company-{n % 700}",
                "seniority": ["junior", "mid", "senior"][n % 3],
            },
            dim,
        )
        for n in range(count)
    ]


async def measure(dim: int, count: int, reads: int, seed: int) -> Result:
    items = make_items(count, dim, seed)
    encoded = sum(len(encode_record(record)) for record in items) / count
    with tempfile.TemporaryDirectory(prefix="nearline-bench-") as data_dir:
        store = EmbeddedAttributeStore.in_data_dir(data_dir)
        started = time.perf_counter()
        for start in range(0, count, 1000):
            await store.put_many(items[start : start + 1000])
        load_s = time.perf_counter() - started
        store.compact()
        disk = store.disk_bytes() / count
        rng = random.Random(seed)
        ids = [record.item_id for record in items]
        for _ in range(50):  # warm the block cache and the allocator
            await store.get_many(rng.sample(ids, BATCH))
        samples = []
        for _ in range(reads):
            wanted = rng.sample(ids, BATCH)
            started_ns = time.perf_counter_ns()
            found = await store.get_many(wanted)
            samples.append((time.perf_counter_ns() - started_ns) / 1000)
            assert len(found) == BATCH
        await store.close()
    stats = percentiles(samples)
    return Result(dim, count, load_s, stats["p50"], stats["p99"], encoded, disk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    print(f"embedded attribute store, {args.items} items, get_many of {BATCH} ids; {machine()}")
    print()
    print(
        "| dim | load (items/s) | get 100 p50 (µs) | get 100 p99 (µs) | JSON bytes/item "
        "| on disk bytes/item |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for dim in DIMS:
        r = asyncio.run(measure(dim, args.items, args.reads, args.seed))
        print(
            f"| {r.dim} | {r.items / r.load_s:,.0f} | {r.get_p50_us:,.0f} | {r.get_p99_us:,.0f} "
            f"| {r.encoded_bytes:,.0f} | {r.disk_bytes:,.0f} |"
        )


if __name__ == "__main__":
    main()
