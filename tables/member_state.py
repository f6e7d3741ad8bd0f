"""A member's online state: recent actions and time-bucketed counts, with pure update rules.

One value per member holds everything the features endpoint serves, so an ingest batch
costs one read and one write per member it touches, however many events it holds. The
member's actions sit in that value encoded, and ingest appends a new action's row to them
without decoding the others: applying an action costs the same for a member with 3 actions
as for one with 100 (see :class:`MemberState`).
Windows are computed at read time from fixed-size event-time buckets: an event counts in
window ``W`` at time ``t`` while its bucket overlaps ``(t - W, t]``.

Event ids are remembered apart from the capped recent actions: 8-byte hashes grouped by
arrival-time bucket and kept for the dedupe window, so a producer retry counts once however
late or old the original event was.
"""

from __future__ import annotations

import math
import struct
from binascii import a2b_base64, b2a_base64
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from hashlib import blake2b
from operator import itemgetter
from typing import Any

from app import codec
from app.settings import Settings, format_duration

__all__ = ["Applied", "MemberState", "RecentAction", "Source", "StatePolicy", "event_id_hash"]

#: Arrival-time buckets per dedupe window: an id is remembered for the window and at most
#: 1/24 of it longer, and expires a bucket at a time.
DEDUPE_BUCKETS_PER_WINDOW = 24
_HASH_BYTES = 8


def event_id_hash(event_id: str) -> bytes:
    """The 8 bytes an event id is remembered by (stable across processes, unlike ``hash``).

    A new id is mistaken for a seen one with odds of about n / 2**64 for n ids remembered.
    """
    return blake2b(event_id.encode(), digest_size=_HASH_BYTES).digest()


class Source(IntEnum):
    """Where an applied event was read: offsets are comparable only within one source.

    A member's events come from its own partition of the actions topic and, for those a
    producer put on another partition, from the same partition of the repartition topic.
    """

    ACTIONS = 0
    REPARTITION = 1


class Applied(StrEnum):
    """What applying one event did."""

    APPLIED = "applied"
    REPLAYED = "replayed"  # offset at or below the last applied one: a re-read after a crash
    DUPLICATE = "duplicate"  # an event id seen within the dedupe window: a producer retry


@dataclass(frozen=True, slots=True)
class StatePolicy:
    """How much of a member's history is kept and how it is windowed."""

    windows: tuple[float, ...]
    retention: float
    bucket: float
    max_recent_actions: int
    actions_of_interest: tuple[str, ...]
    dedupe_window: float = 86400.0
    dedupe_max_ids: int = 5000

    @classmethod
    def from_settings(cls, settings: Settings) -> StatePolicy:
        return cls(
            windows=tuple(settings.windows),
            retention=settings.retention,
            bucket=settings.bucket,
            max_recent_actions=settings.max_recent_actions,
            actions_of_interest=tuple(settings.actions_of_interest),
            dedupe_window=settings.dedupe_window,
            dedupe_max_ids=settings.dedupe_max_ids,
        )

    @property
    def dedupe_bucket(self) -> float:
        return self.dedupe_window / DEDUPE_BUCKETS_PER_WINDOW

    def bucket_of(self, ts: float) -> int:
        return math.floor(ts / self.bucket)

    def bucket_in_window(self, bucket: int, as_of: float, window: float) -> bool:
        return (bucket + 1) * self.bucket > as_of - window and bucket * self.bucket <= as_of


@dataclass(slots=True)
class RecentAction:
    event_id: str
    item_id: str
    action: str
    ts: float
    attributes: dict[str, Any] = field(default_factory=dict)
    joined: bool | None = None  # None: no ingest-time join was configured

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": self.event_id,
            "item_id": self.item_id,
            "action": self.action,
            "ts": self.ts,
            "attributes": dict(self.attributes),
        }
        if self.joined is not None:
            body["joined"] = self.joined
        return body


#: One kept action: [event_id, item_id, action, ts, attributes | None, joined].
#: Plain lists, so decoding the rows is one orjson call with no objects to build.
ActionRow = list[Any]
_EID, _ITEM, _ACTION, _TS, _ATTRS, _JOINED = range(6)

#: Leads a value in the current layout: the header's length, the header, then the rows.
#: Older values are one JSON object and start with ``{``.
_LAYOUT = b"\x02"
_HEADER_LENGTH = struct.Struct(">I")


def _row(action: RecentAction) -> ActionRow:
    return [
        action.event_id,
        action.item_id,
        action.action,
        action.ts,
        action.attributes or None,
        action.joined,
    ]


def _newest(rows: list[ActionRow], count: int) -> list[ActionRow]:
    """The last ``count`` of ``rows`` (none for 0)."""
    return rows[max(0, len(rows) - count) :]


