"""The outcomes join's state: logged responses waiting for their horizon, and the reactions to them.

A changelog-backed RocksDB table, partitioned like the recommendations log and the actions
(by member), so a partition's pending responses, its members' actions and this state are
all on the worker that owns the partition. Keys, by kind:

- ``d`` + due time (ms, 8 bytes big-endian) + log offset (8 bytes) + member: one logged
  response (its record as logged), in due order, so the responses due now are a range scan;
- ``m`` + member: how many of the member's responses are pending;
- ``r`` + member length (2 bytes) + member + event time (ms, 8 bytes) + event id: one action
  of a member with pending responses (``item_id`` NUL ``action``), so labels see every
  action within the horizon, not only the ones kept as the member's recent actions;
- ``v`` + member length (2 bytes) + member + due time (ms, 8 bytes) + log offset (8 bytes):
  what one pending response served (its request time, a big-endian double, then its served
  item ids joined by NUL), written and deleted with its ``d`` key and always before it, so
  labelling finds a member's later servings of an item with one prefix scan (last-touch
  attribution, see :mod:`nearline.agents.outcomes`). Keyed by due time, not request time,
  so it follows from the ``d`` key whatever the horizon is configured to later. A response
  stored by a version without these keys just takes no credit from earlier ones;
- ``i``: the labelling pass in progress (see :mod:`nearline.agents.outcomes`);
- ``s``: the log offset every response before which has been stored (8 bytes), written
  after the responses it covers, so a re-read of the log never stores a response again,
  whether it is still pending or already labelled.
"""

from __future__ import annotations

import asyncio
import bisect
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from nearline.tables.changelog import ChangelogTable, RawUpdates

__all__ = ["PENDING_TABLE", "DueResponse", "PendingResponses", "Reaction"]

#: The Faust table of responses waiting for their outcomes.
PENDING_TABLE = "outcomes-pending"

_DUE = b"d"
_COUNT = b"m"
_REACTION = b"r"
_SERVED = b"v"
IN_PROGRESS_KEY = b"i"
STORED_UNTIL_KEY = b"s"
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_F64 = struct.Struct(">d")
_DUE_HEAD = 1 + 8 + 8
#: Keys scanned between two yields to the event loop (a few milliseconds).
_SCAN_YIELD_EVERY = 5000


@dataclass(frozen=True, slots=True)
class DueResponse:
    key: bytes
    due_ms: int
    offset: int
    member: bytes
    record: bytes

    @property
    def served_key(self) -> bytes:
        """The key of what this response served (it may be absent: see the module)."""
        return served_key(self.member, self.due_ms, self.offset)


@dataclass(frozen=True, slots=True)
class Reaction:
    event_id: str
    item_id: str
    action: str
    ts: float


def _due_response(key: bytes, value: bytes) -> DueResponse:
    due_ms, offset = _U64.unpack_from(key, 1)[0], _U64.unpack_from(key, 9)[0]
    return DueResponse(key, due_ms, offset, key[_DUE_HEAD:], value)


def due_key(due_ms: int, offset: int, member: bytes) -> bytes:
    return _DUE + _U64.pack(due_ms) + _U64.pack(offset) + member


def _reaction_prefix(member: bytes) -> bytes:
    return _REACTION + _U16.pack(len(member)) + member


def reaction_key(member: bytes, ts: float, event_id: str) -> bytes:
    return _reaction_prefix(member) + _U64.pack(max(0, int(ts * 1000))) + event_id.encode()


def _served_prefix(member: bytes) -> bytes:
    return _SERVED + _U16.pack(len(member)) + member


def served_key(member: bytes, due_ms: int, offset: int) -> bytes:
    return _served_prefix(member) + _U64.pack(due_ms) + _U64.pack(offset)


