"""The online store: member state in a changelog-backed Faust table on RocksDB, written in batches.

Faust's table API sends one changelog record per ``table[key] = value`` and insists on a
current event for each write, which caps a worker at a few thousand events per second.
nearline keeps the Faust table (its RocksDB partitions, changelog topic, recovery,
standbys and routing) and writes a whole batch at once: one RocksDB ``WriteBatch`` per
partition and one changelog record per member touched, all acknowledged before the
source offsets of the batch are committed. Recovery is Faust's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import faust
import rocksdict
from aiokafka import AIOKafkaProducer
from faust.types import TP, TableT

from app.kafka import OutgoingRecord, partition_for_key, send_in_batches
from tables.member_state import MemberState, StatePolicy

__all__ = ["NotOwned", "OnlineStore"]

log = logging.getLogger(__name__)

_FAUST_KEY_PREFIX = b"__faust"
#: Written alone after each batch when the broker needs it (see ``exact_end_offsets``).
END_MARKER_KEY = b"\0nearline-end"
_INTERNAL_PREFIXES = (_FAUST_KEY_PREFIX, b"\0")
_SWEEP_YIELD_EVERY = 500


class NotOwned(LookupError):
    """This worker does not hold the member's partition right now."""

    def __init__(self, partition: int, owner_url: str | None) -> None:
        super().__init__(f"partition {partition} is owned by {owner_url or 'no worker yet'}")
        self.partition = partition
        self.owner_url = owner_url


class OnlineStore:
    """Reads and batched writes of :class:`MemberState` values, keyed by member id."""

    def __init__(
        self,
        app: faust.App,
        table: TableT[bytes, bytes],
        policy: StatePolicy,
        partitions: int,
        *,
        exact_end_offsets: bool = False,
    ) -> None:
        self.app = app
        self.table = table
        self.policy = policy
        self.partitions = partitions
        # The embedded broker reports a partition's end as "base offset of the last record
        # batch + 1", and Faust's recovery reads up to that end. Ending every write with a
        # one-record batch (a marker) makes that answer exact while the records before it
        # are batched normally.
        self.exact_end_offsets = exact_end_offsets
        # Held by every read-modify-write (ingest batch, retention sweep) until its
        # changelog records are acknowledged, so changelog order always equals write order.
        self.write_lock = asyncio.Lock()

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    # -- ownership ---------------------------------------------------------------------

    def partition_of(self, member_id: str) -> int:
        return partition_for_key(member_id.encode(), self.partitions)

    def owns(self, partition: int) -> bool:
        return TP(self.changelog_topic, partition) in self.app.assignor.assigned_actives()

    def owner_url(self, partition: int) -> str | None:
        """The advertised URL of the worker that holds ``partition`` (from the assignor)."""
        try:
            metadata = self.app.router.table_metadata(self.table.name)
        except KeyError:
            return None
        for url, topics in metadata.items():
            if partition in topics.get(self.changelog_topic, ()):
                return str(url).rstrip("/")
        return None

    def owned_partitions(self) -> list[int]:
        topic = self.changelog_topic
        return sorted(
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic
        )

    # -- reads -------------------------------------------------------------------------

    def _db(self, partition: int) -> rocksdict.Rdict:
        # Faust opens one RocksDB per partition when it is assigned; reuse those handles.
        return self.table.data._db_for_partition(partition)  # type: ignore[attr-defined,no-any-return]

    def load(self, partition: int, key: bytes) -> MemberState | None:
        raw = self._db(partition).get(key)
        return None if raw is None else MemberState.from_bytes(raw)

    def features(self, member_id: str, as_of: float) -> dict[str, Any]:
        """The member's served features; raises :class:`NotOwned` if another worker has them."""
        partition = self.partition_of(member_id)
        if not self.owns(partition):
            raise NotOwned(partition, self.owner_url(partition))
        state = self.load(partition, member_id.encode()) or MemberState()
        return state.features(member_id, as_of, self.policy)

    # -- writes ------------------------------------------------------------------------

    async def write(self, updates: Mapping[int, Mapping[bytes, MemberState | None]]) -> None:
        """Store new states (``None`` deletes) and wait until the changelog has them all.

        Call with :attr:`write_lock` held, around the reads the new states came from.
        """
        producer = self._producer()
        sent: list[tuple[asyncio.Future[Any], int]] = []
        for partition, states in updates.items():
            if not states:
                continue
            batch = rocksdict.WriteBatch(raw_mode=True)
            records: list[OutgoingRecord] = []
            for key, state in states.items():
                value = None if state is None else state.to_bytes()
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
                records.append((key, value, None, None))
            self._db(partition).write(batch)
            topic = self.changelog_topic
            sent += await send_in_batches(producer, topic, partition, records)
            if self.exact_end_offsets:
                # A batch of its own, after the records': a partition's batches are sent
                # and stored in order, so the marker lands last.
                marker: OutgoingRecord = (END_MARKER_KEY, b"", None, None)
                sent += await send_in_batches(producer, topic, partition, [marker])
        if not sent:
            return
        # The batch's source offsets are committed only after this returns, so a crash
        # before it re-reads the batch; MemberState.apply makes that re-read harmless.
        results = await asyncio.gather(*(future for future, _ in sent))
        persisted: dict[int, int] = {}
        for meta, (_, count) in zip(results, sent, strict=True):
            last = meta.offset + count - 1
            persisted[meta.partition] = max(last, persisted.get(meta.partition, -1))
        topic = self.changelog_topic
        for partition, offset in persisted.items():
            self.table.data.set_persisted_offset(TP(topic, partition), offset)  # type: ignore[attr-defined]

    def _producer(self) -> AIOKafkaProducer:
        # Faust's producer sends one record at a time, a future each; changelog records go
        # straight to its aiokafka producer in whole batches instead.
        return self.app.producer._ensure_producer()  # type: ignore[attr-defined,no-any-return]

    # -- retention ---------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> tuple[int, int]:
        """Prune expired history in the partitions owned here; returns (pruned, deleted)."""
        now = time.time() if now is None else now
        pruned = deleted = 0
        for partition in self.owned_partitions():
            expired: list[bytes] = []
            seen = 0
            for key, raw in self._db(partition).items():
                assert isinstance(key, bytes) and isinstance(raw, bytes)  # raw-mode RocksDB
                if key.startswith(_INTERNAL_PREFIXES):
                    continue
                if MemberState.from_bytes(raw).prune(now, self.policy):
                    expired.append(key)
                seen += 1
                if seen % _SWEEP_YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # keep serving while a large partition is swept
            if not expired or not self.owns(partition):
                continue
            async with self.write_lock:
                # Re-read: the ingest agent may have written these members while we yielded.
                fresh: dict[bytes, MemberState | None] = {}
                for key in expired:
                    current = self.load(partition, key)
                    if current is None:
                        continue
                    current.prune(now, self.policy)
                    fresh[key] = None if current.is_empty else current
                await self.write({partition: fresh})
            deleted += sum(1 for v in fresh.values() if v is None)
            pruned += sum(1 for v in fresh.values() if v is not None)
        if pruned or deleted:
            log.info("retention sweep: %d members pruned, %d deleted", pruned, deleted)
        return pruned, deleted
