"""The online store: member state in a changelog-backed Faust table on RocksDB, written in batches.

A member's state is a few keys of its own (:class:`MemberState`): an ingest batch costs one
range read per member it touches and writes its new actions as a new chunk (see
``nearline.tables.member_state``), through :class:`ChangelogTable`.

Every read of member state goes through ``table.scan`` alone, so a serving process reads
through a :class:`SecondaryTable` as the worker reads through its own table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from nearline.foundation.kafka import partition_for_key
from nearline.tables.changelog import INTERNAL_PREFIXES, ChangelogTable, LocalTable
from nearline.tables.member_state import (
    MemberState,
    StatePolicy,
    erased_key,
    member_of,
    member_range,
)
from nearline.tables.secondary import SecondaryTable

__all__ = ["MEMBERS_TABLE", "NotOwned", "OnlineStore", "Restoring"]

#: The Faust table of member states (its changelog topic is ``<app id>-members-changelog``).
MEMBERS_TABLE = "members"

log = logging.getLogger(__name__)

#: Members encoded, or swept, between two yields to the event loop.
_YIELD_EVERY = 500


class NotOwned(LookupError):
    """This worker does not hold the member's partition right now."""

    def __init__(self, partition: int, owner_url: str | None) -> None:
        super().__init__(f"partition {partition} is owned by {owner_url or 'no worker yet'}")
        self.partition = partition
        self.owner_url = owner_url


class Restoring(LookupError):
    """This worker holds the member's partition but is restoring it from the changelog: its
    local state may lack the latest writes, so it does not answer from it yet."""

    def __init__(self, partition: int) -> None:
        super().__init__(
            f"partition {partition} is being restored from its changelog after a rebalance; "
            "retry shortly"
        )
        self.partition = partition


