"""Applying member erasures: every worker reads the whole erasures topic and erases what it holds.

**Why every worker reads every partition** (like the embedded attribute feed, a global
table), and not only its own through the consumer group: a worker must know every erasure
before it applies a single action, also when it starts under a new app id on the old topics
(no changelog, every action read again from the start) or takes over a partition in a
rebalance. So :meth:`ErasureLog.load` reads the topic to its end before the worker starts
(``nearline.app.worker.prepare``), and the log follows it from there. The erasures in memory are
then what ingest and the outcomes join check each event and response against: the topic is
compacted to one small record per member erased.

**What is erased, where** (:class:`Eraser`): the worker owning the member's partition
deletes the member's keys in the online store (tombstones in the changelog, and the erasure
marker last: ``nearline.tables.member_state``; a member holding only events after the erasure, which
a worker knowing of it applied, keeps them) and its pending responses and recorded actions in the
outcomes join's table; every worker deletes the member's static attributes from its
attribute store (the embedded store is a copy per worker; Aerospike's is shared, and a
delete of a deleted record costs nothing).

**It stays gone.** Ingest ignores (and counts) every event of an erased member whose event
time is at or before the erasure, whatever it comes from (a retry, the repartition topic, a
replay, a new app id), and the outcomes join drops the member's responses up to the erasure.
A partition this worker comes to own (a restart, a restore from the changelog, a rebalance)
is reconciled once its recovery is over: each erasure of it whose marker is missing there
(a write cut short by a crash, an erasure read while the partition moved) is applied again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from mode import Service

from nearline.agents.erasures import (
    Erasure,
    ErasuresTopic,
    TopicReader,
    decode_records,
    latest_by_member,
    read_to_end,
)
from nearline.attribute_store import AttributeStore
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.metrics import Metrics
from nearline.tables.online_store import OnlineStore
from nearline.tables.pending import PendingResponses

__all__ = ["Eraser", "ErasureLog"]

log = logging.getLogger(__name__)

#: Members checked, or attribute records deleted, between two yields to the event loop.
_YIELD_EVERY = 500


@dataclass
class ErasureLog:
    """Every member's latest erasure, read from the erasures topic and followed.

    ``erased_at`` (member id → erasure time) is what ingest looks each event's member up in.
    """

    topic: ErasuresTopic
    reader: TopicReader
    erased_at: dict[str, float] = field(default_factory=dict)
    by_partition: dict[int, dict[str, Erasure]] = field(default_factory=dict)
    #: Told of each erasure read after :meth:`load` that is its member's latest.
    on_erasure: Callable[[Erasure], None] | None = None
    _consumer: AIOKafkaConsumer | None = None

    def add(self, erasure: Erasure) -> bool:
        """Remember ``erasure``; False if the member's known erasure is as late already."""
        held = self.erased_at.get(erasure.member_id)
        if held is not None and held >= erasure.requested_at:
            return False
        self.erased_at[erasure.member_id] = erasure.requested_at
        partition = partition_for_key(erasure.member_id.encode(), self.topic.partitions)
        self.by_partition.setdefault(partition, {})[erasure.member_id] = erasure
        return True

    async def load(self) -> int:
        """Read the topic from its beginning to its end now; returns how many members."""
        # An erasure is due within seconds: a fetch waits at most 100 ms for one.
        self._consumer = self.reader(fetch_max_wait_ms=100)
        await self._consumer.start()
        found = await read_to_end(self._consumer, self.topic.name, self.topic.partitions)
        for erasure in latest_by_member(found).values():
            self.add(erasure)
        if self.erased_at:
            log.info("%d erased members read from %s", len(self.erased_at), self.topic.name)
        return len(self.erased_at)

    async def follow(self, should_stop: Callable[[], bool]) -> None:
        """Read on from where :meth:`load` stopped, telling ``on_erasure`` of each new one."""
        consumer = self._consumer
        assert consumer is not None, "load() first"
        while not should_stop():
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            for records in batches.values():
                for erasure in decode_records((r.key, r.value) for r in records):
                    if self.add(erasure) and self.on_erasure is not None:
                        self.on_erasure(erasure)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class Eraser(Service):
    """Applies erasures to the stores of this worker as they are read, and reconciles the
    partitions it comes to own (see the module)."""

    def __init__(
        self,
        erasures: ErasureLog,
        store: OnlineStore,
        pending: PendingResponses,
        attributes: AttributeStore,
        metrics: Metrics,
        *,
        moving: Callable[[], bool],
        generation: Callable[[], int],
    ) -> None:
        super().__init__()
        self.erasures = erasures
        self.store = store
        self.pending = pending
        self.attributes = attributes
        self.metrics = metrics
        self.moving = moving
        self.generation = generation
        self.queue: asyncio.Queue[Erasure] = asyncio.Queue()
        #: Members whose attributes are still to be deleted here (retried until they are).
        self.attributes_due: dict[str, Erasure | None] = {}
        self._reconciled: set[int] = set()
        self._settling: set[asyncio.Future[None]] = set()  # acknowledgements awaited
        self._generation: int | None = None
        erasures.on_erasure = self.queue.put_nowait

    async def on_start(self) -> None:
        # Erasures read at start-up (ErasureLog.load): their attributes go again (a store
        # loaded directly, or restored, while this worker was down); state by reconciling.
        for members in self.erasures.by_partition.values():
            self.attributes_due.update(dict.fromkeys(members))
        self.add_future(self.erasures.follow(lambda: self.should_stop))
        self.add_future(self._apply_new())

    async def on_stop(self) -> None:
        await self.erasures.close()

    # -- new erasures ------------------------------------------------------------------

    async def _apply_new(self) -> None:
        """The erasures read from the topic, applied as soon as partitions are not moving:
        all those queued meanwhile at once (one changelog write and acknowledgement for
        them all, however many a ``nearline members erase --file`` sent)."""
        while not self.should_stop:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            for erasure in batch:
                self.attributes_due[erasure.member_id] = erasure
            await self._wait_settled()
            await self.delete_attributes()
            by_partition: dict[int, list[Erasure]] = {}
            for erasure in batch:
                by_partition.setdefault(self.store.partition_of(erasure.member_id), []).append(
                    erasure
                )
            # Not owned here: its owner applies it; one taking the partition over reconciles.
            owned = {p: found for p, found in by_partition.items() if self.store.owns(p)}
            if owned:
                await self.apply(owned, timed=True)
                self.metrics.erasures.labels("applied").inc(sum(map(len, owned.values())))

    async def _wait_settled(self) -> None:
        while self.moving():
            await asyncio.sleep(0.05)

    async def apply(self, erasures: Mapping[int, list[Erasure]], *, timed: bool = False) -> None:
        """Erase the members from these partitions' online store and pending outcomes.

        Returns once both are written locally (reads no longer see the members) and their
        changelog records queued; the acknowledgements are awaited in a task of their own,
        so the next erasures are applied meanwhile (each table's changelog keeps its write
        order). A write whose acknowledgement fails leaves the table unsettled: the next
        start restores it from the changelog and reconciling applies the erasure again.
        """
        markers = {
            partition: {
                e.member_id.encode(): (
                    codec.dumps({"erasure_id": e.erasure_id, "erased_at": e.requested_at}),
                    e.requested_at,
                )
                for e in found
            }
            for partition, found in erasures.items()
        }
        # A rebalance beginning meanwhile stops the writes: the partitions' next owners
        # reconcile them once restored (the assignor names them here until then).
        generation = self.generation()

        def current() -> bool:
            return not self.moving() and self.generation() == generation

        async with self.store.write_lock:
            deleted, online = await self.store.erase(markers, current)
        removed: dict[int, dict[bytes, bytes | None]] = {}
        async with self.pending.write_lock:
            for partition, members in markers.items():
                keys = await self.pending.member_keys(partition, set(members))
                if keys:
                    removed[partition] = dict.fromkeys(keys)
            pending = (
                await self.pending.table.send(removed, owned_only=True, current=current)
                if removed
                else None
            )
        log.info(
            "erasing %d members: %d online-store keys, %d pending-outcome keys deleted",
            sum(map(len, markers.values())),
            deleted,
            sum(map(len, removed.values())),
        )
        # Not cancelled with this service: on a clean stop the producer's flush still
        # acknowledges the records, and the tables count as settled (as ingest's batches).
        erased = [e for found in erasures.values() for e in found] if timed else None
        settling = asyncio.ensure_future(self._settle(online, pending, erased))
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)

    async def _settle(
        self,
        online: Awaitable[None],
        pending: Awaitable[None] | None,
        timed: list[Erasure] | None,
    ) -> None:
        """Wait for the changelogs to acknowledge an erasure; time it per store."""
        try:
            await online
            if timed is not None:
                self._observe("online", timed)
            if pending is not None:
                await pending
            if timed is not None:
                self._observe("pending", timed)
        except Exception as exc:  # the table is unsettled: restored and reconciled next start
            log.error("an erasure's changelog records were not acknowledged: %r", exc)

    async def delete_attributes(self) -> None:
        """Delete the static attributes of the members due; kept due if the store fails."""
        while self.attributes_due:
            batch = list(self.attributes_due)[:_YIELD_EVERY]
            try:
                await self.attributes.delete_many(batch, kind="members")
            except Exception as exc:  # any backend failure: retried by the next reconcile
                log.warning("could not delete erased members' attributes (%s); retrying", exc)
                return
            timed = [e for e in map(self.attributes_due.pop, batch) if e is not None]
            self._observe("attributes", timed)

    def _observe(self, store: str, erasures: Iterable[Erasure]) -> None:
        now = time.time()
        observe = self.metrics.erasure_seconds.labels(store).observe
        for erasure in erasures:
            observe(max(0.0, now - erasure.requested_at))

    # -- partitions come to be owned here ----------------------------------------------

    async def reconcile(self) -> None:
        """Apply again the erasures of each partition newly owned here that its state lacks.

        Run on a timer; does nothing while partitions move or recover. A new consumer
        generation (any rebalance since the last run) reconciles every partition again.
        """
        if self.moving():
            return
        generation = self.generation()
        if generation != self._generation:
            self._reconciled = set()
            self._generation = generation
        await self.delete_attributes()
        for partition in self.store.owned_partitions():
            if partition in self._reconciled:
                continue
            missing = []
            for n, erasure in enumerate(self._of_partition(partition), 1):
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                    if self.moving() or self.generation() != generation:
                        return  # moving again: the next run starts over
                if not self._marked(partition, erasure):
                    missing.append(erasure)
            if missing:
                await self.apply({partition: missing})
                log.info("partition %d: %d erasures applied again", partition, len(missing))
            self._reconciled.add(partition)

    def _of_partition(self, partition: int) -> Iterable[Erasure]:
        return list(self.erasures.by_partition.get(partition, {}).values())

    def _marked(self, partition: int, erasure: Erasure) -> bool:
        marker = self.store.erased_marker(partition, erasure.member_id.encode())
        if marker is None:
            return False
        return bool(codec.loads(marker).get("erasure_id") == erasure.erasure_id)
