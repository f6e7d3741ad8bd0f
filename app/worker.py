"""The worker: one Faust app with its topics, state tables, agents and web app."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from itertools import chain
from pathlib import Path
from typing import Any

import faust
import httpx
import uvloop
from aiokafka import AIOKafkaConsumer

from agents.attributes import ItemAttributesFeed
from agents.ingest import DeadLetter, IngestProcessor, KafkaRecord
from agents.outcomes import OutcomeJoiner
from app import codec
from app.bulk import BulkChannel, BulkConsumer, Fetch
from app.console.timeline import IngestTimeline
from app.examples_topic import KafkaExamplesTopic
from app.kafka import client_options, send_in_batches, ssl_context
from app.lag import LagMonitor, PartitionLag
from app.loop_lag import LoopMonitor
from app.metrics import Metrics
from app.recommend import Recommender
from app.settings import Settings
from app.topics import ensure_topics
from app.web import create_web_app
from app.web_server import WebServer, WebServerError
from attribute_store import (
    CachedAttributeStore,
    StoreHealth,
    StoreUnavailable,
    item_ids,
    join_at_read,
    split_fields,
)
from attribute_store import from_settings as attribute_store_from_settings
from model.registry import ModelRegistry
from tables.changelog import ChangelogTable
from tables.member_state import StatePolicy
from tables.online_store import OnlineStore
from tables.pending import PendingResponses

__all__ = ["MEMBERS_TABLE", "PENDING_TABLE", "Nearline", "run_worker"]

log = logging.getLogger(__name__)

MEMBERS_TABLE = "members"
PENDING_TABLE = "outcomes-pending"


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


def _faust_app(settings: Settings) -> faust.App:
    options: dict[str, Any] = {}
    if settings.embedded:
        # Quirks of the embedded broker: short session timeouts let a restarted worker
        # rejoin in seconds, not a minute (after a SIGKILL its JoinGroup waits ~half the
        # timeout, then its SyncGroup waits for the dead member's session to end: 10 s made
        # that ~21 s, 6 s ~14 s). Its inexact "latest offset" is handled by OnlineStore's
        # end markers, so the producer still batches.
        options.update(
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.0,
        )
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
        **options,
    )


class Nearline:
    """Everything one worker process runs, built from one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.faust = _faust_app(settings)
        self.actions_topic = self._raw_topic(settings.topic_actions)
        self.recommendations_log = self._raw_topic(settings.topic_recommendations_log)
        # Co-partitioned with the actions (same partition count, same subscribers), so the
        # owner of a partition reads both topics' records for it.
        self.repartition_topic = self._raw_topic(settings.topic_repartition)
        # Each topic's records go to its own task a fetch at a time (app/bulk.py); a task
        # that falls behind pauses its own topic's partitions, never the others'.
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
        exact_end_offsets = settings.embedded
        self.store = OnlineStore(
            ChangelogTable(
                self.faust,
                self._table(MEMBERS_TABLE),
                exact_end_offsets=exact_end_offsets,
                observe_ack=self.metrics.changelog_ack_seconds.labels(MEMBERS_TABLE).observe,
            ),
            StatePolicy.from_settings(settings),
            settings.topic_partitions,
        )
        self.pending = PendingResponses(
            ChangelogTable(
                self.faust,
                self._table(PENDING_TABLE),
                exact_end_offsets=exact_end_offsets,
                observe_ack=self.metrics.changelog_ack_seconds.labels(PENDING_TABLE).observe,
            )
        )
        self.join_fields = split_fields(settings.join_at_ingest, settings.join_at_read)
        self.attributes = attribute_store_from_settings(settings)
        self.attributes_cached = CachedAttributeStore.from_settings(self.attributes, settings)
        self.attribute_health = StoreHealth(ok=True, backend=self.attributes.backend, detail="")
        self.examples_topic = KafkaExamplesTopic(
            settings.topic_training_examples,
            self.faust.producer._ensure_producer,  # type: ignore[attr-defined]
            self._client,
        )
        self.outcomes = OutcomeJoiner(
            self.pending,
            self.store,
            self.examples_topic,
            self.metrics,
            horizon=settings.outcome_horizon,
            unlabeled_as=settings.unlabeled_as,
        )
        self.ingest = IngestProcessor(
            self.store,
            settings,
            self.metrics,
            self.send_dead_letters,
            self.send_repartitioned,
            attributes=self.attributes_cached,
            ingest_fields=self.join_fields.ingest,
            record_reactions=self.outcomes.record_reactions,
        )
        self.attribute_feed = ItemAttributesFeed(
            settings, self.attributes_cached, self.metrics, self.send_attribute_rejects
        )
        self.http = httpx.AsyncClient(timeout=settings.forward_timeout)
        self.models = ModelRegistry.from_settings(settings)
        if settings.model_dir is not None:
            settings.model_dir.mkdir(parents=True, exist_ok=True)
            self.models.load_latest()
        self.recommender = Recommender(self, self.models, log_candidates=settings.log_candidates)
        self.metrics.outcomes_behind.set_function(self.outcomes.oldest_due_seconds)
        self.lag = LagMonitor(
            self._bulk_consumer,
            [
                settings.topic_actions,
                settings.topic_repartition,
                settings.topic_recommendations_log,
            ],
            self._client,
            counting=self._lag_counts,
        )
        self._rebalancing_since: float | None = None
        self.timeline = IngestTimeline()  # the console's ingest rate and freshness
        self.web = create_web_app(self)
        self.metrics.track_lag(self.lag.snapshot)
        self.loop_monitor = LoopMonitor(self.metrics.registry)
        self._register_agents()

    def _table(self, name: str) -> faust.types.TableT[bytes, bytes]:
        """A changelog-backed RocksDB table of raw bytes, one RocksDB per partition."""
        settings = self.settings
        return self.faust.Table(
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

    def _client(self) -> AIOKafkaConsumer:
        """A plain client of its own (no group): end offsets, reads of one partition."""
        return AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, **client_options(self.settings)
        )

    def _bulk_consumer(self) -> BulkConsumer:
        consumer = self.faust.consumer
        assert isinstance(consumer, BulkConsumer)
        return consumer

    async def _close_clients(self, app: faust.App, **kwargs: Any) -> None:
        """Close the plain clients of the lag gauge and the examples check at shutdown."""
        await self.lag.stop()
        await self.examples_topic.stop()

    def _lag_counts(self) -> bool:
        """Whether lag can mean a stall now: not while partitions move or state recovers."""
        app = self.faust
        return not (app.rebalancing or app.in_recovery)

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

    def _register_agents(self) -> None:
        settings = self.settings

        # Both topics come off Faust's consumer a fetch at a time (app/bulk.py): the records
        # still commit through its book-keeping, acknowledged once applied.
        self.faust.topics.add(self.actions_topic)
        self.faust.topics.add(self.repartition_topic)
        self.faust.topics.add(self.recommendations_log)

        async def ingest() -> None:
            await self._apply_fetches(self.actions_channel, self._ingest_batch)

        async def join_outcomes() -> None:
            await self._apply_fetches(self.log_channel, self._join_batch)

        self.faust.task(ingest)
        self.faust.task(join_outcomes)
        self.faust.task(self.loop_monitor.run)

        async def label_outcomes() -> None:
            if self.faust.rebalancing or self.faust.in_recovery:
                return
            await self.outcomes.label_due()

        self.faust.timer(
            timedelta(seconds=settings.outcome_label_interval), name="outcomes-labelling"
        )(label_outcomes)

        async def refresh_lag() -> None:
            app = self.faust
            if app.rebalancing and self._rebalancing_since is None:
                self._rebalancing_since = time.monotonic()
            elif not app.rebalancing:
                self._rebalancing_since = None
            await self.lag.refresh()

        self.faust.timer(timedelta(seconds=settings.lag_interval), name="consumer-lag")(refresh_lag)

        async def sweep_retention() -> None:
            if self.faust.rebalancing or self.faust.in_recovery:
                return
            _, deleted = await self.store.sweep()
            self.metrics.members_expired.inc(deleted)

        self.faust.timer(timedelta(seconds=settings.sweep_interval), name="retention-sweep")(
            sweep_retention
        )
        self.faust.task(self._shorten_fetch_wait)

        async def check_attribute_store() -> None:
            try:
                health = await asyncio.wait_for(self.attributes.health(), 5.0)
            except Exception as exc:
                health = StoreHealth(False, self.attributes.backend, f"health check: {exc}")
            if health.ok != self.attribute_health.ok:
                log.warning("attribute store %s: %s", "up" if health.ok else "DOWN", health.detail)
            self.attribute_health = health
            self.metrics.attribute_store_up.labels(health.backend).set(1 if health.ok else 0)

        self.faust.timer(timedelta(seconds=5), name="attribute-store-health")(check_attribute_store)

        async def reload_model() -> None:
            # In a thread: the first model loaded imports torch (a second or more of CPU),
            # which on the event loop would stall every request meanwhile.
            if self.settings.model_dir is not None and await asyncio.to_thread(
                self.models.maybe_reload
            ):
                log.info("now ranking with model %s", self.models.active.version)

        self.faust.timer(timedelta(seconds=settings.model_reload_interval), name="model-reload")(
            reload_model
        )

    async def _ingest_batch(self, records: list[Any]) -> Awaitable[None]:
        plan, acknowledged = await self.ingest.apply(records)
        self.timeline.record_batch(time.time(), len(records), plan)
        return acknowledged

    async def _join_batch(self, records: list[Any]) -> None:
        await self.outcomes.add(records)  # acknowledged by the broker on return

    async def _apply_fetches(
        self,
        channel: BulkChannel,
        apply: Callable[[list[Any]], Awaitable[Awaitable[None] | None]],
    ) -> None:
        """Apply each fetch of ``channel``, then acknowledge its offsets for commit.

        ``apply`` may return an awaitable: the fetch's offsets are acknowledged once it is
        done, while the next fetch is applied (its changelog acknowledgement overlaps the
        next batch instead of delaying it). Fetches are acknowledged in order.
        """
        consumer = self._bulk_consumer()
        previous: asyncio.Future[None] | None = None
        async for fetch in channel.batches(self.settings.batch_max):
            if not consumer.is_current(fetch):
                continue  # made before a rebalance: Faust seeks back and reads it again
            done = await apply(list(chain.from_iterable(fetch.records.values())))
            if previous is not None:
                await previous  # raises if the broker did not acknowledge that batch
            # Not cancelled when this task is: on a clean stop the producer's flush still
            # acknowledges it, and the tables count as settled.
            previous = asyncio.ensure_future(self._acknowledge(consumer, fetch, done))
            previous.add_done_callback(_log_unacknowledged)

    @staticmethod
    async def _acknowledge(
        consumer: BulkConsumer, fetch: Fetch, done: Awaitable[None] | None
    ) -> None:
        if done is not None:
            await done
        if consumer.is_current(fetch):
            consumer.ack_fetch(fetch.records)

    async def _shorten_fetch_wait(self) -> None:
        """Apply NEARLINE_FETCH_MAX_WAIT to Faust's consumer, which hard-codes 1.5 s.

        A broker that does not answer a fetch as soon as data arrives (the embedded one,
        for a fetch spanning several topics) otherwise holds every fresh action that long.
        """
        for _ in range(600):
            thread = getattr(self.faust.consumer, "_thread", None)
            fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
            if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
                fetcher._fetch_max_wait_ms = int(self.settings.fetch_max_wait * 1000)
                return
            await asyncio.sleep(0.1)
        log.warning("could not set the consumer's fetch wait; freshness may suffer")

    async def _send_all(self, topic: str, records: Iterable[_Record]) -> None:
        """Send (key, value, headers) records and wait until the broker has them all."""
        producer = self.faust.producer
        sends = [await producer.send(topic, k, v, None, None, h) for k, v, h in records]
        await asyncio.gather(*sends)

    async def send_repartitioned(
        self, forwards: Mapping[int, Sequence[tuple[bytes, KafkaRecord]]]
    ) -> None:
        """Records to their owners' partitions of the repartition topic, keyed by member."""
        producer = self.faust.producer._ensure_producer()  # type: ignore[attr-defined]
        topic = self.settings.topic_repartition
        sent = []
        for partition, records in forwards.items():
            sent += await send_in_batches(
                producer,
                topic,
                partition,
                ((key, r.value, r.timestamp, list(r.headers)) for key, r in records),
            )
        await asyncio.gather(*(future for future, _ in sent))

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Original bytes to the DLQ, the reason and source position in headers."""
        await self._send_all(
            self.settings.topic_dlq,
            (
                (
                    letter.record.key,
                    letter.record.value,
                    _dead_letter_headers(
                        letter.reason,
                        letter.detail,
                        letter.record.topic,
                        letter.record.partition,
                        letter.record.offset,
                    ),
                )
                for letter in letters
            ),
        )

    async def send_attribute_rejects(self, rejected: Sequence[tuple[Any, str]]) -> None:
        """Invalid item-attributes records to their dead-letter topic, reason in headers."""
        await self._send_all(
            f"{self.settings.topic_item_attributes}.dlq",
            (
                (
                    record.key,
                    record.value,
                    _dead_letter_headers(
                        "invalid_item", reason, record.topic, record.partition, record.offset
                    ),
                )
                for record, reason in rejected
            ),
        )

    async def log_recommendation(self, member_id: str, record: dict[str, Any]) -> None:
        """Queue one response for the recommendations log; its delivery is not awaited.

        Keyed by member and timestamped with the request time: the outcomes agent queues
        it by those without decoding it.
        """
        await self.faust.producer.send(
            self.settings.topic_recommendations_log,
            member_id.encode(),
            codec.dumps(record),
            None,
            record["ts"],
            None,
        )

    async def member_features(self, member_id: str, as_of: float) -> dict[str, Any]:
        """Features of a member this worker owns, attributes joined at read.

        Raises :class:`~tables.online_store.NotOwned` when another worker owns the member.
        """
        features = self.store.features(member_id, as_of)
        fields = self.join_fields
        actions = features["recent_actions"]
        if not actions or not (fields.read or fields.ingest):
            return features
        try:
            records = await asyncio.wait_for(
                self.attributes_cached.get_many(item_ids(actions)), self.settings.forward_timeout
            )
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("attribute store unavailable at read: %s", exc)
            records = None
            features["attribute_store"] = "unavailable"
        features["recent_actions"] = join_at_read(
            actions, records, fields.read, catch_up=fields.ingest
        )
        return features

    def readiness(self) -> tuple[bool, str]:
        """Whether to send this worker requests (Kubernetes' readiness probe), and why not."""
        app = self.faust
        if not app.consumer_generation_id and not self.store.owned_partitions():
            return False, "starting: waiting for partitions"
        if app.rebalancing:
            return False, "rebalancing"
        if app.in_recovery or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return False, "recovering state from the changelog"
        stalled = self.stalled()
        if stalled:
            return False, stalled
        return True, "ready"

    def liveness(self) -> tuple[bool, str]:
        """Whether the worker still makes progress (Kubernetes' liveness probe), and why not.

        A restart is what mends a consumer that holds lag and applies nothing, or a worker
        stuck in a rebalance: both come back through Kafka's group protocol.
        """
        stalled = self.stalled()
        if stalled:
            return False, stalled
        since = self._rebalancing_since
        timeout = self.settings.rebalance_timeout
        if since is not None and time.monotonic() - since > timeout:
            return False, (
                f"stalled: rebalancing for more than {timeout:.0f}s "
                "(NEARLINE_REBALANCE_TIMEOUT); restarting rejoins the group"
            )
        return True, "ok"

    def ingest_behind(self) -> bool:
        """Whether more actions are queued than ingest can apply (their partitions paused)."""
        return bool(self.actions_channel.paused)

    def stalled(self) -> str:
        """A reason naming the stalled partitions, or ``""`` when none is."""
        timeout = self.settings.stall_timeout
        stalled = self.lag.stalled(timeout)
        if not stalled:
            return ""
        names = ", ".join(
            f"{p.topic}[{p.partition}] (lag {p.lag}, nothing applied for {p.stalled_seconds:.0f}s)"
            for p in stalled
        )
        return f"stalled: {names}; over NEARLINE_STALL_TIMEOUT={timeout:.0f}s"

    def consumer_lag(self) -> list[PartitionLag]:
        """Lag per assigned partition of the actions and recommendations-log topics."""
        return self.lag.snapshot()


_Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


def _log_unacknowledged(acknowledging: asyncio.Future[None]) -> None:
    if not acknowledging.cancelled() and (error := acknowledging.exception()) is not None:
        log.error("a batch's changelog records were not acknowledged: %r", error)


def _dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    return [
        ("nearline-reason", reason.encode()),
        ("nearline-detail", detail.encode()),
        ("nearline-source-topic", topic.encode()),
        ("nearline-source-partition", str(partition).encode()),
        ("nearline-source-offset", str(offset).encode()),
    ]


class _Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        # Faust's terminal spinner lowers the root logger to DEBUG to spin on every
        # record; that makes aiokafka build a debug record per message sent.
        self.spinner = None


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise WebServerError(
                f"cannot serve HTTP on {host}:{port} ({exc.strerror}); "
                "set NEARLINE_WEB_PORT to a free port"
            ) from None


def _clean_stop_marker(tabledir: Path) -> Path:
    return tabledir.parent / "tables-stopped-cleanly"


async def prepare(settings: Settings, nearline: Nearline) -> None:
    """Create missing topics; drop local state that its changelogs may not back."""
    topics = (await ensure_topics(settings)).present
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
    if nearline.store.table.unsettled or nearline.pending.table.unsettled:
        log.warning("a table write was not acknowledged: local state is restored next start")
        return
    tabledir = Path(nearline.faust.conf.tabledir)
    if tabledir.exists():
        _clean_stop_marker(tabledir).touch()


def run_worker(settings: Settings) -> None:
    """Run one worker (ingest agent + HTTP API) until SIGINT/SIGTERM."""
    _check_port_free(settings.web_host, settings.web_port)
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
    web = WebServer(nearline.web, settings.web_host, settings.web_port)
    worker = _Worker(
        nearline.faust, web, nearline.attribute_feed, loglevel=settings.log_level.lower(), loop=loop
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as stopped:
        if stopped.code in (0, None):
            _mark_clean_stop(nearline)
        raise
