"""A member's online state: recent actions and time-bucketed counts, with pure update rules.

A member's state is a few keys of its own, so that the bytes an ingest batch writes (to
RocksDB and to the changelog) follow what the batch changed, not how much the member has:

* ``<member>\\0<seq>`` (``seq`` ≥ 1, 4 bytes big-endian): a chunk of the member's actions, in
  arrival order, with the 8-byte hashes of their event ids. Chunks are immutable: a batch
  writes its new actions as a new chunk; once the small chunks at the end hold
  ``CHUNK_ROWS`` actions (or are that many), they are merged into one chunk. Every chunk
  also carries the state's header (source offsets, last event and apply times): the
  newest chunk's is current.
* ``<member>\\0\\0\\0\\0\\0`` (seq 0), the rollup: counts and event-id hashes of actions that
  left the kept ones (beyond ``max_recent_actions``), whose chunks were retired into it.

A read is one range read of the keys ``[<member>, <member>\\x01)``. Counts are computed at
read time from the actions' event times (and the rollup's buckets): an event counts in
window ``W`` at time ``t`` while its fixed-size event-time bucket overlaps ``(t - W, t]``.
Pruning deletes whole chunks once everything in them has expired, with tombstones.

A write is ordered so that every prefix of it, as a changelog cut short by a crash would
restore it, reads as either the state before or the state after: superseded keys left
behind by an earlier cut are deleted first, then the new chunk (a merge names the chunks it
replaces) and the rollup (which names the chunks it absorbed), then the keys they replace.

Event ids are remembered apart from the capped recent actions: 8-byte hashes grouped by
arrival-time bucket, counted for the dedupe window, so a producer retry counts once however
late or old the original event was (within the retention: an older retry is refused before
it is applied, which is why a chunk's ids go with it once its actions have expired).

Values of the older one-key layout (``<member>`` alone) are read, and a member is rewritten
in this layout on its next write.

``<member>\\0erased`` marks an erased member: its last erasure (JSON: ``erasure_id``,
``erased_at``), written after the tombstones of every other key the member had. It sorts
after the member's chunks, is ignored by everything that decodes a state, and makes a read
say that the member was erased rather than that it is unknown (see ``agents/erasing.py``).
"""

from __future__ import annotations

import math
import struct
from binascii import a2b_base64
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from hashlib import blake2b
from operator import itemgetter
from typing import Any

from nearline.foundation import codec
from nearline.foundation.settings import format_duration

__all__ = [
    "CHUNK_ROWS",
    "Applied",
    "MemberState",
    "RecentAction",
    "Source",
    "StatePolicy",
    "erased_key",
    "event_id_hash",
    "member_range",
]

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


#: One kept action: [event_id, item_id, action, ts, attributes | None, joined].
#: Plain lists, so decoding the rows is one orjson call with no objects to build.
ActionRow = list[Any]
_EID, _ITEM, _ACTION, _TS, _ATTRS, _JOINED = range(6)

#: Small chunks at a member's end are merged into one once they hold this many actions, or
#: are this many: each action is so written about twice, and a member of ``n`` kept actions
#: has about ``n / CHUNK_ROWS + CHUNK_ROWS / 2`` keys.
CHUNK_ROWS = 8
#: The rollup's sequence number: its key sorts before the member's chunks.
ROLLUP_SEQ = 0

#: Leads a chunk. Values of the older one-key layout start with ``\x02`` or ``{``.
_CHUNK_LAYOUT = 3
#: layout, offsets (one per Source), last event ts, last applied at, newest event ts of the
#: rows, oldest arrival bucket of the ids, first seq a merge replaced (0: none), rows, bytes of
#: ids, bytes of the extra JSON.
_CHUNK_HEAD = struct.Struct(">BqqdddiIIII")
_NO_ARRIVAL = 2**31 - 1  # a chunk without ids
_HEAD_SIZE = _CHUNK_HEAD.size
#: An id group: arrival bucket, ids in it; then the ids' hashes.
_ID_GROUP = struct.Struct(">iI")
_SEQ = struct.Struct(">I")
_NONE = math.nan  # a float field with no value
_HEADER_LENGTH = struct.Struct(">I")  # the older layout's header length


def _newest(rows: list[ActionRow], count: int) -> list[ActionRow]:
    """The last ``count`` of ``rows`` (none for 0)."""
    return rows[max(0, len(rows) - count) :]


def _encode_rows(rows: list[ActionRow]) -> bytes:
    """Rows as the inside of a JSON array, so that joining encoded rows is a concatenation."""
    return codec.dumps(rows)[1:-1]


def _decode_rows(parts: Iterable[bytes]) -> list[ActionRow]:
    joined = b",".join(part for part in parts if part)
    return codec.loads(b"[" + joined + b"]") if joined else []  # type: ignore[no-any-return]


