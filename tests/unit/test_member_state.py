"""Windowing, expiry and replay safety of a member's state, without a broker."""

from __future__ import annotations

import dataclasses

from app import codec
from app.settings import load_settings
from tables.member_state import Applied, MemberState, RecentAction, Source, StatePolicy

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


def test_replays_and_duplicate_ids_change_nothing() -> None:
    state = MemberState()
    state.apply(action(1, T - 5), offset=10, applied_at=T, policy=POLICY)
    before = state.to_bytes()
    assert state.apply(action(1, T - 5), offset=10, applied_at=T, policy=POLICY) is Applied.REPLAYED
    assert state.apply(action(2, T - 4), offset=9, applied_at=T, policy=POLICY) is Applied.REPLAYED
    assert state.to_bytes() == before
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


def test_ids_are_remembered_for_the_dedupe_window_and_survive_the_codec() -> None:
    state = MemberState()
    state.apply(action(0, T - 10), offset=0, applied_at=T, policy=POLICY)
    state.prune(T + 3600, POLICY)
    restored = MemberState.from_bytes(state.to_bytes())
    assert restored.apply(action(0, T - 10), offset=1, applied_at=T + 86000, policy=POLICY) is (
        Applied.DUPLICATE
    )
    # After the window (and at most 1/24 of it more) the id is forgotten.
    later = T + 86400 + 3600
    assert restored.prune(later, POLICY) is True
    assert restored.seen == {}
    assert restored.apply(action(0, T - 10), offset=2, applied_at=later, policy=POLICY) is (
        Applied.APPLIED
    )


def test_ids_per_member_are_capped_oldest_first() -> None:
    policy = dataclasses.replace(POLICY, dedupe_max_ids=5)
    state = MemberState()
    for n in range(8):  # arrivals an hour apart: each in a bucket of its own
        state.apply(action(n, T - 10), offset=n, applied_at=T + n * 3600, policy=policy)
    assert state.prune(T + 8 * 3600, policy) is True
    assert sum(len(ids) for ids in state.seen.values()) == 5 * 8
    outcomes = [
        state.apply(action(n, T - 10), offset=10 + n, applied_at=T + 9 * 3600, policy=policy)
        for n in range(8)
    ]
    assert outcomes[:3] == [Applied.APPLIED] * 3  # the three oldest ids were forgotten
    assert outcomes[3:] == [Applied.DUPLICATE] * 5


def test_a_value_written_before_the_repartition_topic_still_reads() -> None:
    old = codec.dumps({"o": 12, "t": T, "p": T, "a": [["e", "i", "click", T, None, None]], "b": []})
    state = MemberState.from_bytes(old)
    assert state.last_offsets == [12, -1] and state.seen == {}
    assert state.apply(action(1, T), offset=12, applied_at=T, policy=POLICY) is Applied.REPLAYED
    assert [a.event_id for a in state.recent_actions(POLICY)] == ["e"]


def test_a_value_of_the_single_json_layout_reads_and_is_rewritten_in_the_current_one() -> None:
    rows = [
        ["e1", "i", "click", T - 5, {"geo": "nl"}, True],
        ["e0", "i", "click", T - 9, None, None],
    ]
    old = codec.dumps({"o": [4, -1], "t": T - 5, "p": T, "a": rows, "b": [], "d": []})
    state = MemberState.from_bytes(old)
    assert [a.event_id for a in state.recent_actions(POLICY)] == ["e0", "e1"]
    state.apply(action(2, T - 1), offset=5, applied_at=T, policy=POLICY)
    again = MemberState.from_bytes(state.to_bytes())
    assert [a.event_id for a in again.recent_actions(POLICY)] == ["e0", "e1", "e2"]
    assert again.recent_actions(POLICY)[1].attributes == {"geo": "nl"}