class PendingResponses:
    """Reads and writes of the join state; writers hold :attr:`write_lock`."""

    def __init__(self, table: ChangelogTable) -> None:
        self.table = table
        self.write_lock = table.write_lock

    def owns(self, partition: int) -> bool:
        return self.table.owns(partition)

    def owned_partitions(self) -> list[int]:
        return self.table.owned_partitions()

    async def write(self, updates: RawUpdates) -> None:
        await self.table.write(updates)

    # -- responses ---------------------------------------------------------------------

    def due(self, partition: int, now_ms: int, limit: int) -> list[DueResponse]:
        """Up to ``limit`` responses due at ``now_ms``, earliest first."""
        found = []
        for key, value in self.table.scan(partition, _DUE, _DUE + _U64.pack(now_ms + 1)):
            found.append(_due_response(key, value))
            if len(found) >= limit:
                break
        return found

    def response(self, partition: int, key: bytes) -> DueResponse | None:
        """The response stored under ``key`` (a ``d`` key), if it is still pending."""
        value = self.table.get(partition, key)
        return None if value is None else _due_response(key, value)

    def earliest_due_ms(self, partition: int) -> int | None:
        for key, _ in self.table.scan(partition, _DUE, _DUE + b"\xff"):
            return int(_U64.unpack_from(key, 1)[0])
        return None

    def stored_until(self, partition: int) -> int:
        """The log offset before which every response of ``partition`` has been stored."""
        raw = self.table.get(partition, STORED_UNTIL_KEY)
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def pending_of(self, partition: int, member: bytes) -> int:
        raw = self.table.get(partition, _COUNT + member)
        return 0 if raw is None else int(raw)

    def count_key(self, member: bytes) -> bytes:
        return _COUNT + member

    # -- reactions ---------------------------------------------------------------------

    def members_waiting(self, partition: int, members: Iterable[bytes]) -> set[bytes]:
        """Those of ``members`` with at least one pending response."""
        get = self.table.db(partition).get
        return {member for member in members if get(_COUNT + member) is not None}

    def reactions(self, partition: int, member: bytes) -> list[Reaction]:
        prefix = _reaction_prefix(member)
        found = []
        for key, value in self.table.scan(partition, prefix, prefix + b"\xff" * 9):
            ts_ms = _U64.unpack_from(key, len(prefix))[0]
            item_id, _, action = value.decode().partition("\0")
            found.append(Reaction(key[len(prefix) + 8 :].decode(), item_id, action, ts_ms / 1000))
        return found

    def reaction_keys(self, partition: int, member: bytes, until_ms: int | None) -> Iterator[bytes]:
        """Keys of the member's reactions at or before ``until_ms`` (all of them if ``None``)."""
        prefix = _reaction_prefix(member)
        stop = prefix + (b"\xff" * 9 if until_ms is None else _U64.pack(until_ms + 1))
        for key, _ in self.table.scan(partition, prefix, stop):
            yield key

    # -- what responses served ---------------------------------------------------------

    def served_at(self, partition: int, member: bytes) -> dict[str, list[float]]:
        """Per item, when the member's pending responses that served it were requested
        (seconds, ascending): one prefix scan."""
        found: dict[str, list[float]] = {}
        for _, value in self._served_entries(partition, member):
            ts = _F64.unpack_from(value)[0]
            items = value[_F64.size :]
            for item_id in items.decode().split("\0") if items else ():
                bisect.insort(found.setdefault(item_id, []), ts)
        return found

    def _served_entries(self, partition: int, member: bytes) -> Iterator[tuple[bytes, bytes]]:
        prefix = _served_prefix(member)
        return iter(self.table.scan(partition, prefix, prefix + b"\xff" * 17))

    # -- erasure -----------------------------------------------------------------------

    async def member_keys(self, partition: int, members: set[bytes]) -> list[bytes]:
        """Every key of these members: their pending responses, what those served, their
        counts and reactions.

        Responses are kept in due order, not by member: if any of them has one pending,
        all are scanned once (erasures are rare), yielding to the event loop as it goes.
        """
        keys = [key for member in members for key in self.reaction_keys(partition, member, None)]
        keys += [key for member in members for key, _ in self._served_entries(partition, member)]
        counted = [
            _COUNT + member
            for member in members
            if self.table.get(partition, _COUNT + member) is not None
        ]
        if not counted:
            return keys  # nothing pending
        keys += counted
        for n, (key, _) in enumerate(self.table.scan(partition, _DUE, _DUE + b"\xff"), 1):
            if key[_DUE_HEAD:] in members:
                keys.append(key)
            if n % _SCAN_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return keys

    # -- the pass in progress ----------------------------------------------------------

    def in_progress(self, partition: int) -> bytes | None:
        return self.table.get(partition, IN_PROGRESS_KEY)


def stored_until_value(offset: int) -> bytes:
    return _U64.pack(offset)


def reaction_value(item_id: str, action: str) -> bytes:
    return f"{item_id}\0{action}".encode()


def served_value(ts: float, item_ids: Sequence[str]) -> bytes:
    """A ``v`` value: the request time and the served item ids, in served order."""
    return _F64.pack(ts) + "\0".join(item_ids).encode()
