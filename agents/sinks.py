"""Where the agents' and the API's records go: topics written through Faust's producer.

Each sink is one small object with one job, built by the worker and handed to what needs
it, so nothing else has to hold the Faust app to send a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from nearline.agents.ingest import DeadLetter, KafkaRecord
from nearline.foundation import codec
from nearline.foundation.faust_internals import kafka_producer
from nearline.foundation.kafka import send_in_batches

__all__ = [
    "DeadLetters",
    "ProducerRecommendationsLog",
    "RecommendationsLog",
    "Repartition",
    "dead_letter_headers",
]


def dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The headers of a dead letter: why, and where the original record was."""
    return [
        ("nearline-reason", reason.encode()),
        ("nearline-detail", detail.encode()),
        ("nearline-source-topic", topic.encode()),
        ("nearline-source-partition", str(partition).encode()),
        ("nearline-source-offset", str(offset).encode()),
    ]


class DeadLetters:
    """Original bytes to a dead-letter topic, the reason and source position in headers."""

    def __init__(self, faust_app: faust.App, topic: str) -> None:
        self.faust_app = faust_app
        self.topic = topic

    async def send(self, letters: Iterable[tuple[Any, str, str]]) -> None:
        """``(record, reason, detail)`` each; returns once the broker has them all."""
        producer = self.faust_app.producer
        sends = [
            await producer.send(
                self.topic,
                record.key,
                record.value,
                None,
                None,
                dead_letter_headers(reason, detail, record.topic, record.partition, record.offset),
            )
            for record, reason, detail in letters
        ]
        await asyncio.gather(*sends)

    async def send_actions(self, letters: Sequence[DeadLetter]) -> None:
        """Invalid actions, each with the reason ingest gave."""
        await self.send((letter.record, letter.reason, letter.detail) for letter in letters)

    async def send_items(self, rejected: Sequence[tuple[Any, str]]) -> None:
        """Invalid item-attributes records (reason ``invalid_item``), with why in words."""
        await self.send((record, "invalid_item", why) for record, why in rejected)


class Repartition:
    """Actions found on another partition than their key's, to their owners' partitions."""

    def __init__(self, faust_app: faust.App, topic: str) -> None:
        self.faust_app = faust_app
        self.topic = topic

    async def send(self, forwards: Mapping[int, Sequence[tuple[bytes, KafkaRecord]]]) -> None:
        """Records keyed by member, unchanged otherwise; returns once all are acknowledged."""
        producer = kafka_producer(self.faust_app)
        sent = []
        for partition, records in forwards.items():
            sent += await send_in_batches(
                producer,
                self.topic,
                partition,
                ((key, r.value, r.timestamp, list(r.headers)) for key, r in records),
            )
        await asyncio.gather(*(future for future, _ in sent))


class RecommendationsLog:
    """Each response served, to the recommendations log the outcomes agent reads."""

    def __init__(self, faust_app: faust.App, topic: str) -> None:
        self.faust_app = faust_app
        self.topic = topic

    async def log(self, member_id: str, record: dict[str, Any]) -> None:
        """Queue one response; its delivery is not awaited.

        Keyed by member and timestamped with the request time: the outcomes agent queues
        it by those without decoding it.
        """
        await self.faust_app.producer.send(
            self.topic, member_id.encode(), codec.dumps(record), None, record["ts"], None
        )


class ProducerRecommendationsLog:
    """The recommendations log written by a serving process, through its own producer.

    Keyed by member with aiokafka's default (Java murmur2) partitioner, so a response lands
    on the partition its member's actions are on, as the worker's own sends do.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def log(self, member_id: str, record: dict[str, Any]) -> None:
        """Queue one response; its delivery is not awaited (as :class:`RecommendationsLog`)."""
        await self.producer.send(
            self.topic,
            codec.dumps(record),
            key=member_id.encode(),
            timestamp_ms=int(record["ts"] * 1000),
        )
