"""A member's state in chunks, through the online store on real RocksDB (no broker): every
step equals the oracle, and every prefix of a write reads as the state before or after it."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nearline.foundation.kafka import partition_for_key
from nearline.tables.changelog import LocalTable
from nearline.tables.member_state import (
    Applied,
    MemberState,
    RecentAction,
    StatePolicy,
    _first_in_bucket_after,
)
from nearline.tables.online_store import OnlineStore
from tests.legacy_layout import legacy_value
from tests.oracle import expected_features, served_view

INTEREST = ("view", "click", "dismiss")
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "96h": 345600.0}
POLICY = StatePolicy(
    windows=tuple(WINDOWS.values()),
    retention=345600.0,
    bucket=60.0,
    max_recent_actions=12,
    actions_of_interest=INTEREST,
)
T = 1_800_000_000.0
PARTITIONS = 2


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OnlineStore]:
    table = LocalTable(str(tmp_path / "members"), PARTITIONS)
    yield OnlineStore(table, POLICY, PARTITIONS)  # type: ignore[arg-type]
    table.close()


def events(
    n: int,
    members: int,
    *,
    now: float,
    seed: int,
    spread: float,
    age: float = 0.0,
    prefix: str = "m",
) -> list[dict[str, Any]]:
    """``n`` actions (and some retries) of the ``spread`` seconds ``age`` before ``now``."""
    rng = random.Random(seed)
    made: list[dict[str, Any]] = []
    for _ in range(n):
        made.append(
            {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "member_id": f"{prefix}{rng.randrange(members)}",
                "item_id": f"i{rng.randrange(50)}",
                "action": rng.choice(INTEREST),
                "ts": round(now - age - rng.random() * spread, 3),
            }
        )
        if rng.random() < 0.05:  # a producer retry
            made.append(dict(made[-1]))
    return made


def ingest(store: OnlineStore, batch: list[dict[str, Any]], first_offset: int, now: float) -> None:
    """What the ingest agent does with a batch: load, apply, prune, write each member."""
    updates: dict[int, dict[bytes, MemberState]] = {}
    for n, e in enumerate(batch):
        key = e["member_id"].encode()
        partition = partition_for_key(key, PARTITIONS)
        states = updates.setdefault(partition, {})
        state = states.get(key) or store.load(partition, key) or MemberState()
        state.apply(
            RecentAction(e["event_id"], e["item_id"], e["action"], e["ts"]),
            offset=first_offset + n,
            applied_at=now,
            policy=POLICY,
        )
        state.prune(now, POLICY)
        states[key] = state
    asyncio.run(store.write(updates))


def assert_oracle(store: OnlineStore, applied: list[dict[str, Any]], as_of: float) -> None:
    expected = expected_features(
        applied,
        as_of=as_of,
        windows=WINDOWS,
        retention=POLICY.retention,
        bucket=POLICY.bucket,
        max_recent=POLICY.max_recent_actions,
        actions_of_interest=INTEREST,
    )
    for member, view in expected.items():
        assert served_view(store.features(member, as_of)) == view, member


def test_members_growing_past_many_chunks_retired_pruned_and_swept_equal_the_oracle(
    store: OnlineStore,
) -> None:
    now = T
    # Out of order within 20 h 70 h ago, then within the last 10 h: chunks hold events of
    # many times, and retiring must keep every chunk with a served row.
    made = events(700, members=6, now=now, seed=1, spread=20 * 3600, age=70 * 3600)
    # Members with fewer actions than the cap keep them all in chunks: their old ones expire.
    made += events(60, members=4, now=now, seed=3, spread=20 * 3600, age=70 * 3600, prefix="q")
    rng = random.Random(4)
    rng.shuffle(made)
    made += events(800, members=6, now=now, seed=2, spread=10 * 3600)
    made += events(20, members=4, now=now, seed=5, spread=10 * 3600, prefix="q")
    offset = 0
    while offset < len(made):
        size = rng.choice((1, 1, 1, 2, 5, 30))
        ingest(store, made[offset : offset + size], offset, now)
        offset += size
        if offset % 50 < size:
            assert_oracle(store, made[:offset], now)
    assert_oracle(store, made, now)
    # Every event again, at later offsets: all duplicates, nothing counted twice.
    again = store.load(partition_for_key(b"m0", PARTITIONS), b"m0")
    assert again is not None
    for n, e in enumerate(x for x in made if x["member_id"] == "m0"):
        outcome = again.apply(
            RecentAction(e["event_id"], e["item_id"], e["action"], e["ts"]),
            offset=10_000 + n,
            applied_at=now,
            policy=POLICY,
        )
        assert outcome is Applied.DUPLICATE
    table = store.table
    keys_before = sum(1 for p in range(PARTITIONS) for _ in table.db(p).keys())
    # The sweep, 30 h on: chunks whose events have all left the 96 h retention are deleted.
    later = now + 30 * 3600
    pruned, deleted = asyncio.run(store.sweep(later))
    assert pruned > 0 and deleted == 0
    assert sum(1 for p in range(PARTITIONS) for _ in table.db(p).keys()) < keys_before
    assert_oracle(store, made, later)
    # After the retention everything goes, with a tombstone for every key.
    pruned, deleted = asyncio.run(store.sweep(now + 100 * 3600))
    assert deleted == 10
    assert [k for p in range(PARTITIONS) for k in table.db(p).keys()] == []


def test_every_prefix_of_a_write_reads_as_the_state_before_or_after_it(tmp_path: Path) -> None:
    """A changelog cut short by a crash restores a prefix of a write's records: it must read
    as the member before the write or after it, never as a mix (rows twice, counts lost)."""
    table = LocalTable(str(tmp_path / "prefixes"), 1)
    # Two hours kept, ids for one: chunks expire during the run, as well as retire.
    policy = dataclasses.replace(
        POLICY,
        max_recent_actions=5,
        windows=(3600.0, 7200.0),
        retention=7200.0,
        dedupe_window=3600.0,
    )
    rng = random.Random(3)
    member = b"m"
    seen_kinds = {"merge": False, "retire": False, "prune": False, "legacy": False}
    rows = [["old", "i", "click", T - 30, None, None]]
    table.write_locally(0, {member: legacy_value([-1, -1], T - 30, T - 30, [], {}, rows)})
    try:
        for step in range(160):
            now = T + step * 600  # ten minutes a batch: chunks expire during the run
            state = MemberState.from_records(member, table.scan(0, member, member + b"\1"), policy)
            assert state is not None
            before = _view(state, now, policy)
            for n in range(rng.choice((1, 1, 2, 7))):
                e = RecentAction(
                    f"e{step}-{n}", "i", rng.choice(INTEREST), now - rng.random() * 3600
                )
                state.apply(e, offset=step * 10 + n, applied_at=now, policy=policy)
            pruned = state.prune(now, policy)
            records = state.records(member, policy)
            after = _view(state, now, policy)
            retired = any(k.endswith(b"\0\0\0\0\0") and v for k, v in records.items())
            deletes = any(v is None for v in records.values())
            seen_kinds["merge"] |= deletes and not retired and not pruned
            seen_kinds["retire"] |= retired
            seen_kinds["prune"] |= pruned
            seen_kinds["legacy"] |= member in records
            for key, value in records.items():
                table.write_locally(0, {key: value})
                cut = MemberState.from_records(
                    member, table.scan(0, member, member + b"\1"), policy
                )
                assert cut is not None
                assert _view(cut, now, policy) in (before, after), (step, key)
            assert cut is not None and _view(cut, now, policy) == after
    finally:
        table.close()
    assert all(seen_kinds.values()), seen_kinds


def _view(state: MemberState, now: float, policy: StatePolicy) -> tuple[Any, ...]:
    features = state.features("m", now, policy)
    return (features["recent_actions"], features["counts"], state.last_offsets)


def test_features_far_in_the_future_are_answered() -> None:
    """A read as of a time where a bucket step no longer changes a float must still end."""
    times = [1.0, 61.0, 121.0]
    for edge in (1e99, 1e300, 2.0**60):
        assert _first_in_bucket_after(times, math.floor(edge / 60), edge, 60.0) == 3
        assert _first_in_bucket_after(times, math.floor(edge / 60), edge, 60.0, ends=True) == 3


def test_a_partition_lost_while_its_batch_was_built_is_not_written(tmp_path: Path) -> None:
    """After a rebalance, a member's chunks are its new owner's to number and write."""

    class Revoked(LocalTable):
        def owns(self, partition: int) -> bool:
            return partition != 1

    table = Revoked(str(tmp_path / "revoked"), 2)
    store = OnlineStore(table, POLICY, 2)
    states = [MemberState(), MemberState()]
    for state in states:
        state.apply(
            RecentAction("e1", "i1", "click", 1000.0), offset=0, applied_at=1000.0, policy=POLICY
        )
    asyncio.run(store.write({0: {b"kept": states[0]}, 1: {b"lost": states[1]}}))
    assert store.load(0, b"kept") is not None
    assert list(table.scan(1, b"", b"\xff")) == []


def test_a_batch_whose_fetch_stopped_being_current_writes_nothing_more(tmp_path: Path) -> None:
    """From the start of a rebalance or a shutdown, before the assignor says so, a batch
    already built writes no member state: its records are read again and applied then."""
    table = LocalTable(str(tmp_path / "fenced"), 3)
    store = OnlineStore(table, POLICY, 3)
    state = MemberState()
    state.apply(
        RecentAction("e1", "i1", "click", 1000.0), offset=0, applied_at=1000.0, policy=POLICY
    )
    checks = iter([True, False])  # the flow stops while the first partition is written

    async def write() -> None:
        updates = {0: {b"first": state}, 1: {b"second": state}, 2: {b"third": state}}
        await (await store.send(updates, current=lambda: next(checks, False)))

    asyncio.run(write())
    assert store.load(0, b"first") is not None
    assert list(table.scan(1, b"", b"\xff")) == []
    assert list(table.scan(2, b"", b"\xff")) == []