def test_recent_actions_are_capped_newest_first_in_event_time_order() -> None:
    state = MemberState()
    for offset, ts in enumerate([T - 10, T - 50, T - 5, T - 30]):
        state.apply(action(offset, ts), offset=offset, applied_at=T, policy=POLICY)
    recent = state.features("m", T, POLICY)["recent_actions"]
    assert [a["ts"] for a in recent] == [T - 5, T - 10, T - 30]
    assert (
        state.features("m", T, POLICY)["counts"]["1h"]["click"] == 4
    )  # the cap limits the list only


def test_expired_history_is_pruned_and_not_served() -> None:
    state = MemberState()
    state.apply(action(0, T - 95 * 3600), offset=0, applied_at=T, policy=POLICY)
    state.apply(action(1, T - 60), offset=1, applied_at=T, policy=POLICY)
    later = T + 2 * 3600
    assert [a["event_id"] for a in state.features("m", later, POLICY)["recent_actions"]] == ["e1"]
    assert state.prune(later, POLICY) is True
    assert [a.event_id for a in state.recent_actions(POLICY)] == ["e1"]
    assert len(state.buckets) == 1
    assert state.prune(later, POLICY) is False
    assert state.prune(T + 200 * 3600, POLICY) is True and state.is_empty


def test_as_of_reads_ignore_later_events() -> None:
    state = MemberState()
    state.apply(action(0, T - 600), offset=0, applied_at=T, policy=POLICY)
    state.apply(action(1, T - 10), offset=1, applied_at=T, policy=POLICY)
    view = state.features("m", T - 300, POLICY)
    assert [a["event_id"] for a in view["recent_actions"]] == ["e0"]
    assert view["last_event_ts"] == T - 600 and view["last_applied_at"] is None
    assert state.features("m", T - 700, POLICY)["last_event_ts"] is None
    assert view["counts"]["1h"]["click"] == 1


def test_state_survives_its_codec() -> None:
    state = MemberState()
    state.apply(
        RecentAction("e", "i", "click", T - 1, {"geo": "nl"}, True),
        offset=3,
        applied_at=T,
        policy=POLICY,
    )
    restored = MemberState.from_bytes(state.to_bytes())
    assert restored.to_bytes() == state.to_bytes()
    assert restored.features("m", T, POLICY) == state.features("m", T, POLICY)
    assert restored.recent_actions(POLICY) == state.recent_actions(POLICY)


def test_an_action_is_appended_to_the_encoded_rows_without_rewriting_them() -> None:
    policy = dataclasses.replace(POLICY, max_recent_actions=100)
    state = MemberState()
    for n in range(50):
        state.apply(action(n, T - 100 + n), offset=n, applied_at=T, policy=policy)
    before = MemberState.from_bytes(state.to_bytes())
    rows_before = before.rows
    before.apply(action(50, T - 500), offset=50, applied_at=T, policy=policy)  # late, too
    after = MemberState.from_bytes(before.to_bytes())
    assert after.rows.startswith(rows_before)  # the earlier rows' bytes, untouched
    assert after.row_count == 51 and after.oldest_ts == T - 500
    assert [a.ts for a in after.recent_actions(policy)][:2] == [T - 500, T - 100]


def test_trimming_to_the_cap_is_invisible_to_reads() -> None:
    kept: list[list[str]] = []
    state = MemberState()
    for n in range(40):  # the cap is 3; rows are trimmed once they exceed it by 8
        state.apply(action(n, T - 1000 + n), offset=n, applied_at=T, policy=POLICY)
        state = MemberState.from_bytes(state.to_bytes())
        assert state.row_count <= 3 + 8
        kept.append([a["event_id"] for a in state.features("m", T, POLICY)["recent_actions"]])
    assert kept[-1] == ["e39", "e38", "e37"]
    assert all(ids == [f"e{n}", f"e{n - 1}", f"e{n - 2}"] for n, ids in enumerate(kept) if n >= 2)


def test_policy_from_settings() -> None:
    policy = StatePolicy.from_settings(load_settings(windows="15m,2h", retention="2h", bucket="1m"))
    assert policy.windows == (900.0, 7200.0) and policy.retention == 7200.0
