"""The action event schema and its validation at the topic boundary."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec

from app import codec

__all__ = ["ActionEvent", "InvalidEvent", "parse_action"]

_FIELDS = ("event_id", "member_id", "item_id", "action", "ts")
_MAX_ID_LENGTH = 256
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

    ``ts`` is event time in Unix seconds: it, not arrival time, decides the window.
    ``attributes`` are optional item attributes the producer already knows.
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
        raise InvalidEvent("bad_field", f"{name} must be a non-empty string, got {value!r}")
    if _CONTROL.search(value):
        raise InvalidEvent("bad_field", f"{name} must not contain control characters")
    if len(value) > _MAX_ID_LENGTH:
        raise InvalidEvent("bad_field", f"{name} is longer than {_MAX_ID_LENGTH} characters")
    return value


_decode = msgspec.json.Decoder(ActionEvent).decode


def parse_action(
    raw: bytes | None,
    *,
    now: float,
    max_bytes: int,
    retention: float,
    max_future_skew: float,
) -> ActionEvent:
    """Decode and check one record value; raise :class:`InvalidEvent` saying what is wrong."""
    if raw is None:
        raise InvalidEvent("empty", "the record has no value")
    if len(raw) > max_bytes:
        raise InvalidEvent("oversized", f"{len(raw)} bytes is over the limit of {max_bytes}")
    try:
        event = _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass  # the rules below, in turn, say exactly what is wrong
    else:
        if (
            now - retention < event.ts <= now + max_future_skew
            and not _CONTROL.search(event.event_id)
            and not _CONTROL.search(event.member_id)
            and not _CONTROL.search(event.item_id)
            and not _CONTROL.search(event.action)
        ):
            return event
    return _checked(raw, now=now, retention=retention, max_future_skew=max_future_skew)


def _checked(raw: bytes, *, now: float, retention: float, max_future_skew: float) -> ActionEvent:
    """The slow path: every rule in turn, so the first one broken is the reason given."""
    try:
        body = codec.loads(raw)
    except codec.DecodeError as exc:
        raise InvalidEvent("not_json", f"value is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidEvent("not_object", f"value must be a JSON object, got {type(body).__name__}")
    missing = [name for name in _FIELDS if name not in body]
    if missing:
        raise InvalidEvent("missing_field", f"missing {', '.join(missing)}")
    ts = body["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise InvalidEvent("bad_field", f"ts must be Unix seconds as a number, got {ts!r}")
    if ts > now + max_future_skew:
        raise InvalidEvent("future_ts", f"ts {ts} is {ts - now:.0f}s in the future")
    if ts <= now - retention:
        raise InvalidEvent("expired_ts", f"ts {ts} is older than the retention of {retention:.0f}s")
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise InvalidEvent("bad_field", "attributes must be a JSON object")
    return ActionEvent(
        event_id=_identifier(body, "event_id"),
        member_id=_identifier(body, "member_id"),
        item_id=_identifier(body, "item_id"),
        action=_identifier(body, "action"),
        ts=float(ts),
        attributes=attributes,
    )
