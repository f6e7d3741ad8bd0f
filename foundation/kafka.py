"""Kafka connection details shared by the Faust app and the plain aiokafka clients."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2

from nearline.foundation.broker_workarounds import BrokerWorkarounds
from nearline.foundation.settings import Settings

__all__ = [
    "OutgoingRecord",
    "bootstrap_servers",
    "client_options",
    "partition_for_key",
    "send_in_batches",
]

#: Key, value, timestamp (ms; ``None`` or negative: now) and headers of a record to send.
OutgoingRecord = tuple[bytes | None, bytes | None, int | None, Sequence[tuple[str, bytes]] | None]


def bootstrap_servers(settings: Settings) -> list[str]:
    """``host:port`` list from ``NEARLINE_BROKER_URL`` (``kafka://`` prefixes dropped)."""
    return [url.split("://", 1)[-1].rstrip("/") for url in settings.broker_url]


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in {"SSL", "SASL_SSL"}:
        return None
    return create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
    )


def client_options(settings: Settings, *, producer: bool = False) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: servers, security, embedded quirks."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    if producer:
        options.update(BrokerWorkarounds.from_settings(settings).producer_options())
    return options


def topic_reader(settings: Settings, **options: Any) -> AIOKafkaConsumer:
    """A consumer of no group that reads topics from their beginning and commits nothing:
    for reading a whole topic (an export, the erasures), not for sharing it out."""
    return AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
        **client_options(settings),
    )


@lru_cache(maxsize=262_144)
def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, aiokafka) gives a keyed record.

    Memoized: aiokafka's murmur2 is pure Python, and the same members act again and again.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def send_in_batches(
    producer: AIOKafkaProducer, topic: str, partition: int, records: Iterable[OutgoingRecord]
) -> list[tuple[asyncio.Future[Any], int]]:
    """Queue ``records`` for one partition in whole producer batches; (future, count) each.

    aiokafka's ``send`` (and Faust's producer on top of it) costs a future and a queue hop
    per record; a batch costs one.
    """
    sent = []
    batch, count = producer.create_batch(), 0
    for key, value, timestamp, headers in records:
        if timestamp is not None and timestamp < 0:
            timestamp = None
        if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
            sent.append((await producer.send_batch(batch, topic, partition=partition), count))
            batch, count = producer.create_batch(), 0
            # A first record always fits.
            batch.append(key=key, value=value, timestamp=timestamp, headers=headers)
        count += 1
    sent.append((await producer.send_batch(batch, topic, partition=partition), count))
    return sent
