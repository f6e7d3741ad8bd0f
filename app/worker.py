"""The worker process: builds one Faust app with its tables, agents and web app, and runs it.

The process entry point (``nearline worker``) calls :func:`run_worker`; :class:`Nearline`
is the composition root that wires the parts together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import faust
import httpx
import uvloop
from aiokafka import AIOKafkaConsumer
from starlette.applications import Starlette

from nearline.agents.bulk import BulkChannel, BulkConsumer
from nearline.agents.erasing import Eraser
from nearline.agents.erasures import ErasureRequests
from nearline.agents.examples_topic import KafkaExamplesTopic
from nearline.agents.ingest import IngestProcessor
from nearline.agents.outcomes import OutcomeJoiner
from nearline.agents.sinks import DeadLetters, RecommendationsLog, Repartition
from nearline.agents.streams import Agents, every
from nearline.app.compose import (
    agent_schedule,
    attribute_store,
    cached_attributes,
    erasure_log,
    erasures_topic,
    ingest_rules,
    item_attributes_feed,
    model_registry,
    state_policy,
)
from nearline.app.console.timeline import IngestTimeline
from nearline.app.experiments import LiveResults
from nearline.app.lag import LagMonitor
from nearline.app.publisher import StatePublisher
from nearline.app.recommend import Recommender
from nearline.app.status import WorkerStatus
from nearline.app.tuning import faust_app, table_options, tune_gc, worker_port
from nearline.app.web import WebServices
from nearline.app.web_app import create_web_app
from nearline.app.web_server import WebServer
from nearline.attribute_store import split_fields
from nearline.foundation.broker_workarounds import BrokerWorkarounds
from nearline.foundation.faust_internals import check_faust, kafka_producer, partition_path
from nearline.foundation.kafka import client_options
from nearline.foundation.loop_lag import LoopMonitor
from nearline.foundation.metrics import Metrics
from nearline.foundation.serving_link import WriteCounters, serving_dir
from nearline.foundation.settings import Settings
from nearline.foundation.topics import ensure_topics
from nearline.model.registry import ModelRegistry
from nearline.tables.changelog import ChangelogTable, discard_untrusted_state, mark_clean_stop
from nearline.tables.features import FeatureReader
from nearline.tables.online_store import MEMBERS_TABLE, OnlineStore
from nearline.tables.pending import PENDING_TABLE, PendingResponses

__all__ = ["Nearline", "run_worker"]


class Nearline:
    """Everything one worker process runs, built from one :class:`Settings`.

    The composition root: it builds the Faust app, the tables, the stores, the sinks and
    the services, and hands each part only the few others it uses. Nothing else in
    nearline imports it. How each part is tuned is decided in :mod:`nearline.app.tuning`
    and :mod:`nearline.app.compose`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        workarounds = BrokerWorkarounds.from_settings(settings)
        self.faust = faust_app(settings, workarounds)
        consumed = self._consume_in_bulk()
        self._build_state(workarounds)
        # Every erasure, read before anything is applied (prepare) and followed from there.
        self.erasure_log = erasure_log(settings)
        self.examples_topic = KafkaExamplesTopic(
            settings.topic_training_examples, lambda: kafka_producer(self.faust), self._client
        )
        outcomes = self._build_processors()
        models = model_registry(settings)
        if settings.model_dir is not None:
            settings.model_dir.mkdir(parents=True, exist_ok=True)
            models.load_latest()
        self.metrics.outcomes_behind.set_function(outcomes.oldest_due_seconds)
        experiment = LiveResults(settings, models, self._client, self.metrics.show_arm_results)
        status = self._build_status(consumed)
        timeline = IngestTimeline()  # the console's ingest rate and freshness
        self.http = httpx.AsyncClient(timeout=settings.forward_timeout)
        self.web = self._build_web(status, models, experiment, timeline)
        Agents(
            schedule=agent_schedule(settings),
            faust_app=self.faust,
            consumer=self._bulk_consumer,
            actions=self.actions_channel,
            responses=self.log_channel,
            ingest=self.ingest,
            outcomes=outcomes,
            eraser=self.eraser,
            store=self.store,
            models=models,
            metrics=self.metrics,
            loop_monitor=LoopMonitor(self.metrics.registry),
            on_batch=timeline.record_batch,
        ).register()
        self._add_timers(status, experiment)

    def _consume_in_bulk(self) -> tuple[str, ...]:
        """Route the consumed topics' records to their tasks a fetch at a time."""
        settings = self.settings
        consumed = (
            settings.topic_actions,
            # Co-partitioned with the actions (same partition count, same subscribers), so
            # the owner of a partition reads both topics' records for it.
            settings.topic_repartition,
            settings.topic_recommendations_log,
        )
        for topic in consumed:
            # Taken off Faust's consumer a fetch at a time (agents/bulk.py): the records
            # still commit through its book-keeping, acknowledged once applied.
            self.faust.topics.add(self._raw_topic(topic))
        # Each topic's records go to its own task a fetch at a time; a task that falls
        # behind pauses its own topic's partitions, never the others'.
        # Bounds: two ingest batches of actions; 2,000 logged responses (~40 KB each).
        self.actions_channel = BulkChannel(
            [settings.topic_actions, settings.topic_repartition],
            max_records=2 * settings.batch_max,
        )
        self.log_channel = BulkChannel([settings.topic_recommendations_log], max_records=2000)
        # Faust builds its consumer from this class when the worker starts.
        self.faust.transport.Consumer = BulkConsumer.delivering_to(  # type: ignore[misc]
            self.actions_channel, self.log_channel
        )
        return consumed

    def _build_state(self, workarounds: BrokerWorkarounds) -> None:
        """The online store, the responses waiting for their outcomes, the attributes."""
        settings = self.settings
        # With serving processes, every local write of the members table bumps a counter
        # they watch (foundation/serving_link.py).
        self.counters = (
            WriteCounters(
                serving_dir(settings.data_dir) / "counters", settings.topic_partitions, create=True
            )
            if settings.serve_processes
            else None
        )
        self.members = self._changelog_table(
            MEMBERS_TABLE,
            workarounds,
            on_local_write=None if self.counters is None else self.counters.bump,
        )
        self.store = OnlineStore(self.members, state_policy(settings), settings.topic_partitions)
        self.pending = PendingResponses(self._changelog_table(PENDING_TABLE, workarounds))
        self.join_fields = split_fields(settings.join_at_ingest, settings.join_at_read)
        self.attributes = attribute_store(settings)
        self.attributes_cached = cached_attributes(self.attributes, settings)

    def _build_processors(self) -> OutcomeJoiner:
        """The agents' processors (ingest, outcomes, attributes, erasures) and their sinks;
        returns the outcome joiner, which the agents and a metric are handed."""
        settings, metrics, faust_app = self.settings, self.metrics, self.faust
        outcomes = OutcomeJoiner(
            self.pending,
            self.store,
            self.examples_topic,
            metrics,
            horizon=settings.outcome_horizon,
            unlabeled_as=settings.unlabeled_as,
            erased=self.erasure_log.erased_at,
        )
        self.ingest = IngestProcessor(
            self.store,
            ingest_rules(settings),
            metrics,
            DeadLetters(faust_app, settings.topic_dlq).send_actions,
            Repartition(faust_app, settings.topic_repartition).send,
            attributes=self.attributes_cached,
            ingest_fields=self.join_fields.ingest,
            record_reactions=outcomes.record_reactions,
            erased=self.erasure_log.erased_at,
        )
        self.attribute_feed = item_attributes_feed(
            settings,
            self.attributes_cached,
            metrics,
            DeadLetters(faust_app, f"{settings.topic_item_attributes}.dlq").send_items,
        )
        self.eraser = Eraser(
            self.erasure_log,
            self.store,
            self.pending,
            self.attributes_cached,  # through the cache: a deleted record is forgotten there too
            metrics,
            moving=lambda: bool(faust_app.rebalancing or faust_app.in_recovery),
            generation=lambda: int(faust_app.consumer_generation_id),
        )
        return outcomes

    def _build_status(self, consumed: tuple[str, ...]) -> WorkerStatus:
        """What the worker says about itself: its lag, readiness and health."""
        faust_app = self.faust
        self.lag = LagMonitor(
            self._bulk_consumer,
            consumed,
            self._client,
            # Lag counts as a stall only while no partitions move and no state recovers.
            counting=lambda: not (faust_app.rebalancing or faust_app.in_recovery),
        )
        self.metrics.track_lag(self.lag.snapshot)
        return WorkerStatus(
            faust_app,
            self.store,
            self.lag,
            self.actions_channel,
            self.attributes,
            self.metrics,
            stall_timeout=self.settings.stall_timeout,
            rebalance_timeout=self.settings.rebalance_timeout,
        )

    def _build_web(
        self,
        status: WorkerStatus,
        models: ModelRegistry,
        experiment: LiveResults,
        timeline: IngestTimeline,
    ) -> Starlette:
        """The HTTP API."""
        settings, cached = self.settings, self.attributes_cached
        return create_web_app(
            WebServices(
                settings=settings,
                metrics=self.metrics,
                features=FeatureReader(
                    self.store, cached, self.join_fields, timeout=settings.forward_timeout
                ),
                status=status,
                recommender=Recommender(
                    models,
                    cached,
                    RecommendationsLog(self.faust, settings.topic_recommendations_log),
                    log_candidates=settings.log_candidates,
                ),
                timeline=timeline,
                models=models,
                attributes=cached,
                http=self.http,
                erasures=ErasureRequests(
                    lambda: kafka_producer(self.faust), erasures_topic(settings)
                ),
                experiment=experiment,
            )
        )

    def _add_timers(self, status: WorkerStatus, experiment: LiveResults) -> None:
        """The worker's own timers, beside the agents'."""
        faust_app, settings = self.faust, self.settings
        every(faust_app, settings.lag_interval, "consumer-lag", status.refresh_lag)
        every(faust_app, 5.0, "attribute-store-health", status.check_attribute_store)
        every(faust_app, 1.0, "experiment-results", experiment.poll)
        if self.counters is not None:
            publisher = StatePublisher(
                serving_dir(settings.data_dir),
                status,
                self.counters,
                worker_url=settings.worker_url,
                partition_dir=lambda p: partition_path(self.members.table, p),
            )

            async def publish_state() -> None:
                publisher.publish()

            every(faust_app, 0.2, "serving-state", publish_state)

    def _changelog_table(
        self,
        name: str,
        workarounds: BrokerWorkarounds,
        on_local_write: Callable[[int], None] | None = None,
    ) -> ChangelogTable:
        """A changelog-backed RocksDB table of raw bytes, one RocksDB per partition."""
        settings = self.settings
        table = self.faust.Table(
            name,
            default=None,
            partitions=settings.topic_partitions,
            key_type=bytes,  # bytes in and out: the stores have their own codecs
            value_type=bytes,
            options=table_options(settings),
        )
        return ChangelogTable(
            self.faust,
            table,
            exact_end_offsets=workarounds.end_markers,
            observe_ack=self.metrics.changelog_ack_seconds.labels(name).observe,
            count_bytes=self.metrics.changelog_bytes.labels(name).inc,
            on_local_write=on_local_write,
        )

    def _client(self) -> AIOKafkaConsumer:
        """A plain client of its own (no group): end offsets, reads of one partition."""
        return AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, **client_options(self.settings)
        )

    def _bulk_consumer(self) -> BulkConsumer:
        consumer = self.faust.consumer
        assert isinstance(consumer, BulkConsumer)
        return consumer

    def _raw_topic(self, name: str) -> faust.TopicT:
        """A topic read as raw bytes: validation happens in nearline, not in Faust's codecs."""
        return self.faust.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.settings.topic_partitions,
        )


