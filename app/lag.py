"""Consumer lag from the broker, per partition, and the partitions that have stopped moving.

The lag of a partition is the broker's high watermark minus the position the worker has
*applied* up to, refreshed on a timer with a client of its own: not taken from the last
fetch, which says nothing once fetching has stopped. A partition with lag that has applied
nothing for ``stall_timeout`` is stalled, and the worker's liveness probe says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from faust.types import TP

from nearline.agents.bulk import BulkConsumer

__all__ = ["LagMonitor", "PartitionLag"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    lag: int
    #: Seconds since a record was last applied while the lag was above zero; 0 without lag.
    stalled_seconds: float


class LagMonitor:
    """Tracks the lag of the partitions of ``topics`` this worker is assigned."""

    def __init__(
        self,
        consumer: Callable[[], BulkConsumer],
        topics: Collection[str],
        client: Callable[[], AIOKafkaConsumer],
        *,
        counting: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self.topics = frozenset(topics)
        self._new_client = client  # made on first use: aiokafka wants a running loop
        self._client: AIOKafkaConsumer | None = None
        # Whether lag may count as a stall now (not while rebalancing or recovering state).
        self._counting = counting
        self._clock = clock
        self._ends: dict[TP, int] = {}
        self._lagging_since: dict[TP, float] = {}
        self._snapshot: list[PartitionLag] = []

    async def refresh(self, timeout: float = 5.0) -> list[PartitionLag]:
        """Ask the broker for the end offsets and recompute every partition's lag."""
        consumer = self._consumer()
        try:
            tps = sorted(tp for tp in consumer.assignment() if tp.topic in self.topics)
        except Exception:  # not assigned yet
            tps = []
        if self._client is None:
            self._client = self._new_client()
            await self._client.start()
        if tps:
            try:
                ends = await asyncio.wait_for(self._client.end_offsets(tps), timeout)
            except Exception as exc:  # the broker is away: keep the last known ends
                log.warning("could not read end offsets for the lag gauge: %s", exc)
            else:
                self._ends = {TP(tp.topic, tp.partition): offset for tp, offset in ends.items()}
        now = self._clock()
        counting = self._counting()
        snapshot = []
        for tp in tps:
            lag = max(0, self._end(consumer, tp) - self._position(consumer, tp))
            stalled = 0.0
            if lag == 0 or not counting:
                self._lagging_since.pop(tp, None)
            else:
                since = self._lagging_since.setdefault(tp, now)
                applied = consumer.applied_at.get(tp)
                stalled = now - max(since, applied if applied is not None else since)
            snapshot.append(PartitionLag(tp.topic, tp.partition, lag, stalled))
        for tp in set(self._lagging_since) - set(tps):
            del self._lagging_since[tp]
        self._snapshot = snapshot
        return snapshot

    def _end(self, consumer: BulkConsumer, tp: TP) -> int:
        # Brokers that answer ListOffsets with the start of the last record batch (the
        # embedded one) can be behind what a fetch has already reported: take the larger.
        try:
            fetched = consumer.highwater(tp) or 0
        except Exception:
            fetched = 0
        return max(self._ends.get(tp, 0), fetched)

    @staticmethod
    def _position(consumer: BulkConsumer, tp: TP) -> int:
        applied = consumer.applied_position.get(tp)
        committed = consumer.committed_position(tp)
        return max(applied or 0, committed or 0)

    def snapshot(self) -> list[PartitionLag]:
        """The lag as of the last refresh."""
        return self._snapshot

    def stalled(self, timeout: float) -> list[PartitionLag]:
        return [p for p in self._snapshot if p.stalled_seconds >= timeout]

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.stop()
