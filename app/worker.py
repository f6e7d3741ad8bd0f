"""The worker process: builds one Faust app with its tables, agents and web app, and runs it.

The process entry point (``nearline worker``) calls :func:`run_worker`; :class:`Nearline`
is the composition root that wires the parts together.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import faust
import httpx
import uvloop
from aiokafka import AIOKafkaConsumer

from nearline.agents.attributes import ItemAttributesFeed
from nearline.agents.bulk import BulkChannel, BulkConsumer
from nearline.agents.erasing import Eraser, ErasureLog
from nearline.agents.erasures import ErasureRequests
from nearline.agents.examples_topic import KafkaExamplesTopic
from nearline.agents.ingest import IngestProcessor
from nearline.agents.outcomes import OutcomeJoiner
from nearline.agents.sinks import DeadLetters, RecommendationsLog, Repartition
from nearline.agents.streams import Agents, every
from nearline.app.console.timeline import IngestTimeline
from nearline.app.experiments import LiveResults
from nearline.app.lag import LagMonitor
from nearline.app.publisher import StatePublisher
from nearline.app.recommend import Recommender
from nearline.app.status import WorkerStatus
from nearline.app.web import WebServices
from nearline.app.web_app import create_web_app
from nearline.app.web_server import WebServer, WebServerError
from nearline.attribute_store import CachedAttributeStore, split_fields
from nearline.attribute_store import from_settings as attribute_store_from_settings
from nearline.foundation.broker_workarounds import BrokerWorkarounds
from nearline.foundation.faust_internals import check_faust, kafka_producer, partition_path
from nearline.foundation.kafka import client_options, ssl_context
from nearline.foundation.loop_lag import LoopMonitor
from nearline.foundation.metrics import Metrics
from nearline.foundation.serving_link import WriteCounters, serving_dir
from nearline.foundation.settings import Settings
from nearline.foundation.topics import ensure_topics
from nearline.model.registry import ModelRegistry
from nearline.tables.changelog import ChangelogTable
from nearline.tables.features import FeatureReader
from nearline.tables.member_state import StatePolicy
from nearline.tables.online_store import MEMBERS_TABLE, OnlineStore
from nearline.tables.pending import PENDING_TABLE, PendingResponses

__all__ = ["Nearline", "run_worker"]

log = logging.getLogger(__name__)


def _credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _faust_app(settings: Settings, workarounds: BrokerWorkarounds) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        web_enabled=False,
        canonical_url=settings.web_url,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        # One fetch is at most one ingest batch (changelog recovery reads in these too).
        broker_max_poll_records=settings.batch_max,
        # An ingest batch writes megabytes of changelog; 16 KiB producer batches (Faust's
        # default) made that one small produce request after another.
        producer_max_batch_size=1 << 20,
        producer_max_request_size=4 << 20,
        autodiscover=False,
        **workarounds.faust_options(),
    )


class Nearline:
    """Everything one worker process runs, built from one :class:`Settings`.

    The composition root: it builds the Faust app, the tables, the stores, the sinks and
    the services, and hands each part only the few others it uses. Nothing else in
    nearline imports it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = metrics = Metrics()
        workarounds = BrokerWorkarounds.from_settings(settings)
        self.faust = _faust_app(settings, workarounds)
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

        # With serving processes, every local write of the members table bumps a counter
        # they watch (foundation/serving_link.py).
        self.counters = (
            WriteCounters(
                serving_dir(settings.data_dir) / "counters", settings.topic_partitions, create=True
            )
            if settings.serve_processes
            else None
        )
        # State: the online store and the responses waiting for their outcomes.
        self.members = self._changelog_table(
            MEMBERS_TABLE,
            workarounds,
            on_local_write=None if self.counters is None else self.counters.bump,
        )
        self.store = OnlineStore(
            self.members,
            StatePolicy.from_settings(settings),
            settings.topic_partitions,
        )
        self.pending = PendingResponses(self._changelog_table(PENDING_TABLE, workarounds))
        join_fields = split_fields(settings.join_at_ingest, settings.join_at_read)
        self.attributes = attribute_store_from_settings(settings)
        attributes_cached = CachedAttributeStore.from_settings(self.attributes, settings)

        # Sinks: the topics the agents and the API write.
        dead_letters = DeadLetters(self.faust, settings.topic_dlq)
        self.examples_topic = KafkaExamplesTopic(
            settings.topic_training_examples, lambda: kafka_producer(self.faust), self._client
        )

        # Every erasure, read before anything is applied (prepare) and followed from there.
        self.erasure_log = ErasureLog(settings)

        # Agents' processors.
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
            settings,
            metrics,
            dead_letters.send_actions,
            Repartition(self.faust, settings.topic_repartition).send,
            attributes=attributes_cached,
            ingest_fields=join_fields.ingest,
            record_reactions=outcomes.record_reactions,
            erased=self.erasure_log.erased_at,
        )
        self.attribute_feed = ItemAttributesFeed(
            settings,
            attributes_cached,
            metrics,
            DeadLetters(self.faust, f"{settings.topic_item_attributes}.dlq").send_items,
        )
        models = ModelRegistry.from_settings(settings)
        if settings.model_dir is not None:
            settings.model_dir.mkdir(parents=True, exist_ok=True)
            models.load_latest()
        metrics.outcomes_behind.set_function(outcomes.oldest_due_seconds)
        experiment = LiveResults(settings, models, self._client, metrics.show_arm_results)

        faust_app = self.faust
        self.eraser = Eraser(
            self.erasure_log,
            self.store,
            self.pending,
            attributes_cached,  # through the cache: a deleted record is forgotten there too
            metrics,
            moving=lambda: bool(faust_app.rebalancing or faust_app.in_recovery),
            generation=lambda: int(faust_app.consumer_generation_id),
        )

        # What the worker says about itself.
        self.lag = LagMonitor(
            self._bulk_consumer,
            consumed,
            self._client,
            # Lag counts as a stall only while no partitions move and no state recovers.
            counting=lambda: not (faust_app.rebalancing or faust_app.in_recovery),
        )
        metrics.track_lag(self.lag.snapshot)
        status = WorkerStatus(
            self.faust,
            self.store,
            self.lag,
            self.actions_channel,
            self.attributes,
            metrics,
            stall_timeout=settings.stall_timeout,
            rebalance_timeout=settings.rebalance_timeout,
        )
        timeline = IngestTimeline()  # the console's ingest rate and freshness

        # The HTTP API.
        self.http = httpx.AsyncClient(timeout=settings.forward_timeout)
        self.web = create_web_app(
            WebServices(
                settings=settings,
                metrics=metrics,
                features=FeatureReader(
                    self.store, attributes_cached, join_fields, timeout=settings.forward_timeout
                ),
                status=status,
                recommender=Recommender(
                    models,
                    attributes_cached,
                    RecommendationsLog(self.faust, settings.topic_recommendations_log),
                    log_candidates=settings.log_candidates,
                ),
                timeline=timeline,
                models=models,
                attributes=attributes_cached,
                http=self.http,
                erasures=ErasureRequests(lambda: kafka_producer(self.faust), settings),
                experiment=experiment,
            )
        )

        Agents(
            settings=settings,
            faust_app=self.faust,
            consumer=self._bulk_consumer,
            actions=self.actions_channel,
            responses=self.log_channel,
            ingest=self.ingest,
            outcomes=outcomes,
            eraser=self.eraser,
            store=self.store,
            models=models,
            metrics=metrics,
            loop_monitor=LoopMonitor(metrics.registry),
            on_batch=timeline.record_batch,
        ).register()

        # The worker's own timers, beside the agents'.
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
            options={
                "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
                "max_write_buffer_number": 3,
                "block_cache_size": settings.rocksdb_block_cache_mb << 20,
                "block_cache_compressed_size": 0,
            },
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


