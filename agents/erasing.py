"""Applying member erasures: every worker reads the whole erasures topic and erases what it holds.

**Why every worker reads every partition** (like the embedded attribute feed, a global
table), and not only its own through the consumer group: a worker must know every erasure
before it applies a single action, also when it starts under a new app id on the old topics
(no changelog, every action read again from the start) or takes over a partition in a
rebalance. So :meth:`ErasureLog.load` reads the topic to its end before the worker starts
(``app.worker.prepare``), and the log follows it from there. The erasures in memory are
then what ingest and the outcomes join check each event and response against: the topic is
compacted to one small record per member erased.

**What is erased, where** (:class:`Eraser`): the worker owning the member's partition
deletes the member's keys in the online store (tombstones in the changelog, and the erasure
marker last: ``tables.member_state``) and its pending responses and recorded actions in the
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from mode import Service

from app import codec
from app.erasures import Erasure, decode_records, latest_by_member, read_to_end
from app.kafka import client_options, partition_for_key
from app.metrics import Metrics
from app.settings import Settings
from attribute_store import AttributeStore
from tables.online_store import OnlineStore
from tables.pending import PendingResponses

__all__ = ["Eraser", "ErasureLog"]

log = logging.getLogger(__name__)

#: Members checked, or attribute records deleted, between two yields to the event loop.
_YIELD_EVERY = 500


@dataclass
class ErasureLog:
    """Every member's latest erasure, read from the erasures topic and followed.

    ``erased_at`` (member id → erasure time) is what ingest looks each event's member up in.
    """

    settings: Settings
    erasures: dict[str, Erasure] = field(default_factory=dict)
    erased_at: dict[str, float] = field(default_factory=dict)
    by_partition: dict[int, dict[str, Erasure]] = field(default_factory=dict)
    #: Told of each erasure read after :meth:`load` (and of those it loaded, by the caller).
    on_erasure: Callable[[Erasure], None] | None = None
    _consumer: AIOKafkaConsumer | None = None

    def add(self, erasure: Erasure) -> bool:
        """Remember ``erasure``; False if the member's known erasure is as late already."""
        held = self.erasures.get(erasure.member_id)
        if held is not None and held.requested_at >= erasure.requested_at:
            return False
        self.erasures[erasure.member_id] = erasure
        self.erased_at[erasure.member_id] = erasure.requested_at
        partition = partition_for_key(erasure.member_id.encode(), self.settings.topic_partitions)
        self.by_partition.setdefault(partition, {})[erasure.member_id] = erasure
        return True

    def erased_before(self, member_id: str, ts: float) -> bool:
        """Whether an event of ``member_id`` at ``ts`` falls under the member's erasure."""
        at = self.erased_at.get(member_id)
        return at is not None and ts <= at

    async def load(self) -> int:
        """Read the topic from its beginning to its end now; returns how many members."""
        self._consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **client_options(self.settings),
        )
        await self._consumer.start()
        await self._consumer.topics()  # the cluster's metadata, for partitions_for_topic
        found = await read_to_end(self._consumer, self.settings.topic_erasures)
        for erasure in latest_by_member(found).values():
            self.add(erasure)
        if self.erasures:
            log.info(
                "%d erased members read from %s", len(self.erasures), self.settings.topic_erasures
            )
        return len(self.erasures)

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
        self._generation: int | None = None
        erasures.on_erasure = self.queue.put_nowait

    async def on_start(self) -> None:
        # Erasures read at start-up (ErasureLog.load): their attributes go again (a store
        # loaded directly, or restored, while this worker was down); state by reconciling.
        self.attributes_due.update(dict.fromkeys(self.erasures.erasures))
        self.add_future(self.erasures.follow(lambda: self.should_stop))
        self.add_future(self._apply_new())

    async def on_stop(self) -> None:
        await self.erasures.close()

    # -- new erasures ------------------------------------------------------------------

    async def _apply_new(self) -> None:
        """Each erasure read from the topic, applied as soon as partitions are not moving."""
        while not self.should_stop:
            erasure = await self.queue.get()
            self.attributes_due[erasure.member_id] = erasure
            await self._wait_settled()
            await self.delete_attributes()
            partition = self.store.partition_of(erasure.member_id)
            if self.store.owns(partition):
                await self.apply(partition, erasure, timed=True)
                self.metrics.erasures.labels("applied").inc()
            # Not owned here: its owner applies it; one taking the partition over reconciles.

    async def _wait_settled(self) -> None:
        while self.moving():
            await asyncio.sleep(0.05)

    async def apply(self, partition: int, erasure: Erasure, *, timed: bool = False) -> None:
        """Erase the member from this partition's online store and pending outcomes."""
        member = erasure.member_id.encode()
        marker = codec.dumps({"erasure_id": erasure.erasure_id, "erased_at": erasure.requested_at})
        async with self.store.write_lock:
            deleted, acknowledged = await self.store.erase(partition, member, marker)
        await acknowledged
        if timed:
            self._observe("online", erasure)
        async with self.pending.write_lock:
            keys = self.pending.member_keys(partition, member)
            if keys and self.pending.owns(partition):
                await self.pending.write({partition: dict.fromkeys(keys)})
        if timed:
            self._observe("pending", erasure)
        log.info(
            "erased member %r (erasure %s): %d online-store keys, %d pending-outcome keys",
            erasure.member_id,
            erasure.erasure_id,
            deleted,
            len(keys),
        )

    async def delete_attributes(self) -> None:
        """Delete the static attributes of the members due; kept due if the store fails."""
        while self.attributes_due:
            batch = list(self.attributes_due)[:_YIELD_EVERY]
            try:
                await self.attributes.delete_many(batch, kind="members")
            except Exception as exc:  # any backend failure: retried by the next reconcile
                log.warning("could not delete erased members' attributes (%s); retrying", exc)
                return
            for member_id in batch:
                erasure = self.attributes_due.pop(member_id)
                if erasure is not None:
                    self._observe("attributes", erasure)

    def _observe(self, store: str, erasure: Erasure) -> None:
        self.metrics.erasure_seconds.labels(store).observe(
            max(0.0, time.time() - erasure.requested_at)
        )

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
            reapplied = 0
            for n, erasure in enumerate(self._of_partition(partition), 1):
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if self.moving() or self.generation() != generation:
                    return  # moving again: the next run starts over
                if not self._marked(partition, erasure):
                    await self.apply(partition, erasure)
                    reapplied += 1
            if reapplied:
                log.info("partition %d: %d erasures applied again", partition, reapplied)
            self._reconciled.add(partition)

    def _of_partition(self, partition: int) -> Iterable[Erasure]:
        return list(self.erasures.by_partition.get(partition, {}).values())

    def _marked(self, partition: int, erasure: Erasure) -> bool:
        marker = self.store.erased_marker(partition, erasure.member_id.encode())
        if marker is None:
            return False
        return bool(codec.loads(marker).get("erasure_id") == erasure.erasure_id)
