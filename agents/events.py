"""The action event schema and its validation at the topic boundary."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from nearline.foundation import codec, limits

__all__ = ["MILLISECONDS_FROM", "ActionEvent", "InvalidEvent", "event_time", "parse_action"]

#: A numeric ``ts`` at or above this is Unix milliseconds, below it Unix seconds: 1e11
#: seconds is the year 5138, 1e11 milliseconds is March 1973.
MILLISECONDS_FROM = 1e11
#: A numeric ``ts`` at or above this, even read as milliseconds, is decades in the future:
#: microseconds or nanoseconds (the detail says so).
_MICROSECONDS_FROM = 1e14
_IDENTIFIERS = ("event_id", "member_id", "item_id", "action")
_TS_RULE = (
    "send ts as Unix seconds or milliseconds (a number; 1e11 and above is milliseconds) "
    "or as an ISO-8601 string with a UTC offset"
)
_MAX_ID_LENGTH = limits.MAX_ID_LENGTH
_CONTROL = re.compile(r"[\x00-\x1f]")
_Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ID_LENGTH)]


class InvalidEvent(ValueError):
    """An event that cannot be applied; ``reason`` is a short stable code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ActionEvent(msgspec.Struct, frozen=True, gc=False):
    """One member action, as produced to ``member-actions`` (keyed by ``member_id``).

    ``ts`` is event time in Unix seconds once parsed (producers may send seconds,
    milliseconds or ISO-8601, see :func:`event_time`): it, not arrival time, decides the
    window. ``attributes`` are optional item attributes the producer already knows.
    A msgspec struct, so a valid record decodes straight into one, its types checked in C.
    """

    event_id: _Identifier
    member_id: _Identifier
    item_id: _Identifier
    action: _Identifier
    ts: float
    attributes: dict[str, Any] = {}

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "event_id": self.event_id,
            "member_id": self.member_id,
            "item_id": self.item_id,
            "action": self.action,
            "ts": self.ts,
        }
        if self.attributes:
            body["attributes"] = self.attributes
        return codec.dumps(body)


def _identifier(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str) or not value:
        raise InvalidEvent(
            "bad_field", f"{name} must be a non-empty string, got {value!r}; send it as a string"
        )
    if _CONTROL.search(value):
        raise InvalidEvent(
            "bad_field", f"{name} contains control characters; remove them from the {name}"
        )
    if len(value) > _MAX_ID_LENGTH:
        raise InvalidEvent(
            "bad_field",
            f"{name} is {len(value)} characters, over the limit of {_MAX_ID_LENGTH}; "
            f"send a shorter {name}",
        )
    return value


