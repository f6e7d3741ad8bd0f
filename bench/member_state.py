"""Member-state cost: CPU per action ingested, changelog bytes per action, CPU per features read.

Run: ``python -m bench.member_state [--actions 200000] [--members 10000] [--batch N]
[--spread S]``. In process, no broker: the online store on real RocksDB partitions (no
changelog; the bytes counted are the records a worker would send to it). Ingest is what the
agent does with a batch: per member touched, one read, the actions applied, a prune, one
write. ``--batch`` actions per batch (default ``NEARLINE_BATCH_MAX``): a small batch touches
each member once, the case where a member's writes cost the most per action. ``--spread``
back-dates events uniformly over that many seconds (default 3600: out of order). Then every
member's features are read. CPU time, best of ``--repeat`` runs, so other processes on the
machine disturb it little.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import tempfile
import time
from typing import Any

from bench.harness import machine
from nearline.app.compose import state_policy
from nearline.app.traffic import generate_actions
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.settings import load_settings
from nearline.tables.changelog import LocalTable
from nearline.tables.member_state import MemberState, RecentAction
from nearline.tables.online_store import OnlineStore

PARTITIONS = 4

Batch = dict[bytes, list[tuple[int, RecentAction]]]


def ingest(store: OnlineStore, batches: list[Batch], now: float) -> float:
    """Apply every batch as the ingest agent does; returns the CPU seconds it took."""
    policy = store.policy
    loop = asyncio.new_event_loop()
    started = time.process_time()
    for batch in batches:
        updates: dict[int, dict[bytes, MemberState]] = {}
        for key, actions in batch.items():
            partition = partition_for_key(key, PARTITIONS)
            state = store.load(partition, key) or MemberState()
            for offset, action in actions:
                state.apply(action, offset=offset, applied_at=now, policy=policy)
            state.prune(now, policy)
            updates.setdefault(partition, {})[key] = state
        loop.run_until_complete(store.write(updates))  # type: ignore[arg-type]
    seconds = time.process_time() - started
    loop.close()
    return seconds


def reads(store: OnlineStore, members: list[str], now: float) -> float:
    """CPU seconds per features read of every member."""
    started = time.process_time()
    for member in members:
        store.features(member, now)
    return (time.process_time() - started) / len(members)


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(max_recent_actions=args.max_recent)
    policy = state_policy(settings)
    now = time.time()
    events = generate_actions(
        args.actions, members=args.members, items=50_000, seed=11, spread=args.spread
    )
    batch_size = args.batch or settings.batch_max
    batches: list[Batch] = [{}]
    for offset, e in enumerate(events):
        if offset and offset % batch_size == 0:
            batches.append({})
        action = RecentAction(e.event_id, e.item_id, e.action, e.ts, dict(e.attributes))
        batches[-1].setdefault(e.member_id.encode(), []).append((offset, action))
    members = sorted({key.decode() for batch in batches for key in batch})
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)  # as the worker runs
    ingest_cpu = read_cpu = float("inf")
    for _ in range(args.repeat):
        path = tempfile.mkdtemp(prefix="bench-member-state-")
        table = LocalTable(path, PARTITIONS)
        try:
            store = OnlineStore(table, policy, PARTITIONS)  # type: ignore[arg-type]
            ingest_cpu = min(ingest_cpu, ingest(store, batches, now))
            for _ in range(3):
                read_cpu = min(read_cpu, reads(store, members, now))
            written, records = table.bytes, table.records
            keys = sum(1 for p in range(PARTITIONS) for _ in table.db(p).keys())
        finally:
            table.close()
            shutil.rmtree(path, ignore_errors=True)
    return {
        "actions": args.actions,
        "members": len(members),
        "actions_per_member": round(args.actions / len(members)),
        "max_recent_actions": args.max_recent,
        "batch": batch_size,
        "ingest_us_per_action": round(ingest_cpu / args.actions * 1e6, 2),
        "changelog_bytes_per_action": round(written / args.actions),
        "changelog_records_per_action": round(records / args.actions, 2),
        "keys_per_member": round(keys / len(members), 1),
        "features_read_us": round(read_cpu * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=0, help="actions per batch")
    parser.add_argument("--spread", type=float, default=3600.0, help="seconds back-dated")
    parser.add_argument("--max-recent", type=int, default=100, help="NEARLINE_MAX_RECENT_ACTIONS")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    result = run(args)
    print(
        f"{result['actions']:,} actions over {result['members']:,} members "
        f"(~{result['actions_per_member']} each, batches of {result['batch']:,}): "
        f"{result['ingest_us_per_action']:.2f} µs CPU per action ingested, "
        f"{result['changelog_bytes_per_action']:,} changelog bytes per action, "
        f"{result['keys_per_member']} keys per member, "
        f"{result['features_read_us']:.1f} µs CPU per features read"
    )


if __name__ == "__main__":
    main()
