"""A changelog-backed Faust table on RocksDB, written a batch at a time in raw bytes.

Faust's table API sends one changelog record per ``table[key] = value`` and insists on a
current event for each write, which caps a worker at a few thousand writes per second.
nearline keeps the Faust table (its RocksDB partitions, changelog topic, recovery, standbys
and routing) and writes a whole batch at once: one RocksDB ``WriteBatch`` per partition and
the batch's changelog records straight to the producer in whole producer batches, all
acknowledged before the caller commits the source offsets the batch came from. Recovery is
Faust's own.

RocksDB is written first, so reads see a batch at once; until the changelog has acknowledged
it, local state is ahead of the changelog. A write that does not see its acknowledgement
(the process killed, the task cancelled, the send failed) leaves :attr:`unsettled` set, and
local state that its changelog may lack: a worker restarted on it would believe (say) a
response labelled and deleted that the next owner of the partition would restore as
pending. The worker so keeps its local state across restarts only after a clean stop with
nothing unsettled (:func:`mark_clean_stop`, :func:`discard_untrusted_state`), as Kafka
Streams does under exactly-once; otherwise it restores it from the changelogs. Sending
first and writing RocksDB on the acknowledgement avoids that, but cost freshness a
changelog round trip: at 5k actions/s, p50 430 ms instead of 140 ms.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import faust
import rocksdict
from aiokafka import AIOKafkaProducer
from faust.types import TP, TableT

from nearline.foundation.faust_internals import kafka_producer, partition_db
from nearline.foundation.kafka import send_in_batches

__all__ = [
    "END_MARKER_KEY",
    "INTERNAL_PREFIXES",
    "ChangelogTable",
    "LocalTable",
    "RawUpdates",
    "discard_untrusted_state",
    "mark_clean_stop",
    "scan",
]

log = logging.getLogger(__name__)

#: Written alone after each batch when the broker needs it (see ``exact_end_offsets``).
END_MARKER_KEY = b"\0nearline-end"
#: Keys that are not data: Faust's persisted offsets and nearline's end marker.
INTERNAL_PREFIXES = (b"__faust", b"\0")

#: New values (``None`` deletes) by partition, then by key.
RawUpdates = Mapping[int, Mapping[bytes, bytes | None]]


def scan(db: rocksdict.Rdict, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The keys of a raw-mode RocksDB in ``[start, stop)``, in key order, with their values."""
    iterator = db.iter()
    iterator.seek(start)
    while iterator.valid():
        key = iterator.key()
        if key >= stop:
            return
        yield key, iterator.value()
        iterator.next()


