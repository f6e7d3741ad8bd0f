"""Loading attribute files into the store, directly or through the item-attributes topic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiokafka import AIOKafkaProducer

from nearline.app.compose import attribute_store
from nearline.attribute_store import (
    AttributeRecord,
    Kind,
    LoadSummary,
    Sink,
    encode_record,
    load_file,
)
from nearline.foundation.kafka import client_options
from nearline.foundation.settings import Settings

__all__ = ["load_attributes"]


async def load_attributes(
    settings: Settings,
    path: Path,
    *,
    kind: Kind = "items",
    direct: bool = False,
    batch_size: int = 1000,
    progress: bool = True,
) -> LoadSummary:
    """Validate ``path`` and send its good records to the store or to the topic."""
    async with _sink(settings, direct) as sink:
        return await load_file(
            path,
            sink,
            embedding_dim=settings.embedding_dim,
            kind=kind,
            batch_size=batch_size,
            progress=progress,
        )


@asynccontextmanager
async def _sink(settings: Settings, direct: bool) -> AsyncIterator[Sink]:
    """Where records go: the attribute store itself, or the item-attributes topic."""
    if direct:
        store = attribute_store(settings)
        try:
            yield store.put_many
        finally:
            await store.close()
        return
    producer = AIOKafkaProducer(**client_options(settings, producer=True), linger_ms=5)
    await producer.start()

    async def to_topic(records: list[AttributeRecord]) -> None:
        sends = [
            await producer.send(settings.topic_item_attributes, encode_record(r), key=r.id.encode())
            for r in records
        ]
        for sent in sends:
            await sent

    try:
        yield to_topic
    finally:
        await producer.stop()
