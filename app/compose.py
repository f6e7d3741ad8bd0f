"""The parts built from :class:`Settings`: the one place each setting is unpacked.

The layers below the application take plain values or small value objects and never see
the whole configuration. The worker, the serving processes and the CLI build their parts
here, so each is configured the same way in every process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from aiokafka import ConsumerRecord

from nearline.agents.attributes import ItemAttributesFeed
from nearline.agents.erasing import ErasureLog
from nearline.agents.erasures import ErasuresTopic, TopicReader
from nearline.agents.ingest import IngestRules
from nearline.agents.streams import Schedule
from nearline.attribute_store.cache import CachedAttributeStore
from nearline.attribute_store.embedded import EmbeddedAttributeStore
from nearline.attribute_store.store import AttributeStore
from nearline.foundation.kafka import client_options, topic_reader
from nearline.foundation.metrics import Metrics
from nearline.foundation.settings import Settings
from nearline.model.registry import ModelRegistry
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from nearline.tables.member_state import StatePolicy

if TYPE_CHECKING:
    from nearline.attribute_store.aerospike import AerospikeAttributeStore

__all__ = [
    "aerospike_store",
    "agent_schedule",
    "attribute_store",
    "cached_attributes",
    "erasure_log",
    "erasures_topic",
    "ingest_rules",
    "item_attributes_feed",
    "model_registry",
    "state_policy",
    "topic_reader_of",
    "vectorizer_from_settings",
]


def ingest_rules(settings: Settings) -> IngestRules:
    """What ingest checks each action against, and the topics it reads."""
    return IngestRules(
        actions_of_interest=frozenset(settings.actions_of_interest),
        topic_actions=settings.topic_actions,
        topic_repartition=settings.topic_repartition,
        max_event_bytes=settings.max_event_bytes,
        retention=settings.retention,
        max_future_skew=settings.max_future_skew,
        ts_from_record=settings.ts_from_record,
    )


def agent_schedule(settings: Settings) -> Schedule:
    """How much the agents take at a time and how often their timers run."""
    return Schedule(
        batch_max=settings.batch_max,
        fetch_max_wait=settings.fetch_max_wait,
        outcome_label_interval=settings.outcome_label_interval,
        sweep_interval=settings.sweep_interval,
        model_reload_interval=settings.model_reload_interval,
        reload_models=settings.model_dir is not None,
    )


def topic_reader_of(settings: Settings) -> TopicReader:
    """New consumers of no group on the configured cluster, for reading whole topics."""
    return partial(topic_reader, settings)


def erasures_topic(settings: Settings) -> ErasuresTopic:
    return ErasuresTopic(settings.topic_erasures, settings.topic_partitions)


def erasure_log(settings: Settings) -> ErasureLog:
    """The worker's log of every erasure, read from the erasures topic."""
    return ErasureLog(erasures_topic(settings), topic_reader_of(settings))


def item_attributes_feed(
    settings: Settings,
    store: AttributeStore,
    metrics: Metrics,
    send_rejects: Callable[[Sequence[tuple[ConsumerRecord, str]]], Awaitable[None]],  # type: ignore[type-arg]
) -> ItemAttributesFeed:
    """The feed of the item-attributes topic into ``store``: shared by the workers' group
    with Aerospike, a full copy per worker with the embedded store."""
    return ItemAttributesFeed(
        settings.topic_item_attributes,
        store,
        metrics,
        send_rejects,
        group_id=(
            None if settings.attribute_store == "embedded" else f"{settings.app_id}-item-attributes"
        ),
        embedding_dim=settings.embedding_dim,
        client_options=client_options(settings),
    )


def state_policy(settings: Settings) -> StatePolicy:
    """How much of a member's history the online store keeps, and how it is windowed."""
    return StatePolicy(
        windows=tuple(settings.windows),
        retention=settings.retention,
        bucket=settings.bucket,
        max_recent_actions=settings.max_recent_actions,
        actions_of_interest=tuple(settings.actions_of_interest),
        dedupe_window=settings.dedupe_window,
        dedupe_max_ids=settings.dedupe_max_ids,
    )


def attribute_store(settings: Settings) -> AttributeStore:
    """The backend ``NEARLINE_ATTRIBUTE_STORE`` names, configured from ``settings``.

    Uncached: wrap it in :func:`cached_attributes` for ingest-time joins. The embedded
    store opens its RocksDB now; the Aerospike store connects on first use.
    """
    if settings.attribute_store == "aerospike":
        return aerospike_store(settings)
    if settings.attribute_store == "embedded":
        return EmbeddedAttributeStore.in_data_dir(settings.data_dir)
    raise ValueError(
        f"NEARLINE_ATTRIBUTE_STORE={settings.attribute_store!r}: use embedded or aerospike"
    )


def aerospike_store(settings: Settings) -> AerospikeAttributeStore:
    """The Aerospike backend, imported only here: with the embedded store, never."""
    from nearline.attribute_store.aerospike import AerospikeAttributeStore

    return AerospikeAttributeStore(
        settings.aerospike_hosts,
        namespace=settings.aerospike_namespace,
        sets={"items": settings.aerospike_set_items, "members": settings.aerospike_set_members},
        user=settings.aerospike_user,
        password=settings.aerospike_password,
        tls_name=settings.aerospike_tls_name,
        tls_cafile=settings.aerospike_tls_cafile,
        connect_timeout=settings.aerospike_connect_timeout,
        total_timeout=settings.aerospike_total_timeout,
        max_retries=settings.aerospike_retries,
    )


def cached_attributes(backend: AttributeStore, settings: Settings) -> CachedAttributeStore:
    """``backend`` behind the bounded TTL cache the joins read through."""
    return CachedAttributeStore(
        backend, maxsize=settings.attribute_cache_size, ttl=settings.attribute_cache_ttl
    )


def vectorizer_from_settings(settings: Settings) -> Vectorizer:
    """The vectorizer of the configured windows, actions of interest, recency half-life
    (NEARLINE_MODEL_HALF_LIFE), short window and embedding size: the worker, the CLI and
    the simulator build it here, so they agree on the feature columns."""
    return Vectorizer(
        VectorizerConfig.for_actions(
            settings.window_names,
            settings.actions_of_interest,
            half_life_s=settings.model_half_life,
            short_window_s=settings.model_short_window,
            embedding_dim=settings.embedding_dim,
        )
    )


def model_registry(settings: Settings, vectorizer: Vectorizer | None = None) -> ModelRegistry:
    """The registry of ``model_dir`` with ``torch_threads``; the vectorizer from settings
    unless given."""
    return ModelRegistry(
        settings.model_dir,
        vectorizer or vectorizer_from_settings(settings),
        threads=settings.torch_threads,
    )