def write_batch(db: rocksdict.Rdict, values: Mapping[bytes, bytes | None]) -> None:
    """Apply ``values`` (``None`` deletes) to a raw-mode RocksDB in one ``WriteBatch``."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    for key, value in values.items():
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    db.write(batch)


class ChangelogTable:
    """Raw reads and batched, changelog-acknowledged writes of one Faust table."""

    def __init__(
        self,
        faust_app: faust.App,
        table: TableT[bytes, bytes],
        *,
        exact_end_offsets: bool,
        observe_ack: Callable[[float], None] | None = None,
        count_bytes: Callable[[int], None] | None = None,
        on_local_write: Callable[[int], None] | None = None,
    ):
        self.faust_app = faust_app
        #: Told the partition of each local write: the serving processes follow it.
        self.on_local_write = on_local_write
        #: Told the seconds each write waited for the broker's acknowledgement.
        self.observe_ack = observe_ack
        #: Told the bytes (keys and values) of each write's changelog records.
        self.count_bytes = count_bytes
        self.table = table
        # The embedded broker reports a partition's end as "base offset of the last record
        # batch + 1", and Faust's recovery reads up to that end. Ending every write with a
        # one-record batch (a marker) makes that answer exact while the records before it
        # are batched normally.
        self.exact_end_offsets = exact_end_offsets
        # Held by every read-modify-write of this table until its changelog records are
        # queued (see send), so the changelog's order of writes always equals RocksDB's.
        self.write_lock = asyncio.Lock()
        self._outstanding = 0  # writes sent and not yet acknowledged
        self._failed = False  # a write stored values locally and never saw them acknowledged
        self._persisted: dict[int, int] = {}  # the highest changelog offset acknowledged
        self._settled_generation: int | None = None  # see restoring()

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    # -- ownership ---------------------------------------------------------------------

    def owns(self, partition: int) -> bool:
        return TP(self.changelog_topic, partition) in self.faust_app.assignor.assigned_actives()

    def owned_partitions(self) -> list[int]:
        topic = self.changelog_topic
        return sorted(
            tp.partition for tp in self.faust_app.assignor.assigned_actives() if tp.topic == topic
        )

    def restoring(self) -> bool:
        """Whether this worker's partitions may be behind their changelogs: a rebalance has
        assigned them anew and their restore has not yet ended.

        Until then a partition's local state is a consistent past state (every write is a
        readable prefix), possibly far behind (an empty data directory, or a partition
        another worker wrote meanwhile): reads must not take it for the present. From a
        rebalance's start until its assignment, partitions held before stay readable as
        they were. A worker that never read between two rebalances counts the second as
        restoring from its start: 503s for that whole rebalance, never stale answers.
        """
        app = self.faust_app
        if not app.rebalancing:
            self._settled_generation = app.consumer_generation_id
            return False
        return bool(app.in_recovery) or app.consumer_generation_id != self._settled_generation

    def owner_url(self, partition: int) -> str | None:
        """The advertised URL of the worker that holds ``partition`` (from the assignor)."""
        try:
            metadata = self.faust_app.router.table_metadata(self.table.name)
        except KeyError:
            return None
        for url, topics in metadata.items():
            if partition in topics.get(self.changelog_topic, ()):
                return str(url).rstrip("/")
        return None

    # -- reads -------------------------------------------------------------------------

    def db(self, partition: int) -> rocksdict.Rdict:
        # Faust opens one RocksDB per partition when it is assigned; reuse those handles.
        return partition_db(self.table, partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self.db(partition).get(key)
        assert value is None or isinstance(value, bytes)  # raw-mode RocksDB
        return value

    def scan(self, partition: int, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys in ``[start, stop)`` in key order, with their values."""
        return scan(self.db(partition), start, stop)

    # -- writes ------------------------------------------------------------------------

    async def write(self, updates: RawUpdates) -> None:
        """Store new values (``None`` deletes) and wait until the changelog has them all.

        Call with :attr:`write_lock` held, around the reads the new values came from.
        """
        await (await self.send(updates))

    async def send(
        self,
        updates: RawUpdates,
        *,
        owned_only: bool = False,
        current: Callable[[], bool] | None = None,
    ) -> Awaitable[None]:
        """Store new values locally and queue their changelog records; returns what to
        await for the broker's acknowledgement of them all.

        Call with :attr:`write_lock` held, around the reads the new values came from; it
        may be released before the acknowledgement: the producer keeps one request in flight
        per partition, so the changelog's order of records is the order they were queued in.
        A caller that commits source offsets must await the acknowledgement first.

        ``owned_only``: leave out the partitions this worker no longer owns (a rebalance
        while the caller built its values): their new owner may be writing them already,
        and re-reads the records they came from, whose offsets the caller never commits.

        ``current``: checked before each partition is written; once it is false nothing
        more is written. Ownership alone is not enough: the assignor still names the old
        partitions from the start of a rebalance (or a shutdown) until its new assignment
        arrives, seconds later, and a write in between could land in the changelog after
        the new owner has restored it. Faust stops the consumer's flow at the start of both
        and flushes the producer before the worker rejoins, so a write that passed this
        check is in the changelog before anyone else can take the partition.
        """
        producer = self._producer()
        topic = self.changelog_topic
        sent: list[tuple[asyncio.Future[Any], int]] = []
        self._outstanding += 1  # until acknowledged, RocksDB may hold what the changelog lacks
        try:
            for partition, values in updates.items():
                if current is not None and not current():
                    break
                if not values or (owned_only and not self.owns(partition)):
                    continue
                self.write_locally(partition, values)
                if self.count_bytes is not None:
                    self.count_bytes(
                        sum(len(k) + (0 if v is None else len(v)) for k, v in values.items())
                    )
                sent += await send_in_batches(
                    producer, topic, partition, ((k, v, None, None) for k, v in values.items())
                )
                if self.exact_end_offsets:
                    # A batch of its own, after the records': a partition's batches are sent
                    # and stored in order, so the marker lands last.
                    sent += await send_in_batches(
                        producer, topic, partition, [(END_MARKER_KEY, b"", None, None)]
                    )
                await asyncio.sleep(0)  # a partition at a time: requests are served between
        except BaseException:
            self._failed = True
            raise
        return self._acknowledged(sent)

    async def _acknowledged(self, sent: list[tuple[asyncio.Future[Any], int]]) -> None:
        # The caller commits its source offsets only after this returns, so a crash
        # before it re-reads them; every writer makes that re-read harmless.
        try:
            queued = time.perf_counter()
            results = await asyncio.gather(*(future for future, _ in sent))
            if self.observe_ack is not None and sent:
                self.observe_ack(time.perf_counter() - queued)
        except BaseException:
            self._failed = True
            raise
        self._outstanding -= 1
        topic = self.changelog_topic
        persisted: dict[int, int] = {}
        for meta, (_, count) in zip(results, sent, strict=True):
            last = meta.offset + count - 1
            persisted[meta.partition] = max(last, persisted.get(meta.partition, -1))
        for partition, offset in persisted.items():
            if offset > self._persisted.get(partition, -1):  # writers settle in any order
                self._persisted[partition] = offset
                self.table.data.set_persisted_offset(TP(topic, partition), offset)  # type: ignore[attr-defined]

    @property
    def unsettled(self) -> bool:
        """True once a write stored values locally without seeing them acknowledged (it
        failed, or was cancelled), or while one still waits for its acknowledgement."""
        return self._failed or self._outstanding > 0

    def write_locally(self, partition: int, values: Mapping[bytes, bytes | None]) -> None:
        """Apply ``values`` to the partition's RocksDB in one ``WriteBatch`` (no changelog)."""
        write_batch(self.db(partition), values)
        if self.on_local_write is not None:
            self.on_local_write(partition)

    def _producer(self) -> AIOKafkaProducer:
        # Faust's producer sends one record at a time, a future each; changelog records go
        # straight to its aiokafka producer in whole batches instead.
        return kafka_producer(self.faust_app)