def _float(value: float) -> float | None:
    return None if value != value else value  # NaN: none


def member_range(member: bytes) -> tuple[bytes, bytes]:
    """The keys of a member's state: ``[member, member + b"\\x01")`` holds ``member`` (the
    older layout) and ``member\\0…`` (chunks); member ids hold no control characters."""
    return member, member + b"\x01"


def erased_key(member: bytes) -> bytes:
    """The key marking the member as erased (see the module); not a chunk's: 6 bytes follow
    the NUL, a chunk's 4."""
    return member + b"\0erased"


def chunk_key(member: bytes, seq: int) -> bytes:
    return member + b"\0" + _SEQ.pack(seq)


def member_of(key: bytes) -> bytes:
    """The member a key of the table belongs to."""
    return key.split(b"\0", 1)[0]


def _add_counts(into: dict[int, dict[str, int]], counts: dict[int, dict[str, int]]) -> None:
    for k, names in counts.items():
        bucket = into.setdefault(k, {})
        for name, n in names.items():
            bucket[name] = bucket.get(name, 0) + n


@dataclass(slots=True)
class _Chunk:
    """One stored chunk (or the rollup), decoded as far as its fixed header."""

    seq: int
    offsets: list[int]
    last_event_ts: float | None
    last_applied_at: float | None
    max_ts: float  # newest event time of its rows; NaN without rows
    covers_from: int  # a merge: the chunks [covers_from, seq) are replaced by this one
    n: int  # rows
    ids: bytes  # id groups (see _ID_GROUP)
    rows: bytes  # encoded rows (see _encode_rows)
    extra: dict[str, Any] = field(default_factory=dict)  # "b": counts, "a": absorbed seqs
    first_arrival: int = _NO_ARRIVAL  # the oldest arrival bucket of its ids

    @classmethod
    def decode(cls, seq: int, data: bytes) -> _Chunk:
        _, o0, o1, t, p, max_ts, arrival, covers, n, ids_len, extra_len = _CHUNK_HEAD.unpack_from(
            data
        )
        ids_end = _HEAD_SIZE + ids_len
        if not extra_len:
            return cls(
                seq,
                [o0, o1],
                None if t != t else t,  # NaN: none
                None if p != p else p,
                max_ts,
                covers,
                n,
                data[_HEAD_SIZE:ids_end],
                data[ids_end:],
                first_arrival=arrival,
            )
        extra_end = ids_end + extra_len
        extra = codec.loads(data[ids_end:extra_end])
        if "b" in extra:
            extra["b"] = {k: names for k, names in extra["b"]}
        return cls(
            seq,
            [o0, o1],
            _float(t),
            _float(p),
            max_ts,
            covers,
            n,
            data[_HEAD_SIZE:ids_end],
            data[extra_end:],
            extra,
            arrival,
        )

    def encode(self) -> bytes:
        extra = b""
        if self.extra:
            body = dict(self.extra)
            if "b" in body:
                body["b"] = sorted(body["b"].items())
            extra = codec.dumps(body)
        t, p = self.last_event_ts, self.last_applied_at
        return b"".join(
            (
                _CHUNK_HEAD.pack(
                    _CHUNK_LAYOUT,
                    *self.offsets,
                    _NONE if t is None else t,
                    _NONE if p is None else p,
                    self.max_ts,
                    self.first_arrival,
                    self.covers_from,
                    self.n,
                    len(self.ids),
                    len(extra),
                ),
                self.ids,
                extra,
                self.rows,
            )
        )

    @property
    def buckets(self) -> dict[int, dict[str, int]]:
        """Counts of actions not among its rows (the rollup's; a migrated member's)."""
        return self.extra.get("b", {})  # type: ignore[no-any-return]

    def id_groups(self) -> Iterable[tuple[int, bytes]]:
        ids, at = self.ids, 0
        while at < len(ids):
            arrival, count = _ID_GROUP.unpack_from(ids, at)
            at += _ID_GROUP.size
            yield arrival, ids[at : at + count * _HASH_BYTES]
            at += count * _HASH_BYTES


def _row_counts(rows: Iterable[ActionRow], policy: StatePolicy) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        names = counts.setdefault(policy.bucket_of(row[_TS]), {})
        names[row[_ACTION]] = names.get(row[_ACTION], 0) + 1
    return counts


