"""Lag and stall detection: end offsets from the broker against the applied positions.

The broker client and Faust's consumer are stand-ins here (no broker in unit tests); the
integration test tests/integration/test_outcomes.py turns a real worker's probe red.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from faust.types import TP

from nearline.app.lag import LagMonitor

TOPIC = "member-actions"
P0, P1 = TP(TOPIC, 0), TP(TOPIC, 1)


@dataclass
class Client:
    ends: dict[TP, int] = field(default_factory=dict)
    down: bool = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def end_offsets(self, tps: list[TP]) -> dict[TopicPartition, int]:
        if self.down:
            raise ConnectionError("broker away")
        return {TopicPartition(tp.topic, tp.partition): self.ends.get(tp, 0) for tp in tps}


@dataclass
class Consumer:
    applied_position: dict[TP, int] = field(default_factory=dict)
    applied_at: dict[TP, float] = field(default_factory=dict)
    committed: dict[TP, int] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return {P0, P1, TP("other-topic", 0)}

    def highwater(self, tp: TP) -> int:
        return 0

    def committed_position(self, tp: TP) -> int | None:
        return self.committed.get(tp)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def monitor(client: Client, consumer: Consumer, clock: Clock, counting: list[bool]) -> LagMonitor:
    return LagMonitor(
        lambda: consumer,  # type: ignore[arg-type,return-value]
        [TOPIC],
        lambda: client,  # type: ignore[arg-type,return-value]
        counting=lambda: counting[0],
        clock=clock,
    )


def by_partition(lag: LagMonitor) -> dict[int, tuple[int, float]]:
    return {p.partition: (p.lag, p.stalled_seconds) for p in lag.snapshot()}


def test_lag_is_the_end_offset_minus_the_applied_or_committed_position() -> None:
    client = Client({P0: 50, P1: 7})
    consumer = Consumer(applied_position={P0: 40}, committed={P0: 30, P1: 7})
    lag = monitor(client, consumer, Clock(), [True])
    asyncio.run(lag.refresh())
    assert by_partition(lag) == {0: (10, 0.0), 1: (0, 0.0)}  # other topics are not counted


def test_a_partition_with_lag_that_applies_nothing_stalls() -> None:
    client, consumer, clock = Client({P0: 10, P1: 5}), Consumer(), Clock()
    lag = monitor(client, consumer, clock, [True])

    async def run() -> None:
        await lag.refresh()
        clock.now += 20
        consumer.applied_position[P1], consumer.applied_at[P1] = 5, clock.now  # P1 caught up
        await lag.refresh()
        assert by_partition(lag) == {0: (10, 20.0), 1: (0, 0.0)}
        assert [p.partition for p in lag.stalled(30)] == []
        clock.now += 11
        await lag.refresh()
        assert [p.partition for p in lag.stalled(30)] == [0]
        # It applies again: no longer stalled, though lag is left.
        consumer.applied_position[P0], consumer.applied_at[P0] = 4, clock.now
        clock.now += 1
        await lag.refresh()
        assert by_partition(lag)[0] == (6, 1.0) and lag.stalled(30) == []

    asyncio.run(run())


def test_no_stall_is_counted_while_rebalancing_or_recovering() -> None:
    client, consumer, clock, counting = Client({P0: 10}), Consumer(), Clock(), [False]
    lag = monitor(client, consumer, clock, counting)

    async def run() -> None:
        await lag.refresh()
        clock.now += 100
        await lag.refresh()
        assert by_partition(lag)[0] == (10, 0.0)
        counting[0] = True  # recovery over: the stall clock starts now, not before
        await lag.refresh()
        clock.now += 5
        await lag.refresh()
        assert by_partition(lag)[0] == (10, 5.0)

    asyncio.run(run())


def test_when_the_broker_is_away_the_last_end_offsets_are_kept() -> None:
    client, consumer, clock = Client({P0: 10}), Consumer(), Clock()
    lag = monitor(client, consumer, clock, [True])

    async def run() -> None:
        await lag.refresh()
        client.down = True
        clock.now += 40
        await lag.refresh()

    asyncio.run(run())
    assert by_partition(lag)[0] == (10, 40.0)