class LocalTable:
    """A table's reads and writes over local RocksDB partitions, with no changelog and every
    partition owned: for tests and benchmarks of what sits on a table (a worker uses
    :class:`ChangelogTable`). ``records`` counts the records written and their bytes."""

    changelog_topic = "local"

    def __init__(self, path: str, partitions: int) -> None:
        self.write_lock = asyncio.Lock()
        self.records = 0
        self.bytes = 0
        self._dbs = [
            rocksdict.Rdict(f"{path}/{p}", options=rocksdict.Options(raw_mode=True))
            for p in range(partitions)
        ]

    def owns(self, partition: int) -> bool:
        return True

    def owned_partitions(self) -> list[int]:
        return list(range(len(self._dbs)))

    def owner_url(self, partition: int) -> str | None:
        return None

    def restoring(self) -> bool:
        return False

    def db(self, partition: int) -> rocksdict.Rdict:
        return self._dbs[partition]

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self._dbs[partition].get(key)
        assert value is None or isinstance(value, bytes)  # raw-mode RocksDB
        return value

    def scan(self, partition: int, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        return scan(self._dbs[partition], start, stop)

    def write_locally(self, partition: int, values: Mapping[bytes, bytes | None]) -> None:
        write_batch(self._dbs[partition], values)
        self.records += len(values)
        self.bytes += sum(len(k) + (0 if v is None else len(v)) for k, v in values.items())

    async def write(self, updates: RawUpdates) -> None:
        await (await self.send(updates))

    async def send(
        self,
        updates: RawUpdates,
        *,
        owned_only: bool = False,
        current: Callable[[], bool] | None = None,
    ) -> Awaitable[None]:
        for partition, values in updates.items():
            if current is not None and not current():
                break
            if owned_only and not self.owns(partition):
                continue
            self.write_locally(partition, values)
        return asyncio.sleep(0)

    def close(self) -> None:
        for db in self._dbs:
            db.close()


# -- local state across restarts ------------------------------------------------------------


def _clean_stop_marker(tabledir: Path) -> Path:
    return tabledir.parent / "tables-stopped-cleanly"


def discard_untrusted_state(tabledir: Path, *, changelog_is_new: bool) -> None:
    """Delete the tables' local state (``tabledir``) if its changelogs may not back it.

    Called before the tables open. The state is untrusted when ``changelog_is_new`` (a new,
    or restarted memory-only, broker: recovery would trust RocksDB state that no changelog
    backs any more) or when the last run left no clean-stop marker (killed, or stopped with
    a write its changelog did not acknowledge). The marker is removed either way: it is
    written again only when this run stops cleanly (:func:`mark_clean_stop`).
    """
    marker = _clean_stop_marker(tabledir)
    untrusted = None
    if tabledir.exists() and changelog_is_new:
        untrusted = "the changelog topic is new"
    elif tabledir.exists() and not marker.exists():
        untrusted = "the last run did not stop cleanly"
    if untrusted is not None:
        log.warning(
            "%s: discarding local state in %s; it is restored from the changelogs",
            untrusted,
            tabledir,
        )
        shutil.rmtree(tabledir)
    marker.unlink(missing_ok=True)  # until this run stops cleanly


def mark_clean_stop(tabledir: Path, *, unsettled: bool) -> None:
    """After a clean stop, keep local state next start, unless a table write was
    ``unsettled`` (see :attr:`ChangelogTable.unsettled`)."""
    if unsettled:
        log.warning("a table write was not acknowledged: local state is restored next start")
        return
    if tabledir.exists():
        _clean_stop_marker(tabledir).touch()
