"""Join at ingest vs join at read: ingest rate, features-read latency, bytes per member.

Run: ``python -m bench.joins [--dims 64 1000]``. One worker per configuration on the
embedded broker; items arrive through the item-attributes topic, then pre-loaded actions.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

import rocksdict

from bench.harness import Stack, machine, preload
from bench.spine import _reads
from nearline.app.broker import EmbeddedBroker
from nearline.app.traffic import generate_actions
from nearline.foundation import codec


def _items(count: int, dim: int, seed: int = 3) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    records = []
    for n in range(count):
        body = {
            "item_id": f"item-{n}",
            "embedding": [round(rng.gauss(0, 1), 5) for _ in range(dim)],
            "geo": {"lat": 52.0 + rng.random(), "lon": 4.0 + rng.random(), "region": "nl"},
            "attributes": {"category": f"c{n % 12}", "company": f"co{n % 40}"},
        }
        records.append((body["item_id"].encode(), codec.dumps(body)))
    return records


def _bytes_per_member(data_dir: Path) -> float:
    sizes = []
    for path in data_dir.rglob("members-*.db"):
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        try:
            sizes.extend(len(v) for k, v in db.items() if not k.startswith((b"__faust", b"\0")))
        finally:
            db.close()
    return sum(sizes) / max(1, len(sizes))


def run(broker: Any, dim: int, mode: str, actions: int, members: int, items: int) -> dict[str, Any]:
    ingest_fields = "category,company,geo" + (",embedding" if mode == "ingest" else "")
    read_fields = "embedding" if mode == "read" else ""
    stack = Stack.isolated(
        broker,
        embedding_dim=str(dim),
        join_at_ingest=ingest_fields,
        join_at_read=read_fields,
    )
    try:
        stack.create_topics()
        topic = stack.settings["NEARLINE_TOPIC_ITEM_ATTRIBUTES"]
        asyncio.run(preload(broker.bootstrap, topic, _items(items, dim)))
        worker = stack.start_worker()
        worker.wait_for_metric('nearline_attribute_records_total{outcome="upserted"}', items)
        records = [
            (e.member_id.encode(), e.to_json())
            for e in generate_actions(actions, members=members, items=items, seed=5)
        ]
        asyncio.run(preload(broker.bootstrap, stack.topic, records))
        started = time.perf_counter()
        worker.wait_for_metric("nearline_events_in_total", actions, every=0.05)
        ingest_s = time.perf_counter() - started
        reads = asyncio.run(_reads(worker, members, 100.0, 6.0))
        worker.stop()
        return {
            "dim": dim,
            "join": mode,
            "ingest_per_s": round(actions / ingest_s),
            "read_p50_ms": reads["p50"],
            "read_p99_ms": reads["p99"],
            "bytes_per_member": round(_bytes_per_member(worker.data_dir)),
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--actions", type=int, default=30_000)
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=2_000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = []
    with EmbeddedBroker() as broker:
        for dim in args.dims:
            for mode in ("ingest", "read"):
                row = run(broker, dim, mode, args.actions, args.members, args.items)
                print(row, flush=True)
                rows.append(row)
    print("\n| embedding dim | joined at | ingest/s | features read p50 | p99 | bytes/member |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['dim']} | {r['join']} | {r['ingest_per_s']} | {r['read_p50_ms']} ms "
            f"| {r['read_p99_ms']} ms | {r['bytes_per_member']} |"
        )


if __name__ == "__main__":
    main()
