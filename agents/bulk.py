"""Bulk delivery: topics' records taken off Faust's consumer a fetch at a time.

Faust hands every record to its streams one by one: a ``Message``, an ``Event``, a queue
hop and, in the consumer's drain loop, four asyncio tasks per record. For the actions topic
that machinery cost more than everything nearline does with a record. :class:`BulkConsumer`
is Faust's own aiokafka consumer with two changes: records of each :class:`BulkChannel`'s
topics are taken out of each fetch whole and queued on that channel, and changelog records
of partitions being recovered go to RocksDB a fetch at a time (all but the last of each
partition, which Faust applies as before).

The consumer never waits for a channel. One consumer reads every topic of the worker, so a
channel that waited for room would stop all of them: the outcomes join would stop the
actions. A channel that falls behind pauses its own topics' partitions instead (Faust stops
handing their records over; the fetcher keeps at most a fetch of them) and resumes them once
it has caught up.

What Faust does per record is kept per fetch: records of partitions that are not active
(paused for recovery, revoked) are left to Faust, which drops them; so are records before
a partition's read offset (fetched from an older position before a seek); a fetch made before a
rebalance is dropped, not processed (Faust seeks back to the committed offsets, so it is
read again); and offsets are acknowledged into Faust's own commit book-keeping only after
the caller has applied them, so a crash or rebalance re-reads exactly the unapplied ones.
Each acknowledgement also records the partition's applied position and time, which the lag
gauges (``app/lag.py``) compare with the broker's end offsets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rocksdict
from faust.types import TP

from nearline.foundation.faust_internals import (
    ConsumerInternals,
    acknowledging,
    partition_db,
    recovery_of,
)

__all__ = ["BulkChannel", "BulkConsumer", "Fetch"]


@dataclass(slots=True)
class Fetch:
    """Records of one or more fetches, by partition, made in one consumer generation."""

    generation: int
    records: dict[TP, list[Any]]  # aiokafka ConsumerRecords, in offset order per partition

    def __len__(self) -> int:
        return sum(len(records) for records in self.records.values())

    def merge(self, other: Fetch) -> None:
        for tp, records in other.records.items():
            self.records.setdefault(tp, []).extend(records)


class BulkChannel:
    """A queue of fetches of some topics, for one task to apply.

    It never makes the consumer wait: with ``max_records`` or more queued it asks the
    consumer to pause its topics' partitions (:attr:`full`), and to resume them once the
    task has taken the queue down to half. The bound is in records, well above what
    piles up while the task applies one batch: a paused partition costs the next fetch a
    round trip, so pausing must mean "behind", not "busy".
    """

    def __init__(self, topics: Collection[str], *, max_records: int) -> None:
        self.topics = frozenset(topics)
        self.max_records = max_records
        self._queue: asyncio.Queue[Fetch] = asyncio.Queue()
        self._queued = 0  # records in the queue
        #: Partitions the consumer paused for this channel, to resume when it has room.
        self.paused: set[TP] = set()

    @property
    def full(self) -> bool:
        return self._queued >= self.max_records

    @property
    def has_room(self) -> bool:
        return self._queued <= self.max_records // 2

    def put(self, fetch: Fetch) -> None:
        self._queue.put_nowait(fetch)
        self._queued += len(fetch)

    def _take(self, fetch: Fetch) -> Fetch:
        self._queued -= len(fetch)
        return fetch

    async def batches(self, max_records: int) -> AsyncIterator[Fetch]:
        """Wait for a fetch, then add whatever else is queued from the same generation."""
        queue = self._queue
        while True:
            batch = self._take(await queue.get())
            while len(batch) < max_records and not queue.empty():
                following = self._take(queue.get_nowait())
                if following.generation != batch.generation:
                    yield batch
                    batch = following
                    continue
                batch.merge(following)
            yield batch


class BulkConsumer(ConsumerInternals):
    """Faust's aiokafka consumer, delivering each channel's topics a fetch at a time."""

    channels: tuple[BulkChannel, ...] = ()

    @classmethod
    def delivering_to(cls, *channels: BulkChannel) -> type[BulkConsumer]:
        """This class bound to ``channels`` (Faust builds its consumer from a class)."""
        return type(cls.__name__, (cls,), {"channels": channels})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel_of = {topic: c for c in self.channels for topic in c.topics}
        #: Per partition of the channels' topics: the next offset to apply, and when (monotonic
        #: seconds) a record of it was last applied.
        self.applied_position: dict[TP, int] = {}
        self.applied_at: dict[TP, float] = {}
        # Offsets the group coordinator accepted. Faust's own book (``committed_offset``)
        # also takes offsets whose commit failed ("already rebalanced"): those records are
        # delivered again, so nothing may treat them as committed.
        self._confirmed: dict[TP, int] = {}

    def before_fetch(self) -> None:
        self._resume_caught_up_channels()

    def take_records(self, records: Any, active: Any) -> tuple[Any, Any]:
        if not records or not self.channels:
            return records, active
        if self.app.in_recovery:
            records = self._recover_in_bulk(records, active)
        taken: dict[BulkChannel, dict[TP, list[Any]]] = {}
        rest: dict[TP, list[Any]] = {}
        for tp, batch in records.items():
            channel = self._channel_of.get(tp.topic)
            if channel is None or not self._delivers(tp, active):
                rest[tp] = batch
                continue
            # Faust's drain loop drops records before the partition's read offset: a fetch
            # made from an older position before a seek to the committed offsets (a restart
            # fetches before recovery ends and seeks). Delivered, those would be applied
            # again though the group has committed past them.
            read = self.read_offset(tp)
            if read is not None and batch[0].offset < read:
                batch = [record for record in batch if record.offset >= read]
                if not batch:
                    continue
            taken.setdefault(channel, {})[tp] = batch
        for channel, fetched in taken.items():
            channel.put(Fetch(self.app.consumer_generation_id, fetched))
            if channel.full:
                paused = {tp for tp in self.assignment() if tp.topic in channel.topics}
                self.pause_partitions(paused - channel.paused)
                channel.paused |= paused
        return rest, active

    def _resume_caught_up_channels(self) -> None:
        # Not while recovering: Faust pauses partitions of its own then, and resumes them.
        if self.app.in_recovery:
            return
        for channel in self.channels:
            if channel.paused and channel.has_room:
                self.resume_partitions(channel.paused & self.assignment())
                channel.paused.clear()

    def _delivers(self, tp: TP, active: Any) -> bool:
        """Faust's own test in ``getmany``: records of other partitions are dropped."""
        return active is None or tp in active or self.is_buffered(tp)

    def _recover_in_bulk(self, records: Mapping[TP, list[Any]], active: Any) -> dict[TP, list[Any]]:
        """Write changelog records of partitions in active recovery straight to RocksDB.

        Faust's recovery takes one record at a time (~90 µs each here). This writes all but
        the last record of each partition in one ``WriteBatch``, as Faust's own
        ``apply_changelog_batch`` would, and moves recovery's offsets past them; the last
        record goes through Faust, which so still sees recovery through to its end.
        """
        recovery = recovery_of(self.app)
        rest: dict[TP, list[Any]] = {}
        for tp, batch in records.items():
            in_active_recovery = tp in recovery.active_tps and self._delivers(tp, active)
            seen = recovery.active_offsets.get(tp)
            head = [r for r in batch[:-1] if seen is None or r.offset > seen]
            if not in_active_recovery or not head:
                rest[tp] = batch
                continue
            # Records Faust has buffered are older than these: they must land first.
            recovery.flush_buffers()
            write = rocksdict.WriteBatch(raw_mode=True)
            for record in head:
                if record.value is None:
                    write.delete(record.key)
                else:
                    write.put(record.key, record.value)
            table = recovery.tp_to_table[tp]
            partition_db(table, tp.partition).write(write)
            last = head[-1].offset
            table.data.set_persisted_offset(tp, last)
            recovery.active_offsets[tp] = last
            self.set_read_offset(tp, last)
            rest[tp] = batch[-1:]
        return rest

    def on_committed(self, offsets: Mapping[TP, int]) -> None:
        assigned = self.assignment()
        for tp, offset in offsets.items():
            if tp in assigned:
                self._confirmed[tp] = max(offset, self._confirmed.get(tp, 0))

    async def perform_seek(self) -> None:
        # A (re)assignment reads the committed offsets from the broker: the truth.
        await super().perform_seek()
        self._confirmed = {
            tp: offset for tp, offset in self.committed_offsets().items() if offset is not None
        }

    def committed_position(self, tp: TP) -> int | None:
        """The offset the group has committed for ``tp``: the next one it would read."""
        return self._confirmed.get(tp)

    def is_current(self, fetch: Fetch) -> bool:
        """Whether ``fetch`` was made in this consumer generation, with flow running."""
        return self.flow_active and fetch.generation == self.app.consumer_generation_id

    def ack_fetch(self, records: Mapping[TP, Sequence[Any]]) -> int:
        """Acknowledge applied records for commit; returns how many offsets were new.

        Offsets between the last record read and each partition's first record here (a
        gap: control records, compaction) are acknowledged too, as Faust's drain loop does.
        """
        new_total = 0
        now = time.monotonic()
        with acknowledging:
            for tp, batch in records.items():
                if not batch:
                    continue
                first, last = batch[0].offset, batch[-1].offset
                read = self.read_offset(tp)
                low = first if read is None else min(first, read + 1)
                committed = self.committed_offset(tp)
                if committed is not None:
                    low = max(low, committed)
                new_total += self.acknowledge_offsets(tp, low, last)
                if read is None or last > read:
                    self.set_read_offset(tp, last)
                self.applied_position[tp] = max(last + 1, self.applied_position.get(tp, 0))
                self.applied_at[tp] = now
                self.note_processed(tp, now)
        return new_total
