"""The training-examples topic, as the outcomes join writes it and checks what it already holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from nearline.foundation import codec
from nearline.foundation.kafka import send_in_batches

__all__ = ["KafkaExamplesTopic"]


class KafkaExamplesTopic:
    """Example sets of partition ``p`` of the join go to partition ``p`` of the topic.

    So only the worker that owns ``p`` writes there, and after a crash it (or the next
    owner) can tell from that one partition which responses already have their examples.
    A topic with fewer partitions than the app still works: ``p`` wraps around, and the
    check reads a partition other owners write to as well.
    """

    def __init__(
        self,
        topic: str,
        producer: Callable[[], AIOKafkaProducer],
        client: Callable[[], AIOKafkaConsumer],
    ) -> None:
        self.topic = topic
        self._producer = producer
        self._new_client = client  # made on first use: aiokafka wants a running loop
        self._client_made: AIOKafkaConsumer | None = None
        self._partitions: int | None = None
        self._lock = asyncio.Lock()  # the client reads one partition at a time

    @property
    def _client(self) -> AIOKafkaConsumer:
        assert self._client_made is not None
        return self._client_made

    async def _tp(self, partition: int) -> TopicPartition:
        if self._client_made is None:
            self._client_made = self._new_client()
            await self._client_made.start()
        if self._partitions is None:
            await self._client.topics()  # metadata of every topic, this one included
            found = self._client.partitions_for_topic(self.topic)
            if not found:
                raise RuntimeError(
                    f"topic {self.topic!r} does not exist; create it (nearline topics create) "
                    "or set NEARLINE_TOPIC_TRAINING_EXAMPLES"
                )
            self._partitions = len(found)
        return TopicPartition(self.topic, partition % self._partitions)

    async def end_offset(self, partition: int) -> int:
        tp = await self._tp(partition)
        ends = await self._client.end_offsets([tp])
        return int(ends[tp])

    async def request_ids_since(self, partition: int, offset: int) -> set[str]:
        """The request ids of the example sets at ``offset`` and after, up to the end."""
        tp = await self._tp(partition)
        seen: set[str] = set()
        async with self._lock:
            end = (await self._client.end_offsets([tp]))[tp]
            self._client.assign([tp])
            self._client.seek(tp, offset)
            while await self._client.position(tp) < end:
                fetched = await self._client.getmany(tp, timeout_ms=500)
                for record in fetched.get(tp, ()):
                    try:
                        seen.add(str(codec.loads(record.value or b"")["request_id"]))
                    except (ValueError, KeyError, TypeError):
                        continue
        return seen

    async def send(self, partition: int, records: Sequence[tuple[bytes, bytes]]) -> None:
        tp = await self._tp(partition)
        sent = await send_in_batches(
            self._producer(), self.topic, tp.partition, ((k, v, None, None) for k, v in records)
        )
        await asyncio.gather(*(future for future, _ in sent))

    async def stop(self) -> None:
        if self._client_made is not None:
            await self._client_made.stop()