def _first_in_bucket_after(
    times: list[float], guess: int, edge: float, size: float, *, ends: bool = False
) -> int:
    """Index of the first of ``times`` (ascending) whose bucket ``floor(t / size)`` is past
    the last bucket that starts at or before ``edge`` (``ends``: the last that ends at or
    before it): a bisection, checked against the buckets themselves at the boundary."""
    bucket = guess  # floor(edge / size), maybe one off by rounding
    # At most a step or two each way: past ~2**53 a step no longer changes the product,
    # and an unbounded loop would never end (an as_of far in the future).
    if ends:  # the last bucket that ends at or before edge
        for _ in range(3):
            if (bucket + 1) * size > edge:
                bucket -= 1
        for _ in range(3):
            if (bucket + 2) * size <= edge:
                bucket += 1
    else:  # the last bucket that starts at or before edge
        for _ in range(3):
            if bucket * size > edge:
                bucket -= 1
        for _ in range(3):
            if (bucket + 1) * size <= edge:
                bucket += 1
    at = bisect_left(times, (bucket + 1) * size)
    floor = math.floor
    while at > 0 and floor(times[at - 1] / size) > bucket:
        at -= 1
    while at < len(times) and floor(times[at] / size) <= bucket:
        at += 1
    return at


def _find_hash(ids: bytes | bytearray, digest: bytes, start: int) -> bool:
    """Whether ``digest`` is one of the 8-byte hashes in ``ids[start:]``."""
    at = ids.find(digest, start)
    while at != -1:  # a C-level search; a match must start on a hash boundary
        if (at - start) % _HASH_BYTES == 0:
            return True
        at = ids.find(digest, at + 1)
    return False


def _in_groups(ids: bytes, digest: bytes) -> bool:
    """Whether ``digest`` is one of the hashes of a chunk's id groups (see _ID_GROUP)."""
    at, end = 0, len(ids)
    while at < end:
        _, count = _ID_GROUP.unpack_from(ids, at)
        at += _ID_GROUP.size
        stop = at + count * _HASH_BYTES
        if _find_hash(ids[at:stop], digest, 0):
            return True
        at = stop
    return False


