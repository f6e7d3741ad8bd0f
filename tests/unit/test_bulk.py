"""Bulk delivery: acknowledgements land in Faust's own commit book-keeping, fetches merge.

The assertions read Faust's private state on purpose (``_new_offset``: what its next commit
writes; ``_paused_partitions``): what Faust will do is what these tests are about. Outside
the tests, only ``foundation/faust_internals.py`` touches Faust's privates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import faust
import pytest
from faust.types import TP

from nearline.agents.bulk import BulkChannel, BulkConsumer, Fetch

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
    app.transport.Consumer = BulkConsumer.delivering_to(BulkChannel([TOPIC], max_records=100))  # type: ignore[misc]
    built = app.consumer
    assert isinstance(built, BulkConsumer)
    return built


def test_acked_fetch_is_what_faust_commits(consumer: BulkConsumer) -> None:
    assert consumer.ack_fetch({TP0: records(0, 1, 2, 3)}) == 4
    assert consumer._new_offset(TP0) == 4


def test_an_acked_fetch_tells_fausts_stall_watchdog_its_partition_is_processed(
    consumer: BulkConsumer,
) -> None:
    # Faust's watchdog (verify_event_path) reads stream_inbound_time, which its own streams
    # set per event; without it, it logs "Stream has not started processing" every few
    # seconds about partitions that are processed in bulk.
    inbound = consumer.app.monitor.stream_inbound_time
    assert TP0 not in inbound
    before = time.monotonic()
    consumer.ack_fetch({TP0: records(0, 1)})
    assert before <= inbound[TP0] <= time.monotonic()


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
    channel = BulkChannel([TOPIC], max_records=100)

    async def run() -> list[tuple[int, int]]:
        for generation, offsets in ((1, (0, 1)), (1, (2, 3)), (1, (4, 5)), (2, (0,)), (2, (1,))):
            channel.put(Fetch(generation, {TP0: records(*offsets)}))
        seen = []
        async for batch in channel.batches(max_records=4):
            seen.append((batch.generation, len(batch)))
            if sum(n for _, n in seen) == 8:
                return seen
        raise AssertionError("unreachable")

    assert asyncio.run(run()) == [(1, 4), (1, 2), (2, 2)]


def _run(channels: tuple[BulkChannel, ...], test: Any) -> None:
    """Run ``test(consumer, take)`` on a fresh loop, with a real Faust consumer delivering to
    ``channels``; ``take(fetched)`` hands it each mapping of ``fetched`` as one fetch from
    the broker and returns what it left to Faust."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = faust.App("bulk-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.transport.Consumer = BulkConsumer.delivering_to(*channels)  # type: ignore[misc]
    consumer = app.consumer
    assert isinstance(consumer, BulkConsumer)

    async def take(fetched: list[dict[TP, list[Record]]]) -> list[object]:
        # What Faust's fetch loop does with each fetch (foundation/faust_internals.py): the hooks
        # run before the wait and on the records it returns.
        rests = []
        for records_by_tp in fetched:
            consumer.before_fetch()
            rests.append(consumer.take_records(records_by_tp, None)[0])
        return rests

    try:
        loop.run_until_complete(test(consumer, take))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_a_channel_that_falls_behind_pauses_only_its_own_partitions() -> None:
    actions, log = BulkChannel([TOPIC], max_records=2), BulkChannel(["log"], max_records=2)

    async def test(consumer: BulkConsumer, take: Any) -> None:
        assigned = {TP0, TP(TOPIC, 1), TP("log", 0), TP("log", 1)}
        consumer.assignment = lambda: assigned  # type: ignore[method-assign]
        rests = await take([{TP("log", 0): records(n)} for n in range(2)])
        assert rests == [{}, {}]  # taken by the channel, never waited for
        assert consumer._paused_partitions == {TP("log", 0), TP("log", 1)}
        assert log.paused and not actions.paused
        # The log's task catches up: its partitions are resumed, the actions' never paused.
        async for batch in log.batches(max_records=10):
            assert len(batch) == 2
            break
        consumer.before_fetch()  # the next fetch resumes what has room again
        assert consumer._paused_partitions == set() and not log.paused

    _run((actions, log), test)


def test_records_before_the_read_offset_are_not_delivered() -> None:
    # A restarted worker fetches before recovery ends and seeks to the committed offsets:
    # what that fetch read from the older position must not be applied again.
    actions = BulkChannel([TOPIC], max_records=100)

    async def test(consumer: BulkConsumer, take: Any) -> None:
        consumer.set_read_offset(TP0, 316)  # as Faust's perform_seek leaves it
        await take([{TP0: records(166, 167, 315, 316, 317)}, {TP0: records(200, 201)}])
        async for batch in actions.batches(max_records=10):
            assert [record.offset for record in batch.records[TP0]] == [316, 317]
            return
        raise AssertionError("unreachable")

    _run((actions,), test)