class _Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # Faust's terminal spinner lowers the root logger to DEBUG to spin on every
        # record; that makes aiokafka build a debug record per message sent.
        self.spinner = None


async def prepare(settings: Settings, nearline: Nearline) -> None:
    """Create missing topics; drop local state that its changelogs may not back; read
    every erasure before anything is applied (agents/erasing.py)."""
    topics = (await ensure_topics(settings)).present
    await nearline.erasure_log.load()
    discard_untrusted_state(
        Path(nearline.faust.conf.tabledir),
        changelog_is_new=nearline.store.changelog_topic not in topics,
    )


def run_worker(settings: Settings) -> None:
    """Run one worker (ingest agent + HTTP API) until SIGINT/SIGTERM."""
    check_faust()
    port = worker_port(settings)
    # uvloop for every loop of the worker (Faust's consumer thread makes its own).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    nearline = Nearline(settings)
    loop.run_until_complete(prepare(settings, nearline))
    tune_gc()
    web = WebServer(nearline.web, settings.web_host, port)
    worker = _Worker(
        nearline.faust,
        web,
        nearline.attribute_feed,
        nearline.eraser,
        loglevel=settings.log_level.lower(),
        loop=loop,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as stopped:
        if stopped.code in (0, None):
            mark_clean_stop(
                Path(nearline.faust.conf.tabledir),
                unsettled=nearline.members.unsettled or nearline.pending.table.unsettled,
            )
        raise
