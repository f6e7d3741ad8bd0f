"""Bulk delivery: acknowledgements land in Faust's own commit book-keeping, fetches merge."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import faust
import pytest
from faust.types import TP

from app.bulk import BulkChannel, BulkConsumer, Fetch

TOPIC = "member-actions"
TP0 = TP(TOPIC, 0)


@dataclass
class Record:
    offset: int


def records(*offsets: int) -> list[Record]:
    return [Record(o) for o in offsets]


@pytest.fixture
def consumer() -> BulkConsumer:
    # A real Faust consumer object; nothing here talks to a broker.
    app = faust.App("bulk-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.transport.Consumer = BulkConsumer.delivering_to(BulkChannel([TOPIC]))  # type: ignore[misc]
    built = app.consumer
    assert isinstance(built, BulkConsumer)
    return built


def test_acked_fetch_is_what_faust_commits(consumer: BulkConsumer) -> None:
    assert consumer.ack_fetch({TP0: records(0, 1, 2, 3)}) == 4
    assert consumer._new_offset(TP0) == 4


def test_offsets_missing_between_fetches_are_acked_as_a_gap(consumer: BulkConsumer) -> None:
    consumer.ack_fetch({TP0: records(0, 1, 2)})
    # 3 and 4 never arrive as records (control records, compaction): commit must not stall.
    assert consumer.ack_fetch({TP0: records(5, 6)}) == 4
    assert consumer._new_offset(TP0) == 7


def test_offsets_below_the_committed_one_are_not_acked_again(consumer: BulkConsumer) -> None:
    consumer._committed_offset[TP0] = 10
    assert consumer.ack_fetch({TP0: records(8, 9, 10, 11)}) == 2
    assert consumer.ack_fetch({TP0: records(10, 11)}) == 0


def test_a_fetch_from_an_earlier_generation_is_not_current(consumer: BulkConsumer) -> None:
    consumer.flow_active = True
    fetch = Fetch(consumer.app.consumer_generation_id, {TP0: records(0)})
    assert consumer.is_current(fetch)
    consumer.app.consumer_generation_id += 1
    assert not consumer.is_current(fetch)


def test_batches_merge_queued_fetches_of_one_generation_up_to_the_limit() -> None:
    channel = BulkChannel([TOPIC], max_fetches=8)

    async def run() -> list[tuple[int, int]]:
        for generation, offsets in ((1, (0, 1)), (1, (2, 3)), (1, (4, 5)), (2, (0,)), (2, (1,))):
            await channel.put(Fetch(generation, {TP0: records(*offsets)}))
        seen = []
        async for batch in channel.batches(max_records=4):
            seen.append((batch.generation, len(batch)))
            if sum(n for _, n in seen) == 8:
                return seen
        raise AssertionError("unreachable")

    assert asyncio.run(run()) == [(1, 4), (1, 2), (2, 2)]