class OnlineStore:
    """Reads and batched writes of :class:`MemberState` values, keyed by member id."""

    def __init__(
        self,
        table: ChangelogTable | LocalTable | SecondaryTable,
        policy: StatePolicy,
        partitions: int,
    ) -> None:
        # A serving process reads through a SecondaryTable and never writes.
        self.table = table
        self.policy = policy
        self.partitions = partitions

    @property
    def write_lock(self) -> asyncio.Lock:
        """Held by every read-modify-write (ingest batch, retention sweep) until its
        changelog records are acknowledged, so changelog order always equals write order."""
        return self._writable().write_lock

    def _writable(self) -> ChangelogTable | LocalTable:
        assert not isinstance(self.table, SecondaryTable), "a serving process does not write"
        return self.table

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic

    # -- ownership ---------------------------------------------------------------------

    def partition_of(self, member_id: str) -> int:
        return partition_for_key(member_id.encode(), self.partitions)

    def owns(self, partition: int) -> bool:
        return self.table.owns(partition)

    def owner_url(self, partition: int) -> str | None:
        return self.table.owner_url(partition)

    def owned_partitions(self) -> list[int]:
        return self.table.owned_partitions()

    # -- reads -------------------------------------------------------------------------

    def load(self, partition: int, key: bytes) -> MemberState | None:
        """The member's state: one range read of its keys."""
        start, stop = member_range(key)
        return MemberState.from_records(key, self.table.scan(partition, start, stop), self.policy)

    def features(self, member_id: str, as_of: float) -> dict[str, Any]:
        """The member's served features; raises :class:`NotOwned` if another worker has them,
        :class:`Restoring` while this one restores them."""
        partition = self.partition_of(member_id)
        if not self.owns(partition):
            raise NotOwned(partition, self.owner_url(partition))
        if self.table.restoring():
            raise Restoring(partition)
        key = member_id.encode()
        records = self.table.scan(partition, *member_range(key))
        return MemberState.read_features(key, records, as_of, self.policy)

    # -- writes ------------------------------------------------------------------------

    async def write(self, updates: Mapping[int, Mapping[bytes, MemberState]]) -> None:
        """Store what changed in these states (an empty state is deleted, with a tombstone
        for each of its keys) and wait until the changelog has it all.

        Call with :attr:`write_lock` held, around the reads the new states came from. The
        batch's source offsets are committed only after this returns, so a crash before it
        re-reads the batch; :meth:`MemberState.apply` makes that re-read harmless.
        """
        await (await self.send(updates))

    async def send(
        self,
        updates: Mapping[int, Mapping[bytes, MemberState]],
        *,
        current: Callable[[], bool] | None = None,
    ) -> Awaitable[None]:
        """Store new states and queue their changelog records; returns what to await for
        the acknowledgement (see :meth:`ChangelogTable.send`): an ingest batch applies the
        next batch meanwhile, and commits its offsets once acknowledged.

        ``current``: whether the records the states came from are still this worker's to
        apply (their fetch's consumer generation is current, its flow running); once it is
        not, nothing more is written (see :meth:`ChangelogTable.send`)."""
        encoded: dict[int, dict[bytes, bytes | None]] = {}
        count = 0
        policy = self.policy
        for partition, states in updates.items():
            values = encoded[partition] = {}
            for key, state in states.items():
                values.update(state.records(key, policy))
                count += 1
                if count % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a large batch must not hold requests meanwhile
        # A member's chunks are numbered from what its owner last read: a worker that lost
        # the partition meanwhile must not write them over its new owner's.
        return await self._writable().send(encoded, owned_only=True, current=current)

    # -- erasure -----------------------------------------------------------------------

    def erased_marker(self, partition: int, member: bytes) -> bytes | None:
        """The member's erasure marker (see ``nearline.tables.member_state``), if it has one."""
        marker = erased_key(member)
        for _, value in self.table.scan(partition, marker, marker + b"\0"):
            return value
        return None

    async def erase(
        self,
        markers: Mapping[int, Mapping[bytes, tuple[bytes, float]]],
        current: Callable[[], bool] | None = None,
    ) -> tuple[int, Awaitable[None]]:
        """Erase members: by partition, member: (its erasure marker, the erasure's time).

        A member holding anything of an event at or before that time has every key
        deleted, a tombstone each; one holding only later events (applied before the
        marker was, by a worker that knew of the erasure) keeps them. Each then gets its
        marker, after its tombstones: a changelog cut short before it restores a member
        without one, whose erasure is then applied again. Returns how many keys were
        deleted and what to await for the changelog's acknowledgement. Call with
        :attr:`write_lock` held; nothing is written to a partition no longer owned here, nor
        once ``current`` is false (a rebalance began: see :meth:`ChangelogTable.send`).
        """
        values: dict[int, dict[bytes, bytes | None]] = {}
        deleted = 0
        for partition, members in markers.items():
            writes = values[partition] = {}
            for member, (marker, erased_at) in members.items():
                key = erased_key(member)
                records = [
                    (k, v) for k, v in self.table.scan(partition, *member_range(member)) if k != key
                ]
                state = MemberState.from_records(member, records, self.policy)
                if state is not None and state.holds_events_until(erased_at, self.policy):
                    writes.update(dict.fromkeys((k for k, _ in records), None))
                    deleted += len(records)
                writes[key] = marker
        return deleted, await self._writable().send(values, owned_only=True, current=current)

    # -- retention ---------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> tuple[int, int]:
        """Prune expired history in the partitions owned here; returns (pruned, deleted)."""
        now = time.time() if now is None else now
        pruned = deleted = 0
        for partition in self.owned_partitions():
            expired: list[bytes] = []
            seen = 0
            for member, records in self._members(partition):
                state = MemberState.from_records(member, records, self.policy)
                if state is not None and state.prune(now, self.policy):
                    expired.append(member)
                seen += 1
                if seen % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # keep serving while a large partition is swept
            if not expired or not self.owns(partition):
                continue
            async with self.write_lock:
                # Re-read: the ingest agent may have written these members while we yielded.
                fresh: dict[bytes, MemberState] = {}
                for key in expired:
                    current = self.load(partition, key)
                    if current is not None and current.prune(now, self.policy):
                        fresh[key] = current
                gone = sum(1 for state in fresh.values() if state.is_empty)
                await self.write({partition: fresh})
            deleted += gone
            pruned += len(fresh) - gone
        if pruned or deleted:
            log.info("retention sweep: %d members pruned, %d deleted", pruned, deleted)
        return pruned, deleted

    def _members(self, partition: int) -> Iterator[tuple[bytes, list[tuple[bytes, bytes]]]]:
        """Each member of the partition with its keys and values, in key order."""
        member: bytes | None = None
        records: list[tuple[bytes, bytes]] = []
        for key, raw in self._writable().db(partition).items():
            assert isinstance(key, bytes) and isinstance(raw, bytes)  # raw-mode RocksDB
            if key.startswith(INTERNAL_PREFIXES):
                continue
            owner = member_of(key)
            if owner != member:
                if member is not None:
                    yield member, records
                member, records = owner, []
            records.append((key, raw))
        if member is not None:
            yield member, records
