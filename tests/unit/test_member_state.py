"""Windowing, expiry and replay safety of a member's state, without a broker."""

from __future__ import annotations

from app.settings import load_settings
from tables.member_state import Applied, MemberState, RecentAction, StatePolicy

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
    assert [a.event_id for a in state.recent_actions()] == ["e1"]
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
    assert MemberState.from_bytes(state.to_bytes()) == state


def test_policy_from_settings() -> None:
    policy = StatePolicy.from_settings(load_settings(windows="15m,2h", retention="2h", bucket="1m"))
    assert policy.windows == (900.0, 7200.0) and policy.retention == 7200.0