def _encode_rows(rows: list[ActionRow]) -> bytes:
    """Rows as the inside of a JSON array, so appending one is a byte concatenation."""
    return codec.dumps(rows)[1:-1]


@dataclass(slots=True)
class MemberState:
    """Everything kept for one member.

    ``last_offsets`` holds the offset of the last event applied from each :class:`Source`;
    ``seen`` the hashes of the event ids applied, concatenated per arrival-time bucket.

    The kept actions are stored encoded (``rows``, in arrival order) and decoded only when
    read, so applying an action costs the same however many the member has: its row is
    appended to the encoded ones. ``max_recent_actions`` is kept by trimming to the newest
    by event time once the rows exceed it by a quarter (at least 8), and reads serve the
    newest ``max_recent_actions`` by event time, so the trimming is invisible to them.
    ``oldest_ts`` (the oldest row's event time) tells pruning when rows have expired without
    decoding them.
    """

    last_offsets: list[int] = field(default_factory=lambda: [-1] * len(Source))
    last_event_ts: float | None = None
    last_applied_at: float | None = None
    buckets: dict[int, dict[str, int]] = field(default_factory=dict)
    seen: dict[int, bytearray] = field(default_factory=dict)
    rows: bytes = b""  # encoded rows (see _encode_rows), arrival order
    row_count: int = 0
    oldest_ts: float | None = None
    new_rows: list[ActionRow] = field(default_factory=list)  # applied, not yet encoded

    # -- codec -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        header = codec.dumps(
            {
                "o": self.last_offsets,
                "t": self.last_event_ts,
                "p": self.last_applied_at,
                "b": sorted(self.buckets.items()),
                "d": [
                    [k, b2a_base64(ids, newline=False).decode()]
                    for k, ids in sorted(self.seen.items())
                ],
                "n": self.row_count,
                "m": self.oldest_ts,
            }
        )
        return b"".join((_LAYOUT, _HEADER_LENGTH.pack(len(header)), header, self._encoded_rows()))

    @classmethod
    def from_bytes(cls, data: bytes) -> MemberState:
        if data[:1] != _LAYOUT:  # one JSON object, rows included: an older layout
            return cls._from_json(codec.loads(data))
        (length,) = _HEADER_LENGTH.unpack_from(data, 1)
        start = 1 + _HEADER_LENGTH.size
        body = codec.loads(data[start : start + length])
        return cls(
            last_offsets=body["o"],
            last_event_ts=body["t"],
            last_applied_at=body["p"],
            buckets=dict(body["b"]),
            seen={k: bytearray(a2b_base64(ids)) for k, ids in body["d"]},
            rows=data[start + length :],
            row_count=body["n"],
            oldest_ts=body["m"],
        )

    @classmethod
    def _from_json(cls, body: dict[str, Any]) -> MemberState:
        offsets = body["o"]
        if isinstance(offsets, int):  # written before the repartition topic existed
            offsets = [offsets] + [-1] * (len(Source) - 1)
        rows: list[ActionRow] = body["a"]
        return cls(
            last_offsets=offsets,
            last_event_ts=body["t"],
            last_applied_at=body["p"],
            buckets=dict(body["b"]),
            seen={k: bytearray(a2b_base64(ids)) for k, ids in body.get("d", ())},
            rows=_encode_rows(rows),
            row_count=len(rows),
            oldest_ts=min((row[_TS] for row in rows), default=None),
        )

    def _encoded_rows(self) -> bytes:
        if not self.new_rows:
            return self.rows
        added = _encode_rows(self.new_rows)
        return self.rows + b"," + added if self.rows else added

    def _replace_rows(self, rows: list[ActionRow]) -> None:
        """Store ``rows`` (oldest event first) in place of every row."""
        self.rows = _encode_rows(rows)
        self.new_rows = []
        self.row_count = len(rows)
        self.oldest_ts = rows[0][_TS] if rows else None

    @property
    def actions(self) -> list[ActionRow]:
        """Every stored row, decoded, oldest event first (arrival order among equal event
        times): up to ``max_recent_actions`` plus the trimming's slack (see the class)."""
        encoded = self._encoded_rows()
        rows: list[ActionRow] = codec.loads(b"[" + encoded + b"]") if encoded else []
        rows.sort(key=itemgetter(_TS))
        return rows

    def kept_actions(self, policy: StatePolicy) -> list[ActionRow]:
        """The rows reads serve: the newest ``max_recent_actions``, oldest first."""
        return _newest(self.actions, policy.max_recent_actions)

    def recent_actions(self, policy: StatePolicy) -> list[RecentAction]:
        """:meth:`kept_actions` as objects."""
        return [
            RecentAction(eid, item, action, ts, attrs or {}, joined)
            for eid, item, action, ts, attrs, joined in self.kept_actions(policy)
        ]

    # -- updates -----------------------------------------------------------------------

    def apply(
        self,
        action: RecentAction,
        *,
        offset: int,
        applied_at: float,
        policy: StatePolicy,
        source: int = Source.ACTIONS,
    ) -> Applied:
        """Apply one event read at ``offset`` of ``source`` (a :class:`Source`); idempotent
        for re-reads and for ids seen within the dedupe window, whatever their event time."""
        offsets = self.last_offsets
        if offset <= offsets[source]:
            return Applied.REPLAYED
        offsets[source] = offset
        digest = event_id_hash(action.event_id)
        if self._has_seen(digest):
            return Applied.DUPLICATE
        arrival = math.floor(applied_at * DEDUPE_BUCKETS_PER_WINDOW / policy.dedupe_window)
        ids = self.seen.get(arrival)
        if ids is None:
            self.seen[arrival] = bytearray(digest)
        else:
            ids += digest
        self._add_row(_row(action), policy.max_recent_actions)
        counts = self.buckets.setdefault(policy.bucket_of(action.ts), {})
        counts[action.action] = counts.get(action.action, 0) + 1
        if self.last_event_ts is None or action.ts > self.last_event_ts:
            self.last_event_ts = action.ts
        self.last_applied_at = applied_at
        return Applied.APPLIED

    def _has_seen(self, digest: bytes) -> bool:
        for ids in self.seen.values():
            at = ids.find(digest)
            while at != -1:  # a C-level search; a match must start on a hash boundary
                if at % _HASH_BYTES == 0:
                    return True
                at = ids.find(digest, at + 1)
        return False

    def _add_row(self, row: ActionRow, cap: int) -> None:
        self.new_rows.append(row)
        self.row_count += 1
        ts = row[_TS]
        if self.oldest_ts is None or ts < self.oldest_ts:
            self.oldest_ts = ts
        if self.row_count > cap + max(8, cap // 4):
            self._replace_rows(_newest(self.actions, cap))

    def prune(self, now: float, policy: StatePolicy) -> bool:
        """Drop what is older than the retention, and event ids older than the dedupe
        window or over its cap; True if anything was dropped."""
        horizon = now - policy.retention
        changed = False
        if self.oldest_ts is not None and self.oldest_ts <= horizon:
            self._replace_rows([row for row in self.actions if row[_TS] > horizon])
            changed = True
        expired = [k for k in self.buckets if (k + 1) * policy.bucket <= horizon]
        for k in expired:
            del self.buckets[k]
        return self._forget_ids(now, policy) or changed or bool(expired)

    def _forget_ids(self, now: float, policy: StatePolicy) -> bool:
        """Ids that left the dedupe window; then the oldest beyond the cap (bounded space)."""
        seen = self.seen
        size = policy.dedupe_bucket
        horizon = now - policy.dedupe_window
        forgot = False
        while seen and (oldest := min(seen)) * size + size <= horizon:
            del seen[oldest]
            forgot = True
        excess = sum(map(len, seen.values())) - policy.dedupe_max_ids * _HASH_BYTES
        if excess <= 0:
            return forgot
        for k in sorted(seen):
            ids = seen[k]
            if len(ids) <= excess:
                excess -= len(ids)
                del seen[k]
            else:
                del ids[:excess]  # ids are in arrival order: the oldest go first
                break
        return True

    @property
    def is_empty(self) -> bool:
        return not self.row_count and not self.buckets

    # -- reads -------------------------------------------------------------------------

    def features(self, member_id: str, as_of: float, policy: StatePolicy) -> dict[str, Any]:
        """The served view as of ``as_of``: nothing older than the retention, nothing later."""
        horizon = as_of - policy.retention
        recent = [
            RecentAction(eid, item, action, ts, attrs or {}, joined).as_dict()
            for eid, item, action, ts, attrs, joined in reversed(self.kept_actions(policy))
            if horizon < ts <= as_of
        ]
        counts: dict[str, dict[str, int]] = {}
        for window in policy.windows:
            totals = dict.fromkeys(policy.actions_of_interest, 0)
            for k, bucket_counts in self.buckets.items():
                if policy.bucket_in_window(k, as_of, window):
                    for name, n in bucket_counts.items():
                        totals[name] = totals.get(name, 0) + n
            counts[format_duration(window)] = totals
        last_event_ts, last_applied_at = self.last_event_ts, self.last_applied_at
        if last_event_ts is not None and last_event_ts > as_of:
            # An earlier view must not leak how recent the member's later activity is.
            last_event_ts = recent[0]["ts"] if recent else None
            last_applied_at = None
        return {
            "member_id": member_id,
            "as_of": as_of,
            "known": bool(recent) or any(any(c.values()) for c in counts.values()),
            "last_event_ts": last_event_ts,
            "last_applied_at": last_applied_at,
            "recent_actions": recent,
            "counts": counts,
        }