def _check_port_free(host: str, port: int, variable: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise WebServerError(
                f"cannot serve HTTP on {host}:{port} ({exc.strerror}); "
                f"set {variable} to a free port"
            ) from None


def _clean_stop_marker(tabledir: Path) -> Path:
    return tabledir.parent / "tables-stopped-cleanly"


async def prepare(settings: Settings, nearline: Nearline) -> None:
    """Create missing topics; drop local state that its changelogs may not back; read
    every erasure before anything is applied (agents/erasing.py)."""
    topics = (await ensure_topics(settings)).present
    await nearline.erasure_log.load()
    tabledir = Path(nearline.faust.conf.tabledir)
    marker = _clean_stop_marker(tabledir)
    untrusted = None
    if tabledir.exists() and nearline.store.changelog_topic not in topics:
        # A new (or restarted, memory-only) broker: the old RocksDB state would be
        # trusted by recovery although no changelog backs it any more.
        untrusted = "the changelog topic is new"
    elif tabledir.exists() and not marker.exists():
        # Killed, or stopped with a write its changelog did not acknowledge: RocksDB may
        # hold what the changelogs lack (tables/changelog.py).
        untrusted = "the last run did not stop cleanly"
    if untrusted is not None:
        log.warning(
            "%s: discarding local state in %s; it is restored from the changelogs",
            untrusted,
            tabledir,
        )
        shutil.rmtree(tabledir)
    marker.unlink(missing_ok=True)  # until this run stops cleanly


def _mark_clean_stop(nearline: Nearline) -> None:
    """After a clean stop with every table write acknowledged, local state may be kept."""
    if nearline.members.unsettled or nearline.pending.table.unsettled:
        log.warning("a table write was not acknowledged: local state is restored next start")
        return
    tabledir = Path(nearline.faust.conf.tabledir)
    if tabledir.exists():
        _clean_stop_marker(tabledir).touch()


def run_worker(settings: Settings) -> None:
    """Run one worker (ingest agent + HTTP API) until SIGINT/SIGTERM."""
    check_faust()
    # With serving processes the public port is theirs; the worker keeps its probes,
    # metrics and console data on a port of its own.
    port, variable = (
        (settings.worker_port, "NEARLINE_WORKER_PORT")
        if settings.serve_processes
        else (settings.web_port, "NEARLINE_WEB_PORT")
    )
    _check_port_free(settings.web_host, port, variable)
    # uvloop for every loop of the worker (Faust's consumer thread makes its own).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    nearline = Nearline(settings)
    loop.run_until_complete(prepare(settings, nearline))
    # An ingest batch decodes hundreds of thousands of short-lived lists and dicts (member
    # states, events); with the default thresholds the cyclic GC ran every few hundred of
    # them and re-scanned everything alive. Objects from start-up are frozen out of it.
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)
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
            _mark_clean_stop(nearline)
        raise