def _encode_ids(groups: Iterable[tuple[int, bytes | bytearray]]) -> bytes:
    return b"".join(
        _ID_GROUP.pack(arrival, len(ids) // _HASH_BYTES) + ids for arrival, ids in groups if ids
    )


def _view(
    member_id: str,
    as_of: float,
    policy: StatePolicy,
    rows: list[ActionRow],
    extras: list[dict[int, dict[str, int]]],
    last_event_ts: float | None,
    last_applied_at: float | None,
) -> dict[str, Any]:
    """The features of a member: its rows (oldest event first) and counts besides them."""
    times = list(map(itemgetter(_TS), rows))  # ascending
    # The newest max_recent_actions, then those within (as_of - retention, as_of].
    start = max(
        len(rows) - policy.max_recent_actions, bisect_right(times, as_of - policy.retention)
    )
    shown = rows[start : bisect_right(times, as_of)]
    shown.reverse()
    recent = [
        {"event_id": e, "item_id": i, "action": a, "ts": t, "attributes": attrs or {}}
        for e, i, a, t, attrs, _ in shown
    ]
    for body, row in zip(recent, shown, strict=True):
        if row[_JOINED] is not None:
            body["joined"] = row[_JOINED]
    size = policy.bucket
    # Rows are sorted by event time, so by bucket: a window's rows are one slice.
    end = _first_in_bucket_after(times, math.floor(as_of / size), as_of, size)
    counts: dict[str, dict[str, int]] = {}
    for window in policy.windows:
        totals = dict.fromkeys(policy.actions_of_interest, 0)
        # The first bucket that ends after as_of - W holds the window's first row.
        first = _first_in_bucket_after(
            times, math.floor((as_of - window) / size), as_of - window, size, ends=True
        )
        totals.update(Counter(map(itemgetter(_ACTION), rows[first:end])))
        for extra in extras:
            for k, bucket_counts in extra.items():
                if policy.bucket_in_window(k, as_of, window):
                    for name, n in bucket_counts.items():
                        totals[name] = totals.get(name, 0) + n
        counts[format_duration(window)] = totals
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


@dataclass(slots=True)
class MemberState:
    """Everything kept for one member, as read from its keys, and what a batch added.

    ``last_offsets`` holds the offset of the last event applied from each :class:`Source`.
    Applying an action adds its row to ``new_rows`` and its id hash to ``new_ids``: neither
    the stored rows nor the stored ids are decoded (applying costs the same for a member
    with 3 actions as for one with 100). :meth:`records` turns what was added and pruned
    into the keys to write. Reads serve the newest ``max_recent_actions`` by event time;
    chunks whose rows are all older than those are retired into the rollup once the member
    has a quarter more (at least 8), so the retiring is invisible to reads.
    """

    last_offsets: list[int] = field(default_factory=lambda: [-1] * len(Source))
    last_event_ts: float | None = None
    last_applied_at: float | None = None
    chunks: list[_Chunk] = field(default_factory=list)  # live, in seq (arrival) order
    rollup: _Chunk | None = None
    new_rows: list[ActionRow] = field(default_factory=list)  # applied, not yet written
    new_ids: dict[int, bytearray] = field(default_factory=dict)  # their hashes by arrival
    new_buckets: dict[int, dict[str, int]] = field(default_factory=dict)  # a migration's
    changed: bool = False  # applied something since loaded: a chunk to write
    legacy: bool = False  # stored under the member's own key, in the older layout
    stale: list[int] = field(default_factory=list)  # superseded chunks found at load
    dropped: list[int] = field(default_factory=list)  # chunks pruned, not yet deleted
    last_seq: int = 0  # the highest sequence number in use (or named) for the member
    _seen: dict[int, bytearray] | None = None  # every id hash, by arrival bucket
    _forgotten: dict[int, int] | None = None  # leading bytes of each no longer remembered
    _now: float | None = None

    # -- codec -------------------------------------------------------------------------

    @classmethod
    def from_records(
        cls, member: bytes, records: Iterable[tuple[bytes, bytes]], policy: StatePolicy
    ) -> MemberState | None:
        """The state stored under ``records`` (the keys in :func:`member_range`, in key
        order); ``None`` for none."""
        legacy: bytes | None = None
        chunks: list[_Chunk] = []
        stale: list[int] = []
        rollup: _Chunk | None = None
        absorbed: frozenset[int] = frozenset()
        last_seq = 0
        prefix = len(member) + 1
        size = prefix + _SEQ.size
        decode = _Chunk.decode
        for key, value in records:
            if len(key) != size:
                if key == member:
                    legacy = value
                continue
            seq = int.from_bytes(key[prefix:], "big")
            chunk = decode(seq, value)
            if seq > last_seq:
                last_seq = seq
            if seq == ROLLUP_SEQ:
                rollup = chunk
                absorbed = frozenset(chunk.extra.get("a", ()))
            elif absorbed and seq in absorbed:
                stale.append(seq)  # retired by a write cut short before its tombstone
            else:
                covers = chunk.covers_from
                # Keys come in seq order: chunks a merge replaced come just before it.
                while covers and chunks and chunks[-1].seq >= covers:
                    stale.append(chunks.pop().seq)
                chunks.append(chunk)
        if not chunks and rollup is None:
            return None if legacy is None else cls._from_legacy(legacy, policy)
        if legacy is not None:
            stale.append(-1)  # the older layout's key, rewritten as chunks
        if absorbed:
            last_seq = max(last_seq, max(absorbed))
        if not chunks:
            return cls(rollup=rollup, stale=stale, last_seq=last_seq)
        newest = chunks[-1]
        return cls(
            list(newest.offsets),
            newest.last_event_ts,
            newest.last_applied_at,
            chunks,
            rollup,
            stale=stale,
            last_seq=last_seq,
        )

    @classmethod
    def _from_legacy(cls, data: bytes, policy: StatePolicy) -> MemberState:
        """A value of the one-key layout, as the rows and ids of the member's next chunk."""
        if data[:1] == b"\x02":
            (length,) = _HEADER_LENGTH.unpack_from(data, 1)
            start = 1 + _HEADER_LENGTH.size
            body = codec.loads(data[start : start + length])
            rows: list[ActionRow] = _decode_rows([data[start + length :]])
        else:  # one JSON object, rows included
            body = codec.loads(data)
            rows = body["a"]
        offsets = body["o"]
        if isinstance(offsets, int):  # written before the repartition topic existed
            offsets = [offsets] + [-1] * (len(Source) - 1)
        rows.sort(key=itemgetter(_TS))
        # Counts of actions whose rows were trimmed stay as counts; the rows count for the rest.
        buckets: dict[int, dict[str, int]] = {}
        for k, names in body["b"]:
            left = {n: c for n, c in names.items() if c > 0}
            if left:
                buckets[k] = left
        for k, names in _row_counts(rows, policy).items():
            held = buckets.get(k, {})
            for name, n in names.items():
                if held.get(name, 0) > n:
                    held[name] -= n
                else:
                    held.pop(name, None)
            if not held:
                buckets.pop(k, None)
        return cls(
            last_offsets=offsets,
            last_event_ts=body["t"],
            last_applied_at=body["p"],
            new_rows=rows,
            new_ids={k: bytearray(a2b_base64(ids)) for k, ids in body.get("d", ())},
            new_buckets=buckets,
            legacy=True,
        )

    # -- reads -------------------------------------------------------------------------

    @property
    def actions(self) -> list[ActionRow]:
        """Every stored row, decoded, oldest event first (arrival order among equal event
        times): up to ``max_recent_actions`` plus the retiring's slack (see the class)."""
        parts = [c.rows for c in self.chunks]
        if self.new_rows:
            parts.append(_encode_rows(self.new_rows))
        rows = _decode_rows(parts)
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

    @property
    def row_count(self) -> int:
        return sum(c.n for c in self.chunks) + len(self.new_rows)

    def bucket_counts(self, policy: StatePolicy) -> dict[int, dict[str, int]]:
        """Counts per event-time bucket of every action stored (expired ones included until
        their chunk is pruned)."""
        counts: dict[int, dict[str, int]] = {}
        for extra in self._extra_buckets():
            _add_counts(counts, extra)
        _add_counts(counts, _row_counts(self.actions, policy))
        return counts

    def holds_events_until(self, ts: float, policy: StatePolicy) -> bool:
        """Whether anything stored is of an event at or before ``ts`` (an erasure's time):
        a row, or counts in a bucket that starts by then."""
        if any(row[_TS] <= ts for row in self.actions):
            return True
        return any(k * policy.bucket <= ts for extra in self._extra_buckets() for k in extra)

    def _extra_buckets(self) -> Iterable[dict[int, dict[str, int]]]:
        if self.rollup is not None:
            yield self.rollup.buckets
        for chunk in self.chunks:
            if chunk.extra:
                yield chunk.buckets
        if self.new_buckets:
            yield self.new_buckets

    @property
    def is_empty(self) -> bool:
        return (
            not self.chunks and self.rollup is None and not self.new_rows and not (self.new_buckets)
        )

    def features(self, member_id: str, as_of: float, policy: StatePolicy) -> dict[str, Any]:
        """The served view as of ``as_of``: nothing older than the retention, nothing later."""
        return _view(
            member_id,
            as_of,
            policy,
            self.actions,
            list(self._extra_buckets()),
            self.last_event_ts,
            self.last_applied_at,
        )

    @classmethod
    def read_features(
        cls,
        member: bytes,
        records: Iterable[tuple[bytes, bytes]],
        as_of: float,
        policy: StatePolicy,
    ) -> dict[str, Any]:
        """:meth:`features` of the state stored under ``records`` (see :meth:`from_records`),
        reading no more of them than a read needs."""
        prefix = len(member) + 1
        size = prefix + _SEQ.size
        unpack = _CHUNK_HEAD.unpack_from
        parts: list[bytes] = []
        last_seq = -1
        t = p = _NONE
        seen: list[tuple[bytes, bytes]] = []
        marker = erased_key(member)
        erased: list[bytes] = []

        def unmarked() -> Iterable[tuple[bytes, bytes]]:
            for key, value in records:
                if key == marker:
                    erased.append(value)
                else:
                    yield key, value

        remaining = iter(unmarked())
        simple = True
        for key, value in remaining:
            seen.append((key, value))
            if len(key) != size or key[prefix:] == b"\0\0\0\0":
                simple = False  # the older layout, or a rollup: the general way
                break
            head = unpack(value)
            covers = head[7]
            if head[10] or (covers and last_seq >= covers):
                simple = False  # counts beside the rows, or chunks a merge replaced
                break
            last_seq = int.from_bytes(key[prefix:], "big")
            parts.append(value[_HEAD_SIZE + head[9] :])
            t, p = head[3], head[4]
        if simple:
            rows = _decode_rows(parts)
            rows.sort(key=itemgetter(_TS))
            view = _view(member.decode(), as_of, policy, rows, [], _float(t), _float(p))
        else:
            seen += remaining
            state = cls.from_records(member, seen, policy) or cls()
            view = state.features(member.decode(), as_of, policy)
        if erased:
            view["erased"] = codec.loads(erased[0])
        return view

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
        self.changed = True
        self._now = applied_at
        digest = event_id_hash(action.event_id)
        if self._forgotten is None:
            self._forget_ids(applied_at, policy)
        if self._has_seen(digest):
            return Applied.DUPLICATE
        arrival = math.floor(applied_at * DEDUPE_BUCKETS_PER_WINDOW / policy.dedupe_window)
        added = self.new_ids.get(arrival)
        if added is None:
            self.new_ids[arrival] = bytearray(digest)
        else:
            added += digest
        seen = self._seen
        if seen is not None:
            held = seen.get(arrival)
            if held is None:
                seen[arrival] = bytearray(digest)
            else:
                held += digest
        self.new_rows.append(
            [
                action.event_id,
                action.item_id,
                action.action,
                action.ts,
                action.attributes or None,
                action.joined,
            ]
        )
        if self.last_event_ts is None or action.ts > self.last_event_ts:
            self.last_event_ts = action.ts
        self.last_applied_at = applied_at
        return Applied.APPLIED

    @property
    def seen(self) -> dict[int, bytearray]:
        """Every id hash stored, by arrival bucket (forgotten ones included until their
        chunk is deleted: see :meth:`prune`)."""
        seen = self._seen
        if seen is None:
            seen = self._seen = {}
            sources = [self.rollup.ids] if self.rollup is not None else []
            sources += [c.ids for c in self.chunks]
            for ids in sources:
                at, end = 0, len(ids)
                while at < end:
                    arrival, count = _ID_GROUP.unpack_from(ids, at)
                    at += _ID_GROUP.size
                    stop = at + count * _HASH_BYTES
                    held = seen.get(arrival)
                    if held is None:
                        seen[arrival] = bytearray(ids[at:stop])
                    else:
                        held += ids[at:stop]
                    at = stop
            for arrival, added in self.new_ids.items():
                held = seen.get(arrival)
                if held is None:
                    seen[arrival] = bytearray(added)
                else:
                    held += added
        return seen

    def _has_seen(self, digest: bytes) -> bool:
        forgotten = self._forgotten
        if forgotten:  # some ids no longer count: look in the merged ids, past those
            for arrival, ids in self.seen.items():
                if _find_hash(ids, digest, forgotten.get(arrival, 0)):
                    return True
            return False
        # Everything stored counts: search each chunk's ids where they lie.
        rollup = self.rollup
        if rollup is not None and digest in rollup.ids and _in_groups(rollup.ids, digest):
            return True
        for chunk in self.chunks:
            if digest in chunk.ids and _in_groups(chunk.ids, digest):
                return True
        return any(_find_hash(ids, digest, 0) for ids in self.new_ids.values())

    def _forget_ids(self, now: float, policy: StatePolicy) -> None:
        """Which ids are no longer remembered: those that left the dedupe window, then the
        oldest beyond its cap (bounded space). Stored ids are dropped with their chunk."""
        size = policy.dedupe_bucket
        horizon = now - policy.dedupe_window
        cap = policy.dedupe_max_ids * _HASH_BYTES
        # At most this many bytes of ids, and none older than this: then all count.
        chunks = self.chunks if self.rollup is None else [self.rollup, *self.chunks]
        most = sum(len(c.ids) for c in chunks) + sum(map(len, self.new_ids.values()))
        oldest = min(
            min((c.first_arrival for c in chunks), default=_NO_ARRIVAL),
            min(self.new_ids, default=_NO_ARRIVAL),
        )
        if most <= cap and oldest * size + size > horizon:
            self._forgotten = {}  # all remembered
            return
        seen = self.seen
        forgotten: dict[int, int] = {}
        live = 0
        for arrival in sorted(seen):
            if arrival * size + size <= horizon:
                forgotten[arrival] = len(seen[arrival])
            else:
                live += len(seen[arrival])
        excess = live - cap
        for arrival in sorted(seen):
            if excess <= 0:
                break
            if arrival in forgotten:
                continue
            skip = min(excess, len(seen[arrival]))  # arrival order: the oldest go first
            forgotten[arrival] = skip
            excess -= skip
        self._forgotten = forgotten

    def prune(self, now: float, policy: StatePolicy) -> bool:
        """Drop the chunks whose every action has left the retention (counts included), and a
        rollup that has all expired; True if anything was dropped. Reads never serve what has
        expired, whether dropped or not."""
        self._now = now
        self._forgotten = None  # worked out again at the next apply, as of then
        horizon = now - policy.retention
        chunks = self.chunks
        rollup = self.rollup
        # The newest chunk holds the current offsets: kept unless everything goes.
        candidates = [
            c for c in chunks[:-1] if not (c.max_ts > horizon) or c.extra
        ]  # a row within the retention keeps its chunk: most chunks stop here
        if chunks and (not chunks[-1].max_ts > horizon or chunks[-1].extra):
            candidates.append(chunks[-1])
        pending = self._prune_pending(horizon, now - policy.dedupe_window, policy)
        if not candidates and rollup is None:
            return pending
        drop = [c for c in candidates if self._expired(c, horizon, policy)]
        rollup_expired = rollup is not None and self._expired(rollup, horizon, policy)
        everything = (
            len(drop) == len(chunks)
            and (rollup is None or rollup_expired)
            and not self.new_rows
            and not self.new_buckets
        )
        if not everything and drop and drop[-1] is chunks[-1]:
            drop.pop()
        if not drop and not rollup_expired:
            return pending
        gone = {c.seq for c in drop}
        self.dropped += [c.seq for c in drop]
        self.chunks = [c for c in chunks if c.seq not in gone]
        if rollup_expired:
            self.dropped.append(ROLLUP_SEQ)
            self.rollup = None
        self._seen = None
        return True

    def _prune_pending(self, horizon: float, id_horizon: float, policy: StatePolicy) -> bool:
        """Drop what has expired from what is not yet written (a member read in the older
        layout holds all it has there); True if anything was."""
        if not self.legacy:
            return False
        size, bucket = policy.dedupe_bucket, policy.bucket
        rows = [r for r in self.new_rows if (policy.bucket_of(r[_TS]) + 1) * bucket > horizon]
        buckets = {k: v for k, v in self.new_buckets.items() if (k + 1) * bucket > horizon}
        ids = {k: v for k, v in self.new_ids.items() if k * size + size > id_horizon}
        if (len(rows), len(buckets), len(ids)) == (
            len(self.new_rows),
            len(self.new_buckets),
            len(self.new_ids),
        ):
            return False
        self.new_rows, self.new_buckets, self.new_ids = rows, buckets, ids
        self._seen = None
        return True

    @staticmethod
    def _expired(chunk: _Chunk, horizon: float, policy: StatePolicy) -> bool:
        """Every action of the chunk (its counts included) has left the retention. Its ids
        go with it: a retry of any of those events is older than the retention, and so
        refused before it is applied."""
        if chunk.n and (policy.bucket_of(chunk.max_ts) + 1) * policy.bucket > horizon:
            return False
        return all((k + 1) * policy.bucket <= horizon for k in chunk.buckets)

    # -- writes ------------------------------------------------------------------------

    def records(self, member: bytes, policy: StatePolicy) -> dict[bytes, bytes | None]:
        """The keys to write (``None``: delete) for what was applied and pruned since the
        state was read, in the order that keeps every prefix readable (see the module);
        the state is then as stored."""
        out: dict[bytes, bytes | None] = {}
        key = chunk_key

        def tombstone(seq: int) -> None:
            out[member if seq < 0 else key(member, seq)] = None

        for seq in self.stale:
            tombstone(seq)
        self.stale = []
        replaced: list[int] = []
        if self.is_empty:
            replaced = self.dropped + ([-1] if self.legacy else [])
        elif self.changed or self.legacy or self.new_rows:
            replaced = self._write_chunk(member, policy, out)
            replaced += self._retire(member, policy, out)
            replaced += self.dropped
            if self.legacy:
                replaced.append(-1)
        else:
            replaced = list(self.dropped)
        for seq in replaced:
            if seq == ROLLUP_SEQ and self.rollup is not None:
                continue  # rewritten by this write
            tombstone(seq)
        self.dropped = []
        self.legacy = False
        self.changed = False
        return out

    def _write_chunk(
        self, member: bytes, policy: StatePolicy, out: dict[bytes, bytes | None]
    ) -> list[int]:
        """Write what was applied as a new chunk, merged with the small ones at the end
        when they are enough; returns the chunks it replaces."""
        chunks = self.chunks
        count = rows = 0
        for chunk in reversed(chunks):
            if chunk.n >= CHUNK_ROWS:
                break
            count += 1
            rows += chunk.n
        rows += len(self.new_rows)
        merge = count > 0 and (rows >= CHUNK_ROWS or count + 1 >= CHUNK_ROWS)
        if not merge and not self.new_buckets:
            return self._append_chunk(member, out)
        smalls = chunks[len(chunks) - count :] if count else []
        parts = [c for c in smalls if merge]
        new_rows = _encode_rows(self.new_rows) if self.new_rows else b""
        groups: dict[int, bytearray] = {}
        buckets: dict[int, dict[str, int]] = {}
        for chunk in parts:
            for arrival, ids in chunk.id_groups():
                groups.setdefault(arrival, bytearray()).extend(ids)
            _add_counts(buckets, chunk.buckets)
        for arrival, added in self.new_ids.items():
            groups.setdefault(arrival, bytearray()).extend(added)
        _add_counts(buckets, self.new_buckets)
        max_ts = max(
            [c.max_ts for c in parts if c.n] + [row[_TS] for row in self.new_rows],
            default=_NONE,
        )
        self.last_seq += 1
        chunk = _Chunk(
            seq=self.last_seq,
            offsets=list(self.last_offsets),
            last_event_ts=self.last_event_ts,
            last_applied_at=self.last_applied_at,
            max_ts=max_ts,
            covers_from=parts[0].seq if parts else 0,
            n=rows if merge else len(self.new_rows),
            ids=_encode_ids(sorted(groups.items())),
            rows=b",".join([c.rows for c in parts if c.n] + ([new_rows] if new_rows else [])),
            extra={"b": buckets} if buckets else {},
            first_arrival=min(groups, default=_NO_ARRIVAL),
        )
        out[chunk_key(member, chunk.seq)] = chunk.encode()
        if merge:
            self.chunks = self.chunks[: len(self.chunks) - len(smalls)]
        self.chunks.append(chunk)
        self.new_rows = []
        self.new_ids = {}
        self.new_buckets = {}
        return [c.seq for c in parts]

    def _append_chunk(self, member: bytes, out: dict[bytes, bytes | None]) -> list[int]:
        """:meth:`_write_chunk` when nothing is merged: what a batch writes most often."""
        rows = self.new_rows
        new_ids = self.new_ids
        ids = b"".join(
            [_ID_GROUP.pack(arrival, len(added) >> 3) + added for arrival, added in new_ids.items()]
        )
        first = min(new_ids) if new_ids else _NO_ARRIVAL
        t, p = self.last_event_ts, self.last_applied_at
        encoded = codec.dumps(rows)[1:-1] if rows else b""
        max_ts = max(map(itemgetter(_TS), rows)) if rows else _NONE
        seq = self.last_seq = self.last_seq + 1
        offsets = self.last_offsets
        out[member + b"\0" + _SEQ.pack(seq)] = b"".join(
            (
                _CHUNK_HEAD.pack(
                    _CHUNK_LAYOUT,
                    offsets[0],
                    offsets[1],
                    _NONE if t is None else t,
                    _NONE if p is None else p,
                    max_ts,
                    first,
                    0,
                    len(rows),
                    len(ids),
                    0,
                ),
                ids,
                encoded,
            )
        )
        self.chunks.append(
            _Chunk(
                seq, list(offsets), t, p, max_ts, 0, len(rows), ids, encoded, first_arrival=first
            )
        )
        self.new_rows = []
        self.new_ids = {}
        return []

    def _retire(
        self, member: bytes, policy: StatePolicy, out: dict[bytes, bytes | None]
    ) -> list[int]:
        """Once the member holds a quarter more rows than reads serve (at least 8), move
        the chunks none of whose rows are served into the rollup: their counts and ids stay,
        their rows go. Returns the chunks retired."""
        cap = policy.max_recent_actions
        slack = max(8, cap // 4)
        rows = self.row_count
        if rows <= cap + slack or len(self.chunks) < 2:
            return []
        if self.rollup is not None and rows - self.rollup.extra.get("r", 0) < slack:
            return []  # not a slack's worth of rows since the last retiring (events out of order)
        tagged = [
            (row[_TS], n, row)
            for n, chunk in enumerate(self.chunks)
            for row in _decode_rows([chunk.rows])
        ]
        tagged.sort(key=itemgetter(0))  # stable: arrival order among equal event times
        served = {n for _, n, _ in tagged[max(0, len(tagged) - cap) :]}
        served.add(len(self.chunks) - 1)  # the newest holds the current offsets
        retired = [c for n, c in enumerate(self.chunks) if n not in served]
        if not retired:
            return []
        now = self._now if self._now is not None else (self.last_applied_at or 0.0)
        horizon = now - policy.retention
        id_horizon = now - policy.dedupe_window
        buckets: dict[int, dict[str, int]] = {}
        groups: dict[int, bytearray] = {}
        absorbed = [self.rollup] if self.rollup is not None else []
        for chunk in absorbed + retired:
            _add_counts(buckets, chunk.buckets)
            for arrival, ids in chunk.id_groups():
                groups.setdefault(arrival, bytearray()).extend(ids)
        retired_seqs = {c.seq for c in retired}
        _add_counts(
            buckets,
            _row_counts(
                (row for _, n, row in tagged if self.chunks[n].seq in retired_seqs), policy
            ),
        )
        # Nothing expired, nor any id forgotten, is carried over into the new rollup.
        buckets = {k: v for k, v in buckets.items() if (k + 1) * policy.bucket > horizon}
        size = policy.dedupe_bucket
        forgotten = self._forgotten or {}
        kept_groups = []
        for arrival in sorted(groups):
            if arrival * size + size <= id_horizon:
                continue
            group = groups[arrival]
            skip = forgotten.get(arrival, 0)
            kept_groups.append((arrival, group[min(skip, len(group)) :]))
        self.rollup = _Chunk(
            seq=ROLLUP_SEQ,
            offsets=list(self.last_offsets),
            last_event_ts=self.last_event_ts,
            last_applied_at=self.last_applied_at,
            max_ts=_NONE,
            covers_from=0,
            n=0,
            ids=_encode_ids(kept_groups),
            rows=b"",
            first_arrival=kept_groups[0][0] if kept_groups else _NO_ARRIVAL,
            extra={"b": buckets, "a": sorted(retired_seqs), "r": 0},
        )
        self.chunks = [c for c in self.chunks if c.seq not in retired_seqs]
        self.rollup.extra["r"] = self.row_count  # rows left: the next retiring waits a slack
        out[chunk_key(member, ROLLUP_SEQ)] = self.rollup.encode()
        self._seen = None
        self._forgotten = None
        return sorted(retired_seqs)
