"""Validation of action events at the topic boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from nearline.agents.events import (
    MILLISECONDS_FROM,
    ActionEvent,
    InvalidEvent,
    event_time,
    parse_action,
)
from nearline.foundation import codec

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
        (body(ts=None), "missing_field"),  # also what NaN is written as
        (body(ts="2026-12-01T10:00:00"), "bad_field"),  # no UTC offset: which instant?
        (body(ts="1764400000"), "bad_field"),  # a number in a string is not ISO-8601
        (body(ts=[NOW]), "bad_field"),
        (body(ts=(NOW + 3600) * 1000), "future_ts"),
        (body(ts=NOW * 1_000_000), "future_ts"),  # microseconds
        (body(ts=(NOW - 97 * 3600) * 1000), "expired_ts"),
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
    # Every detail says what is wrong and what to do about it.
    assert ";" in caught.value.detail, caught.value.detail
    fix = caught.value.detail.split(";", 1)[1]
    assert any(word in fix for word in ("send", "add", "remove", "fix", "raise", "leave")), fix


def test_ts_details_name_the_unit_and_the_setting() -> None:
    with pytest.raises(InvalidEvent) as micro:
        parse_action(body(ts=NOW * 1_000_000), **LIMITS)
    assert "microseconds" in micro.value.detail
    with pytest.raises(InvalidEvent) as ahead:
        parse_action(body(ts=NOW + 3600), **LIMITS)
    assert "NEARLINE_MAX_FUTURE_SKEW" in ahead.value.detail
    with pytest.raises(InvalidEvent) as old:
        parse_action(body(ts=NOW - 97 * 3600), **LIMITS)
    assert "NEARLINE_RETENTION" in old.value.detail
    with pytest.raises(InvalidEvent) as missing:
        parse_action(body(ts=...), **LIMITS)
    assert "NEARLINE_TS_FROM_RECORD" in missing.value.detail
    with pytest.raises(InvalidEvent) as no_record_ts:
        parse_action(body(ts=...), **LIMITS, record_timestamp_ms=-1)
    assert "no timestamp" in no_record_ts.value.detail


def test_milliseconds_are_read_by_magnitude_on_the_fast_path_too() -> None:
    assert parse_action(body(ts=int(NOW * 1000) - 10_250), **LIMITS).ts == NOW - 10.25
    assert parse_action(body(ts=(NOW - 10) * 1000.0), **LIMITS).ts == NOW - 10
    # The rule at its edge: 1e11 is milliseconds (March 1973), just below it seconds.
    assert event_time(MILLISECONDS_FROM) == 1e8
    assert event_time(MILLISECONDS_FROM - 1) == MILLISECONDS_FROM - 1


def test_iso_8601_with_an_offset_is_accepted() -> None:
    iso = datetime.fromtimestamp(NOW - 10, UTC).isoformat()
    assert parse_action(body(ts=iso), **LIMITS).ts == NOW - 10
    zulu = datetime.fromtimestamp(NOW - 10, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert parse_action(body(ts=zulu), **LIMITS).ts == NOW - 10
    plus_one = datetime.fromtimestamp(NOW - 10, timezone(timedelta(hours=1))).isoformat()
    assert parse_action(body(ts=plus_one), **LIMITS).ts == NOW - 10


def test_a_missing_ts_takes_the_record_timestamp_when_allowed() -> None:
    record_ms = int((NOW - 30) * 1000)
    event = parse_action(body(ts=...), **LIMITS, record_timestamp_ms=record_ms)
    assert event.ts == NOW - 30
    assert parse_action(body(ts=None), **LIMITS, record_timestamp_ms=record_ms).ts == NOW - 30
    # A ts of its own wins over the record's.
    assert parse_action(body(), **LIMITS, record_timestamp_ms=record_ms).ts == NOW - 10
    with pytest.raises(InvalidEvent) as caught:
        parse_action(body(ts=...), **LIMITS, record_timestamp_ms=int((NOW - 97 * 3600) * 1000))
    assert caught.value.reason == "expired_ts" and "record timestamp" in caught.value.detail


def test_small_clock_skew_is_tolerated() -> None:
    assert parse_action(body(ts=NOW + 200), **LIMITS).ts == NOW + 200


def test_an_integer_ts_and_null_attributes_are_accepted() -> None:
    event = parse_action(body(ts=int(NOW) - 10, attributes=None), **LIMITS)
    assert event == ActionEvent("e1", "m1", "i1", "click", NOW - 10, {})
    assert isinstance(event.ts, float)
