"""The worker's Faust agents: the tasks and timers that apply the streams, on one Faust app.

Two tasks read the topics a fetch at a time (``agents/bulk.py``): ingest applies actions to
the online store, the outcomes join queues logged responses. Timers label outcomes that are
due, sweep expired history, reconcile erasures on partitions newly owned and reload the
model. (The worker adds its own timers beside them: lag, the attribute store's health, the
state it publishes for its serving processes, the running experiment's results.)
None of them holds the consumer: each topic's records wait in their own channel, and a
channel that falls behind pauses only its own partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any

import faust

from nearline.agents.bulk import BulkChannel, BulkConsumer, Fetch
from nearline.agents.erasing import Eraser
from nearline.agents.ingest import IngestProcessor
from nearline.agents.outcomes import OutcomeJoiner
from nearline.foundation.faust_internals import set_fetch_max_wait
from nearline.foundation.loop_lag import LoopMonitor
from nearline.foundation.metrics import Metrics
from nearline.model.registry import ModelRegistry
from nearline.tables.online_store import OnlineStore

if TYPE_CHECKING:
    from nearline.agents.ingest import BatchPlan

__all__ = ["Agents", "Schedule", "apply_fetches", "every"]

log = logging.getLogger(__name__)

#: Applies one fetch's records; may return what to await before its offsets are committed.
#: Its second argument says whether the fetch is still current (see ``BulkConsumer.is_current``):
#: a batch writes state only while it is, like a zombie fenced off by its generation.
Apply = Callable[[list[Any], Callable[[], bool]], Awaitable[Awaitable[None] | None]]


async def apply_fetches(
    channel: BulkChannel, consumer: Callable[[], BulkConsumer], apply: Apply, batch_max: int
) -> None:
    """Apply each fetch of ``channel``, then acknowledge its offsets for commit.

    ``apply`` may return an awaitable: the fetch's offsets are acknowledged once it is
    done, while the next fetch is applied (its changelog acknowledgement overlaps the
    next batch instead of delaying it). Fetches are acknowledged in order.
    """
    bulk = consumer()
    previous: asyncio.Future[None] | None = None
    async for fetch in channel.batches(batch_max):
        if not bulk.is_current(fetch):
            continue  # made before a rebalance: Faust seeks back and reads it again
        done = await apply(
            list(chain.from_iterable(fetch.records.values())), partial(bulk.is_current, fetch)
        )
        if previous is not None:
            await previous  # raises if the broker did not acknowledge that batch
        # Not cancelled when this task is: on a clean stop the producer's flush still
        # acknowledges it, and the tables count as settled.
        previous = asyncio.ensure_future(_acknowledge(bulk, fetch, done))
        previous.add_done_callback(_log_unacknowledged)


async def _acknowledge(consumer: BulkConsumer, fetch: Fetch, done: Awaitable[None] | None) -> None:
    if done is not None:
        await done
    if consumer.is_current(fetch):
        consumer.ack_fetch(fetch.records)


def _log_unacknowledged(acknowledging: asyncio.Future[None]) -> None:
    if not acknowledging.cancelled() and (error := acknowledging.exception()) is not None:
        log.error("a batch's changelog records were not acknowledged: %r", error)


def every(app: faust.App, seconds: float, name: str, timer: Callable[[], Awaitable[None]]) -> None:
    """Run ``timer`` on ``app`` every ``seconds`` (on the leader and followers alike)."""
    app.timer(timedelta(seconds=seconds), name=name)(timer)


@dataclass(frozen=True, slots=True)
class Schedule:
    """How much the agents' tasks take at a time and how often their timers run (seconds)."""

    batch_max: int  # records per applied batch
    fetch_max_wait: float  # how long the consumer's fetcher waits for data
    outcome_label_interval: float
    sweep_interval: float
    model_reload_interval: float
    reload_models: bool  # a model directory is configured


@dataclass
class Agents:
    """What the agents work on; :meth:`register` puts them on the Faust app."""

    schedule: Schedule
    faust_app: faust.App
    consumer: Callable[[], BulkConsumer]
    actions: BulkChannel
    responses: BulkChannel
    ingest: IngestProcessor
    outcomes: OutcomeJoiner
    eraser: Eraser
    store: OnlineStore
    models: ModelRegistry
    metrics: Metrics
    loop_monitor: LoopMonitor
    #: Told of each applied ingest batch: its time, its record count and its plan.
    on_batch: Callable[[float, int, BatchPlan], None]

    def register(self) -> None:
        app, schedule = self.faust_app, self.schedule
        app.task(self.ingest_actions)
        app.task(self.join_outcomes)
        app.task(self.loop_monitor.run)
        app.task(self.shorten_fetch_wait)

        every(app, schedule.outcome_label_interval, "outcomes-labelling", self.label_outcomes)
        every(app, schedule.sweep_interval, "retention-sweep", self.sweep_retention)
        every(app, 1.0, "erasure-reconcile", self.eraser.reconcile)
        every(app, schedule.model_reload_interval, "model-reload", self.reload_model)

    # -- tasks -------------------------------------------------------------------------

    async def ingest_actions(self) -> None:
        """Actions (and those forwarded by the repartition topic) into the online store."""
        await apply_fetches(self.actions, self.consumer, self._ingest, self.schedule.batch_max)

    async def _ingest(self, records: list[Any], current: Callable[[], bool]) -> Awaitable[None]:
        plan, acknowledged = await self.ingest.apply(records, current=current)
        self.on_batch(time.time(), len(records), plan)
        return acknowledged

    async def join_outcomes(self) -> None:
        """Logged responses queued until their outcomes are labelled."""
        await apply_fetches(self.responses, self.consumer, self._join, self.schedule.batch_max)

    async def _join(self, records: list[Any], current: Callable[[], bool]) -> None:
        await self.outcomes.add(records)  # acknowledged by the broker on return

    async def shorten_fetch_wait(self) -> None:
        """Apply NEARLINE_FETCH_MAX_WAIT to Faust's consumer, which hard-codes 1.5 s.

        A broker that does not answer a fetch as soon as data arrives (the embedded one,
        for a fetch spanning several topics) otherwise holds every fresh action that long.
        """
        if not await set_fetch_max_wait(self.faust_app, self.schedule.fetch_max_wait):
            log.warning("could not set the consumer's fetch wait; freshness may suffer")

    # -- timers ------------------------------------------------------------------------

    def _moving(self) -> bool:
        """Whether partitions move or state recovers: writers wait for it to end."""
        return bool(self.faust_app.rebalancing or self.faust_app.in_recovery)

    async def label_outcomes(self) -> None:
        if not self._moving():
            await self.outcomes.label_due()

    async def sweep_retention(self) -> None:
        if self._moving():
            return
        _, deleted = await self.store.sweep()
        self.metrics.members_expired.inc(deleted)

    async def reload_model(self) -> None:
        # In a thread: the first model loaded imports torch (a second or more of CPU),
        # which on the event loop would stall every request meanwhile.
        if self.schedule.reload_models and await asyncio.to_thread(self.models.maybe_reload):
            log.info("now ranking with model %s", self.models.active.version)
