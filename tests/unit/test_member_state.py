"""Windowing, expiry and replay safety of a member's state, stored in real RocksDB, without a
broker."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from nearline.app.compose import state_policy
from nearline.foundation import codec
from nearline.foundation.settings import load_settings
from nearline.tables.changelog import LocalTable
from nearline.tables.member_state import (
    CHUNK_ROWS,
    Applied,
    MemberState,
    RecentAction,
    Source,
    StatePolicy,
    member_range,
)
from tests.legacy_layout import legacy_value

POLICY = StatePolicy(
    windows=(3600.0, 86400.0, 345600.0),
    retention=345600.0,
    bucket=60.0,
    max_recent_actions=3,
    actions_of_interest=("click", "dismiss"),
)
T = 1_800_000_000.0  # a multiple of 60: bucket edges are easy to reason about


def action(n: int, ts: float, kind: str = "click") -> RecentAction:
    return RecentAction(f"e{n}", f"i{n}", kind, ts)


@pytest.fixture
def table(tmp_path: Path) -> Iterator[LocalTable]:
    local = LocalTable(str(tmp_path / "members"), partitions=1)
    yield local
    local.close()


def stored(table: LocalTable, state: MemberState, policy: StatePolicy = POLICY) -> MemberState:
    """Write what changed in ``state`` to RocksDB and read the member back."""
    table.write_locally(0, state.records(b"m", policy))
    return load(table, policy)


def load(table: LocalTable, policy: StatePolicy = POLICY) -> MemberState:
    state = MemberState.from_records(b"m", table.scan(0, *member_range(b"m")), policy)
    assert state is not None
    return state


def keys(table: LocalTable) -> list[bytes]:
    return [key for key, _ in table.scan(0, *member_range(b"m"))]


def test_counts_fall_into_the_windows_their_event_time_decides() -> None:
    state = MemberState()
    for offset, (ts, kind) in enumerate(
        [
            (T - 30, "click"),
            (T - 7200, "click"),
            (T - 2 * 86400, "dismiss"),
            (T - 50 * 3600, "click"),
        ]
    ):
        assert (
            state.apply(action(offset, ts, kind), offset=offset, applied_at=T, policy=POLICY)
            is Applied.APPLIED
        )
    counts = state.features("m", T, POLICY)["counts"]
    assert counts["1h"] == {"click": 1, "dismiss": 0}
    assert counts["24h"] == {"click": 2, "dismiss": 0}
    assert counts["96h"] == {"click": 3, "dismiss": 1}


def test_a_bucket_counts_while_it_overlaps_the_window() -> None:
    state = MemberState()
    state.apply(
        action(0, T - 3600 - 30), offset=0, applied_at=T, policy=POLICY
    )  # bucket [T-3660, T-3600)
    assert state.features("m", T, POLICY)["counts"]["1h"]["click"] == 0
    assert state.features("m", T - 1, POLICY)["counts"]["1h"]["click"] == 1


def test_replays_and_duplicate_ids_change_nothing(table: LocalTable) -> None:
    state = MemberState()
    state.apply(action(1, T - 5), offset=10, applied_at=T, policy=POLICY)
    state = stored(table, state)
    assert state.apply(action(1, T - 5), offset=10, applied_at=T, policy=POLICY) is Applied.REPLAYED
    assert state.apply(action(2, T - 4), offset=9, applied_at=T, policy=POLICY) is Applied.REPLAYED
    assert state.records(b"m", POLICY) == {}  # nothing to write
    assert (
        state.apply(action(1, T - 5), offset=11, applied_at=T, policy=POLICY) is Applied.DUPLICATE
    )
    assert state.features("m", T, POLICY)["counts"]["1h"]["click"] == 1


def test_offsets_of_the_two_sources_are_kept_apart() -> None:
    state = MemberState()
    assert state.apply(action(1, T - 5), offset=50, applied_at=T, policy=POLICY) is Applied.APPLIED
    # Offset 7 of the repartition topic says nothing about offset 50 of the actions topic.
    repartitioned = state.apply(
        action(2, T - 4), offset=7, applied_at=T, policy=POLICY, source=Source.REPARTITION
    )
    assert repartitioned is Applied.APPLIED
    again = state.apply(
        action(2, T - 4), offset=7, applied_at=T, policy=POLICY, source=Source.REPARTITION
    )
    assert again is Applied.REPLAYED
    assert state.apply(action(3, T - 3), offset=8, applied_at=T, policy=POLICY) is Applied.REPLAYED
    assert state.last_offsets == [50, 7]
    # A forward sent twice (a crash between the send and the commit) is a repeated id.
    twice = state.apply(
        action(2, T - 4), offset=9, applied_at=T, policy=POLICY, source=Source.REPARTITION
    )
    assert twice is Applied.DUPLICATE
    assert state.features("m", T, POLICY)["counts"]["1h"]["click"] == 2


def test_a_retry_counts_once_beyond_the_recent_actions_cap_and_out_of_order() -> None:
    state = MemberState()
    for n in range(10):  # the cap is 3: e0 (the oldest by event time) is long gone from the list
        state.apply(action(n, T - 1000 + n), offset=n, applied_at=T + n, policy=POLICY)
    assert "e0" not in [a.event_id for a in state.recent_actions(POLICY)]
    assert state.apply(action(0, T - 1000), offset=20, applied_at=T + 60, policy=POLICY) is (
        Applied.DUPLICATE
    )
    # An event older by event time than everything kept is still a new id.
    assert state.apply(action(99, T - 5000), offset=21, applied_at=T + 60, policy=POLICY) is (
        Applied.APPLIED
    )
    assert state.features("m", T, POLICY)["counts"]["96h"]["click"] == 11


def test_ids_are_remembered_for_the_dedupe_window_and_survive_storage(table: LocalTable) -> None:
    state = MemberState()
    state.apply(action(0, T - 10), offset=0, applied_at=T, policy=POLICY)
    state.prune(T + 3600, POLICY)
    restored = stored(table, state)
    assert restored.apply(action(0, T - 10), offset=1, applied_at=T + 86000, policy=POLICY) is (
        Applied.DUPLICATE
    )
    # After the window (and at most 1/24 of it more) the id is forgotten, though its chunk
    # stays while its action is within the retention.
    later = T + 86400 + 3600
    restored = stored(table, restored)
    assert restored.prune(later, POLICY) is False
    assert restored.apply(action(0, T - 10), offset=2, applied_at=later, policy=POLICY) is (
        Applied.APPLIED
    )


def test_ids_per_member_are_capped_oldest_first(table: LocalTable) -> None:
    policy = dataclasses.replace(POLICY, dedupe_max_ids=5)
    state = MemberState()
    for n in range(8):  # arrivals an hour apart: each in a bucket of its own
        state.apply(action(n, T - 10), offset=n, applied_at=T + n * 3600, policy=policy)
        state = stored(table, state, policy)
    state.prune(T + 8 * 3600, policy)
    outcomes = [
        state.apply(action(n, T - 10), offset=10 + n, applied_at=T + 9 * 3600, policy=policy)
        for n in range(8)
    ]
    assert outcomes[:3] == [Applied.APPLIED] * 3  # the three oldest ids were forgotten
    assert outcomes[3:] == [Applied.DUPLICATE] * 5


def test_a_value_written_before_the_repartition_topic_still_reads() -> None:
    old = codec.dumps({"o": 12, "t": T, "p": T, "a": [["e", "i", "click", T, None, None]], "b": []})
    state = MemberState.from_records(b"m", [(b"m", old)], POLICY)
    assert state is not None
    assert state.last_offsets == [12, -1] and state.seen == {}
    assert state.apply(action(1, T), offset=12, applied_at=T, policy=POLICY) is Applied.REPLAYED
    assert [a.event_id for a in state.recent_actions(POLICY)] == ["e"]


def test_a_value_of_the_single_json_layout_reads_and_is_rewritten_in_chunks(
    table: LocalTable,
) -> None:
    rows = [
        ["e1", "i", "click", T - 5, {"geo": "nl"}, True],
        ["e0", "i", "click", T - 9, None, None],
    ]
    bucket = POLICY.bucket_of(T - 5)
    old = codec.dumps(
        {"o": [4, -1], "t": T - 5, "p": T, "a": rows, "b": [[bucket, {"click": 2}]], "d": []}
    )
    table.write_locally(0, {b"m": old})
    state = load(table)
    assert [a.event_id for a in state.recent_actions(POLICY)] == ["e0", "e1"]
    state.apply(action(2, T - 1), offset=5, applied_at=T, policy=POLICY)
    again = stored(table, state)
    assert b"m" not in keys(table) and keys(table)  # the older key is gone, chunks hold it
    assert [a.event_id for a in again.recent_actions(POLICY)] == ["e0", "e1", "e2"]
    assert again.recent_actions(POLICY)[1].attributes == {"geo": "nl"}
    assert again.features("m", T, POLICY)["counts"]["1h"]["click"] == 3


def test_a_value_of_the_header_and_rows_layout_reads_and_migrates_exactly(
    table: LocalTable,
) -> None:
    """Counts of actions trimmed from the rows, ids and offsets all survive the move."""
    rows = [["e5", "i", "click", T - 50, None, None], ["e6", "i", "view", T - 40, None, None]]
    # Four clicks counted, two of them trimmed from the rows long ago; e1's id remembered.
    buckets = [[POLICY.bucket_of(T - 50), {"click": 3}], [POLICY.bucket_of(T - 7000), {"click": 1}]]
    seen = {math.floor(T * 24 / POLICY.dedupe_window): ["e1"]}
    table.write_locally(0, {b"m": legacy_value([7, 2], T - 40, T - 30, buckets, seen, rows)})
    policy = dataclasses.replace(POLICY, actions_of_interest=("click", "view"))
    before = load(table, policy).features("m", T, policy)
    assert before["counts"]["24h"] == {"click": 4, "view": 1}
    state = load(table, policy)
    assert state.apply(action(1, T - 3), offset=8, applied_at=T, policy=policy) is (
        Applied.DUPLICATE
    )
    assert state.apply(action(9, T - 3), offset=7, applied_at=T, policy=policy) is (
        Applied.REPLAYED
    )
    assert state.apply(action(9, T - 3), offset=9, applied_at=T, policy=policy) is Applied.APPLIED
    after = stored(table, state, policy)
    assert b"m" not in keys(table)
    view = after.features("m", T, policy)
    assert view["counts"]["24h"] == {"click": 5, "view": 1}
    assert [a["event_id"] for a in view["recent_actions"]] == ["e9", "e6", "e5"]
    assert after.last_offsets == [9, 2]
    assert after.apply(action(1, T - 3), offset=10, applied_at=T, policy=policy) is (
        Applied.DUPLICATE
    )


def test_recent_actions_are_capped_newest_first_in_event_time_order() -> None:
    state = MemberState()
    for offset, ts in enumerate([T - 10, T - 50, T - 5, T - 30]):
        state.apply(action(offset, ts), offset=offset, applied_at=T, policy=POLICY)
    recent = state.features("m", T, POLICY)["recent_actions"]
    assert [a["ts"] for a in recent] == [T - 5, T - 10, T - 30]
    assert (
        state.features("m", T, POLICY)["counts"]["1h"]["click"] == 4
    )  # the cap limits the list only


def test_expired_history_is_pruned_a_chunk_at_a_time_and_not_served(table: LocalTable) -> None:
    state = MemberState()
    state.apply(action(0, T - 95 * 3600), offset=0, applied_at=T, policy=POLICY)
    state = stored(table, state)  # a chunk of its own
    state.apply(action(1, T - 60), offset=1, applied_at=T, policy=POLICY)
    state = stored(table, state)
    later = T + 2 * 3600
    assert [a["event_id"] for a in state.features("m", later, POLICY)["recent_actions"]] == ["e1"]
    assert state.features("m", later, POLICY)["counts"]["96h"]["click"] == 1
    # e0's chunk goes once its bucket has left the retention: a retry of e0 is refused as
    # too old from then on, so its id goes with it.
    assert state.prune(T + 3600 - 120, POLICY) is False
    assert state.prune(later, POLICY) is True
    assert len(keys(table)) == 2
    state = stored(table, state)
    assert len(keys(table)) == 1  # a tombstone for the pruned chunk
    assert [a.event_id for a in state.recent_actions(POLICY)] == ["e1"]
    assert len(state.bucket_counts(POLICY)) == 1
    assert state.prune(later, POLICY) is False
    assert state.prune(T + 200 * 3600, POLICY) is True and state.is_empty
    table.write_locally(0, state.records(b"m", POLICY))
    assert keys(table) == []


def test_as_of_reads_ignore_later_events() -> None:
    state = MemberState()
    state.apply(action(0, T - 600), offset=0, applied_at=T, policy=POLICY)
    state.apply(action(1, T - 10), offset=1, applied_at=T, policy=POLICY)
    view = state.features("m", T - 300, POLICY)
    assert [a["event_id"] for a in view["recent_actions"]] == ["e0"]
    assert view["last_event_ts"] == T - 600 and view["last_applied_at"] is None
    assert state.features("m", T - 700, POLICY)["last_event_ts"] is None
    assert view["counts"]["1h"]["click"] == 1


def test_state_survives_storage(table: LocalTable) -> None:
    state = MemberState()
    state.apply(
        RecentAction("e", "i", "click", T - 1, {"geo": "nl"}, True),
        offset=3,
        applied_at=T,
        policy=POLICY,
    )
    expected = state.features("m", T, POLICY)
    restored = stored(table, state)
    assert restored.features("m", T, POLICY) == expected
    assert restored.last_offsets == [3, -1]
    assert restored.recent_actions(POLICY) == state.recent_actions(POLICY)


def test_a_batch_writes_what_it_added_not_what_the_member_has(table: LocalTable) -> None:
    policy = dataclasses.replace(POLICY, max_recent_actions=100)
    state = MemberState()
    written: list[int] = []
    for n in range(100):  # an action per batch: the worst case for bytes per action
        state.apply(action(n, T - 1000 + n), offset=n, applied_at=T, policy=policy)
        records = state.records(b"m", policy)
        written.append(sum(len(k) + len(v or b"") for k, v in records.items()))
        table.write_locally(0, records)
        state = load(table, policy)
    # A batch writes a chunk of its own, or merges the small ones at the end into one.
    assert max(written[90:]) <= max(written[:20]) + 50
    assert sum(written) / len(written) < 400
    assert len(keys(table)) <= 100 // CHUNK_ROWS + CHUNK_ROWS
    assert [a.event_id for a in state.recent_actions(policy)][-2:] == ["e98", "e99"]


def test_retiring_chunks_beyond_the_cap_is_invisible_to_reads(table: LocalTable) -> None:
    kept: list[list[str]] = []
    state = MemberState()
    for n in range(40):  # the cap is 3; chunks are retired once rows exceed it by 8
        state.apply(action(n, T - 1000 + n), offset=n, applied_at=T, policy=POLICY)
        state = stored(table, state)
        assert state.row_count <= 3 + 8 + 2 * CHUNK_ROWS
        assert state.features("m", T, POLICY)["counts"]["1h"]["click"] == n + 1
        kept.append([a["event_id"] for a in state.features("m", T, POLICY)["recent_actions"]])
    assert kept[-1] == ["e39", "e38", "e37"]
    assert all(ids == [f"e{n}", f"e{n - 1}", f"e{n - 2}"] for n, ids in enumerate(kept) if n >= 2)


def test_policy_from_settings() -> None:
    policy = state_policy(load_settings(windows="15m,2h", retention="2h", bucket="1m"))
    assert policy.windows == (900.0, 7200.0) and policy.retention == 7200.0
