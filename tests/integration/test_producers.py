"""The producer matrix: the Kafka clients people use, with their defaults, into one worker.

Each client sends the same actions (event times over the last hour and some hours late, in
shuffled order, with every fourth ``ts`` in another accepted form, and 5 % re-sent with the
same ``event_id``, often far later) keyed by member, nothing else configured: librdkafka's
default partitioner (CRC32 ``consistent_random``) puts most keys on another partition than
Kafka's Java default (murmur2) that nearline keys its state by, so those go through the
repartition topic. The features read over HTTP must equal the oracle's.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from nearline.app.broker import EmbeddedBroker
from nearline.foundation import codec
from tests.integration.conftest import Deployment, Worker
from tests.integration.helpers import wait_applied_to_end
from tests.integration.test_ingest import INTEREST, assert_matches, oracle

pytestmark = [
    pytest.mark.integration,
    # kafka-python reads its protocol schemas with importlib APIs Python 3.11 deprecates.
    pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning"),
]

MEMBERS = 40
EVENTS_PER_MEMBER = 150  # over the 100 recent actions kept: retries of forgotten ones too
RETRY_SHARE = 0.05


@dataclass(frozen=True)
class Send:
    """One record a producer sends: the event as the oracle sees it, and its wire form."""

    event: dict[str, Any]  # ts in Unix seconds
    key: bytes
    value: bytes
    timestamp_ms: int | None  # the record timestamp the producer sets (None: its default)


def _wire(event: dict[str, Any], ts_ms: int, form: int) -> tuple[bytes, int | None]:
    """The event with ``ts`` as seconds, milliseconds, ISO-8601, or left to the record."""
    body = dict(event)
    when = datetime.fromtimestamp(ts_ms / 1000, UTC)
    record_ts = None
    if form == 1:
        body["ts"] = ts_ms
    elif form == 2:
        body["ts"] = (
            when.isoformat().replace("+00:00", "Z")
            if ts_ms % 2
            else when.astimezone(timezone(timedelta(hours=-5))).isoformat()
        )
    elif form == 3:
        del body["ts"]
        record_ts = ts_ms
    return codec.dumps(body), record_ts


def matrix_sends(prefix: str, now: float, seed: int) -> list[Send]:
    """The same actions for every client (member ids prefixed, so they share one worker)."""
    rng = random.Random(seed)
    now_ms = int(now * 1000)
    sends: list[Send] = []
    for m in range(MEMBERS):
        member = f"{prefix}-m{m}"
        used: set[int] = set()  # distinct event times: ties would make the order ambiguous
        while len(used) < EVENTS_PER_MEMBER:
            late = rng.randrange(80 * 3600 * 1000) if rng.random() < 0.1 else 0
            used.add(now_ms - rng.randrange(1, 3600 * 1000) - late)
        for ts_ms in used:
            event = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "member_id": member,
                "item_id": f"i{rng.randrange(300)}",
                "action": rng.choice(INTEREST),
                "ts": ts_ms / 1000,
            }
            value, record_ts = _wire(event, ts_ms, rng.randrange(4))
            sends.append(Send(event, member.encode(), value, record_ts))
    rng.shuffle(sends)  # out of event-time order
    for original in rng.sample(sends, int(len(sends) * RETRY_SHARE)):
        at = sends.index(original)
        sends.insert(rng.randrange(at + 1, len(sends) + 1), original)  # a retry, sometime later
    return sends


# -- the clients, each with its defaults ---------------------------------------------------


def produce_aiokafka(bootstrap: str, topic: str, sends: list[Send]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            futures = [
                await producer.send(topic, s.value, key=s.key, timestamp_ms=s.timestamp_ms)
                for s in sends
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def produce_confluent(bootstrap: str, topic: str, sends: list[Send]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})  # no partitioner: consistent_random
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for s in sends:
        producer.produce(
            topic, s.value, s.key, timestamp=s.timestamp_ms or 0, on_delivery=delivered
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "confluent-kafka did not deliver everything in 30 s"
    assert not failures, failures[:3]


def produce_kafka_python(bootstrap: str, topic: str, sends: list[Send]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        futures = [
            producer.send(topic, value=s.value, key=s.key, timestamp_ms=s.timestamp_ms)
            for s in sends
        ]
        producer.flush(30)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


CLIENTS: dict[str, Callable[[str, str, list[Send]], None]] = {
    "aiokafka": produce_aiokafka,
    "confluent-kafka": produce_confluent,
    "kafka-python": produce_kafka_python,
}


@pytest.fixture(scope="module")
def matrix_worker(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Deployment, Worker]]:
    """One worker for the whole matrix: each client's members are its own."""
    deployment = Deployment.isolated(
        broker, prefix="t", tmp=tmp_path_factory.mktemp("matrix"), log_level="INFO"
    )
    worker = deployment.worker().start().wait_ready()
    yield deployment, worker
    worker.stop()


COUNTERS = {
    "in": "nearline_events_in_total",
    "applied": "nearline_events_applied_total",
    "repartitioned": "nearline_events_repartitioned_total",
    "duplicate": 'nearline_events_dropped_total{reason="duplicate"}',
    "dead_lettered": "nearline_events_dead_lettered_total",
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_every_client_with_its_defaults_gives_the_oracles_features(
    client: str, matrix_worker: tuple[Deployment, Worker]
) -> None:
    deployment, worker = matrix_worker
    now = time.time()
    sends = matrix_sends(client, now, seed=12)
    before = {name: worker.metric(metric) for name, metric in COUNTERS.items()}
    CLIENTS[client](deployment.broker.bootstrap, deployment.topic, sends)
    wait_applied_to_end(deployment)
    events = [s.event for s in sends]
    expected = oracle(events, as_of=now)
    assert len(expected) == MEMBERS
    assert_matches(worker, expected, now)
    delta = {name: worker.metric(metric) - before[name] for name, metric in COUNTERS.items()}
    assert delta["in"] == len(sends)
    unique = len({e["event_id"] for e in events})
    assert delta["applied"] == unique
    assert delta["duplicate"] == len(sends) - unique
    assert delta["dead_lettered"] == 0
    share = delta["repartitioned"] / len(sends)
    print(f"\n{client}: {len(sends)} records, {share:.1%} repartitioned")
    if client == "confluent-kafka":
        # CRC32 agrees with murmur2 on about 1 key in 4 (4 partitions).
        assert share > 0.4
    else:  # Kafka's default (murmur2) partitioner: every record where nearline expects it
        assert share == 0