def event_time(value: Any) -> float:
    """Unix seconds from a producer's ``ts``: seconds, milliseconds or ISO-8601.

    A number at or above :data:`MILLISECONDS_FROM` is milliseconds. A string must be
    ISO-8601 with a UTC offset (``Z`` or ``+01:00``): without one its instant is unknown.
    Raises :class:`InvalidEvent` (``bad_field``) saying what is wrong and how to fix it.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent("bad_field", f"ts {value!r} is not ISO-8601; {_TS_RULE}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent(
                "bad_field",
                f"ts {value!r} has no UTC offset, so its instant is unknown; "
                "add Z (UTC) or an offset such as +01:00",
            )
        return parsed.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidEvent("bad_field", f"ts {value!r} is not a time; {_TS_RULE}")
    return value / 1000.0 if value >= MILLISECONDS_FROM else float(value)


def _readable(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return "out of range"


_decode = msgspec.json.Decoder(ActionEvent).decode
_with_ts = msgspec.structs.replace


def parse_action(
    raw: bytes | None,
    *,
    now: float,
    max_bytes: int,
    retention: float,
    max_future_skew: float,
    record_timestamp_ms: int | None = None,
) -> ActionEvent:
    """Decode and check one record value; raise :class:`InvalidEvent` saying what is wrong.

    ``record_timestamp_ms`` is the Kafka record's timestamp, taken as the event time of an
    event without ``ts``; ``None`` when that is not allowed (``NEARLINE_TS_FROM_RECORD``),
    negative when the record has none.
    """
    if raw is None:
        raise InvalidEvent(
            "empty", "the record has no value (a tombstone?); send one JSON action per record"
        )
    if len(raw) > max_bytes:
        raise InvalidEvent(
            "oversized",
            f"{len(raw)} bytes is over the limit of {max_bytes}; send fewer or smaller "
            "attributes, or raise NEARLINE_MAX_EVENT_BYTES",
        )
    try:
        event = _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass  # the rules below, in turn, say exactly what is wrong
    else:
        ts = event.ts
        if ts >= MILLISECONDS_FROM:
            ts = ts / 1000.0
            event = _with_ts(event, ts=ts)
        if (
            now - retention < ts <= now + max_future_skew
            and not _CONTROL.search(event.event_id)
            and not _CONTROL.search(event.member_id)
            and not _CONTROL.search(event.item_id)
            and not _CONTROL.search(event.action)
        ):
            return event
    return _checked(
        raw,
        now=now,
        retention=retention,
        max_future_skew=max_future_skew,
        record_timestamp_ms=record_timestamp_ms,
    )


def _checked(
    raw: bytes,
    *,
    now: float,
    retention: float,
    max_future_skew: float,
    record_timestamp_ms: int | None,
) -> ActionEvent:
    """The slow path: every rule in turn, so the first one broken is the reason given."""
    try:
        body = codec.loads(raw)
    except codec.DecodeError as exc:
        raise InvalidEvent(
            "not_json", f"value is not JSON ({exc}); send one UTF-8 JSON object per record"
        ) from None
    if not isinstance(body, dict):
        raise InvalidEvent(
            "not_object",
            f"value must be a JSON object, got {type(body).__name__}; "
            "send one action object per record, not an array or a scalar",
        )
    missing = [name for name in _IDENTIFIERS if name not in body]
    given_ts = body.get("ts")  # null is as good as absent
    if given_ts is None and (record_timestamp_ms is None or record_timestamp_ms < 0):
        missing.append("ts")
    if missing:
        fix = f"add {', '.join(missing)} (see the event schema)"
        if "ts" in missing:
            fix += (
                "; NEARLINE_TS_FROM_RECORD=true takes a missing ts from the record's timestamp"
                if record_timestamp_ms is None
                else "; the record has no timestamp to take it from"
            )
        raise InvalidEvent("missing_field", f"missing {', '.join(missing)}; {fix}")
    if given_ts is None:
        assert record_timestamp_ms is not None
        ts = record_timestamp_ms / 1000.0
        origin = "the record timestamp"
    else:
        ts = event_time(given_ts)
        origin = f"ts {given_ts!r}"
    if ts > now + max_future_skew:
        hint = (
            "it looks like microseconds or nanoseconds; send seconds or milliseconds"
            if isinstance(given_ts, (int, float)) and given_ts >= _MICROSECONDS_FROM
            else "fix the producer's clock or its ts unit (1e11 and above is milliseconds)"
        )
        raise InvalidEvent(
            "future_ts",
            f"{origin} ({_readable(ts)}) is {ts - now:.0f}s ahead of this worker's clock, more "
            f"than NEARLINE_MAX_FUTURE_SKEW ({max_future_skew:.0f}s); {hint}",
        )
    if ts <= now - retention:
        raise InvalidEvent(
            "expired_ts",
            f"{origin} ({_readable(ts)}) is older than NEARLINE_RETENTION ({retention:.0f}s), "
            "so it could count in no window; send actions sooner, or raise NEARLINE_RETENTION",
        )
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise InvalidEvent(
            "bad_field",
            f"attributes must be a JSON object, got {type(attributes).__name__}; "
            "send an object of attribute name to value, or leave it out",
        )
    return ActionEvent(
        event_id=_identifier(body, "event_id"),
        member_id=_identifier(body, "member_id"),
        item_id=_identifier(body, "item_id"),
        action=_identifier(body, "action"),
        ts=ts,
        attributes=attributes,
    )
