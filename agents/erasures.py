"""Member erasure requests: the compacted erasures topic, written and read.

The topic is the durable record of every erasure: keyed by member id, on the partition the
member's actions are on (the same partition count and partitioner), one JSON value each:
``{"erasure_id", "member_id", "requested_at", "requested_by"}``. Whoever receives a request
(a worker, a serving process, ``nearline members erase``) produces the record and answers;
the record lands on the partition of the member's owner, which deletes the member's state
(the owner is "asked" through the topic rather than by HTTP, so a request survives the
owner's crash or a rebalance). Compaction keeps the last erasure of each member.

An erasure covers everything whose event time is at or before ``requested_at``: events
of the member up to then are ignored wherever they come from, later ones start it from zero.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.limits import MAX_ID_LENGTH

__all__ = [
    "Erasure",
    "ErasureRequests",
    "ErasuresTopic",
    "ErasuresUnreadable",
    "InvalidMemberId",
    "TopicReader",
    "check_member_id",
    "decode_records",
    "latest_by_member",
    "read_erasures",
    "read_to_end",
    "send_erasures",
]

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f]")


#: How long a partition of the erasures topic may go without answering a first fetch.
_READ_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ErasuresTopic:
    """The erasures topic: its name, and its partition count (the actions')."""

    name: str
    partitions: int


#: A new consumer of no group, for reading whole topics (``foundation.kafka.topic_reader``
#: with the connection settings bound); keyword arguments are aiokafka's.
TopicReader = Callable[..., AIOKafkaConsumer]


class ErasuresUnreadable(RuntimeError):
    """The erasures topic cannot be read to its end; the message says why."""


class InvalidMemberId(ValueError):
    """A member id no member can have; the message says why."""


def check_member_id(member_id: str) -> str:
    """``member_id`` if it is one an action could carry (1-256 characters, no control
    characters), else :class:`InvalidMemberId`."""
    if not member_id:
        raise InvalidMemberId("the member id is empty")
    if len(member_id) > MAX_ID_LENGTH:
        raise InvalidMemberId(
            f"the member id is {len(member_id)} characters, over the limit of {MAX_ID_LENGTH}"
        )
    if _CONTROL.search(member_id):
        raise InvalidMemberId("the member id contains control characters")
    return member_id


@dataclass(frozen=True, slots=True)
class Erasure:
    """One erasure request, as the topic holds it."""

    erasure_id: str
    member_id: str
    requested_at: float  # Unix seconds: events at or before it are erased
    requested_by: str

    @classmethod
    def new(cls, member_id: str, requested_by: str, now: float | None = None) -> Erasure:
        return cls(
            uuid.uuid4().hex,
            check_member_id(member_id),
            time.time() if now is None else now,
            requested_by,
        )

    def encode(self) -> bytes:
        return codec.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Erasure:
        body = codec.loads(raw)
        return cls(
            str(body["erasure_id"]),
            str(body["member_id"]),
            float(body["requested_at"]),
            str(body.get("requested_by", "")),
        )


async def send_erasures(
    producer: AIOKafkaProducer, topic: ErasuresTopic, erasures: Iterable[Erasure]
) -> None:
    """Produce ``erasures``; returns once the broker has acknowledged every one.

    Each goes explicitly to its member's partition (the actions' partitioner), whatever
    the producer's own partitioner is.
    """
    sends = []
    for erasure in erasures:
        key = erasure.member_id.encode()
        sends.append(
            await producer.send(
                topic.name,
                erasure.encode(),
                key=key,
                partition=partition_for_key(key, topic.partitions),
            )
        )
    await asyncio.gather(*sends)


class ErasureRequests:
    """What the web app's ``DELETE /v1/members/{id}`` writes to: the erasures topic."""

    def __init__(self, producer: Callable[[], AIOKafkaProducer], topic: ErasuresTopic) -> None:
        self.producer = producer
        self.topic = topic

    async def request(self, member_id: str, requested_by: str) -> Erasure:
        """Record an erasure of ``member_id``; returns it once the broker has it."""
        erasure = Erasure.new(member_id, requested_by)
        await send_erasures(self.producer(), self.topic, [erasure])
        return erasure


def decode_records(records: Iterable[tuple[bytes | None, bytes | None]]) -> list[Erasure]:
    """The erasures of (key, value) records; a record that is no erasure is logged, skipped."""
    found = []
    for key, value in records:
        if value is None:
            continue  # a tombstone: nothing nearline writes
        try:
            erasure = Erasure.decode(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping an erasures record that is not an erasure (key %r): %s", key, exc)
            continue
        found.append(erasure)
    return found


async def read_to_end(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> list[Erasure]:
    """Every erasure on ``topic`` (of ``partitions``: the actions' count, which it is created
    with, so no metadata has to be awaited) from its beginning to its end now, on a started
    consumer with no group; leaves it assigned and positioned after them, to read on.

    The end is each partition's high watermark as fetch responses report it (the embedded
    broker's ListOffsets can be short of the end for partitions written in batches).
    """
    assigned = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(assigned)
    await consumer.seek_to_beginning(*assigned)
    found: list[Erasure] = []
    done: set[TopicPartition] = set()
    deadline = time.monotonic() + _READ_TIMEOUT
    while len(done) < len(assigned):
        silent = [tp.partition for tp in assigned if consumer.highwater(tp) is None]
        if silent and time.monotonic() > deadline:
            raise ErasuresUnreadable(
                f"partitions {silent} of {topic} did not answer within {_READ_TIMEOUT:.0f}s: "
                f"it must have NEARLINE_TOPIC_PARTITIONS ({partitions}) partitions"
            )
        batches = await consumer.getmany(*assigned, timeout_ms=200)
        for records in batches.values():
            found += decode_records((r.key, r.value) for r in records)
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                done.add(tp)
    return found


async def read_erasures(reader: TopicReader, topic: ErasuresTopic) -> dict[str, Erasure]:
    """The latest erasure of every member erased, read from the whole topic now."""
    consumer = reader()
    await consumer.start()
    try:
        if topic.name not in await consumer.topics():
            return {}  # no worker of this version ran yet: nobody was erased
        erasures = await read_to_end(consumer, topic.name, topic.partitions)
    finally:
        await consumer.stop()
    return latest_by_member(erasures)


def latest_by_member(erasures: Iterable[Erasure]) -> dict[str, Erasure]:
    """Each member's latest erasure (compaction keeps the last record; this reads before it)."""
    latest: dict[str, Erasure] = {}
    for erasure in erasures:
        held = latest.get(erasure.member_id)
        if held is None or erasure.requested_at >= held.requested_at:
            latest[erasure.member_id] = erasure
    return latest
