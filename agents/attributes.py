"""The item-attributes feed: upserts and tombstones from the compacted topic into the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from mode import Service

from nearline.attribute_store import AttributeStore, InvalidRecord, ItemAttributes, validate_item
from nearline.foundation import codec
from nearline.foundation.metrics import Metrics

__all__ = ["ItemAttributesFeed", "plan_attribute_batch"]

log = logging.getLogger(__name__)


def plan_attribute_batch(
    records: Sequence[ConsumerRecord],
    embedding_dim: int,  # type: ignore[type-arg]
) -> tuple[dict[str, ItemAttributes], set[str], list[tuple[ConsumerRecord, str]]]:  # type: ignore[type-arg]
    """Upserts and deletes (last one per item wins, as compaction would keep) and rejects."""
    upserts: dict[str, ItemAttributes] = {}
    deletes: set[str] = set()
    rejected: list[tuple[ConsumerRecord, str]] = []  # type: ignore[type-arg]
    for record in records:
        if record.key is None:
            rejected.append((record, "the record has no key; key item attributes by item_id"))
            continue
        item_id = record.key.decode(errors="replace")
        if record.value is None:  # tombstone
            upserts.pop(item_id, None)
            deletes.add(item_id)
            continue
        try:
            body = codec.loads(record.value)
            if not isinstance(body, dict):
                raise InvalidRecord("the value must be a JSON object")
            item = validate_item(body, embedding_dim)
            if item.item_id != item_id:
                raise InvalidRecord(f"key {item_id!r} is not the item_id {item.item_id!r}")
        except (codec.DecodeError, InvalidRecord) as exc:
            rejected.append((record, str(exc)))
            continue
        deletes.discard(item_id)
        upserts[item_id] = item
    return upserts, deletes, rejected


class ItemAttributesFeed(Service):
    """Keeps an attribute store in step with the ``item-attributes`` topic.

    With the embedded store every worker keeps a full copy, so the feed reads every
    partition (like a Kafka Streams GlobalKTable, from the start of the compacted topic).
    With Aerospike one shared store is fed once: the feed joins a consumer group and Kafka
    spreads the partitions over the workers.

    ``group_id``: the consumer group of a shared store, ``None`` for a copy per worker;
    ``client_options``: aiokafka's connection arguments (``foundation.kafka.client_options``).
    """

    def __init__(
        self,
        topic: str,
        store: AttributeStore,
        metrics: Metrics,
        send_rejects: Callable[[Sequence[tuple[ConsumerRecord, str]]], Awaitable[None]],  # type: ignore[type-arg]
        *,
        group_id: str | None,
        embedding_dim: int,
        client_options: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.topic = topic
        self.store = store
        self.metrics = metrics
        self.send_rejects = send_rejects
        self.group_id = group_id
        self.embedding_dim = embedding_dim
        self.client_options = client_options
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        topic, options = self.topic, self.client_options
        if self.group_id is not None:
            self._consumer = AIOKafkaConsumer(
                topic,
                group_id=self.group_id,
                auto_offset_reset="earliest",
                enable_auto_commit=True,
                **options,
            )
            await self._consumer.start()
            self.caught_up.set()
        else:
            self._consumer = AIOKafkaConsumer(
                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False, **options
            )
            await self._consumer.start()
            partitions = self._consumer.partitions_for_topic(topic) or set()
            self._consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            await self._consumer.seek_to_beginning()
        self.add_future(self._run())

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            records = [record for batch in batches.values() for record in batch]
            if records:
                await self.apply(records)
            elif not self.caught_up.is_set():
                self.caught_up.set()
                log.info("item attributes loaded from %s", self.topic)

    async def apply(self, records: Sequence[ConsumerRecord]) -> None:  # type: ignore[type-arg]
        upserts, deletes, rejected = plan_attribute_batch(records, self.embedding_dim)
        while True:
            try:
                if upserts:
                    await self.store.put_many(upserts.values())
                if deletes:
                    await self.store.delete_many(deletes)
                break
            except Exception as exc:
                log.warning("attribute store write failed (%s); retrying in 1s", exc)
                await asyncio.sleep(1.0)
                if self.should_stop:
                    return
        self.metrics.attribute_records.labels("upserted").inc(len(upserts))
        self.metrics.attribute_records.labels("deleted").inc(len(deletes))
        if rejected:
            self.metrics.attribute_records.labels("rejected").inc(len(rejected))
            await self.send_rejects(rejected)
