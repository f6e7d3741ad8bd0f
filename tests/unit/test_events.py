"""Validation of action events at the topic boundary."""

from __future__ import annotations

import pytest

from agents.events import ActionEvent, InvalidEvent, parse_action
from app import codec

NOW = 1_800_000_000.0
LIMITS = {"now": NOW, "max_bytes": 4096, "retention": 96 * 3600.0, "max_future_skew": 300.0}


def body(**changes: object) -> bytes:
    event = {
        "event_id": "e1",
        "member_id": "m1",
        "item_id": "i1",
        "action": "click",
        "ts": NOW - 10,
    }
    event.update(changes)
    return codec.dumps({k: v for k, v in event.items() if v is not ...})


def test_a_valid_event_round_trips() -> None:
    event = parse_action(body(attributes={"geo": "nl"}), **LIMITS)
    assert event == ActionEvent("e1", "m1", "i1", "click", NOW - 10, {"geo": "nl"})
    assert parse_action(event.to_json(), **LIMITS) == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b"\xff\xfe", "not_json"),
        (b'"a string"', "not_object"),
        (body(ts=...), "missing_field"),
        (body(member_id=...), "missing_field"),
        (body(ts="yesterday"), "bad_field"),
        (body(ts=True), "bad_field"),
        (body(member_id=""), "bad_field"),
        (body(item_id=7), "bad_field"),
        (body(member_id="m" * 300), "bad_field"),
        (body(item_id="i\n1"), "bad_field"),
        (body(ts=float("nan")), "bad_field"),
        (body(attributes=[1]), "bad_field"),
        (body(ts=NOW + 3600), "future_ts"),
        (body(ts=NOW - 97 * 3600), "expired_ts"),
        (b"{" + b" " * 5000 + b"}", "oversized"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_action(raw, **LIMITS)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_small_clock_skew_is_tolerated() -> None:
    assert parse_action(body(ts=NOW + 200), **LIMITS).ts == NOW + 200


def test_an_integer_ts_and_null_attributes_are_accepted() -> None:
    event = parse_action(body(ts=int(NOW) - 10, attributes=None), **LIMITS)
    assert event == ActionEvent("e1", "m1", "i1", "click", NOW - 10, {})
    assert isinstance(event.ts, float)
