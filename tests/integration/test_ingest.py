"""End to end: actions through the embedded broker into a real worker, read back over HTTP."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import pytest

from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from tests.integration.conftest import Deployment, Record, Worker
from tests.integration.helpers import read_to_end, wait_applied_to_end
from tests.oracle import expected_features, served_view

pytestmark = pytest.mark.integration

INTEREST = ("view", "click", "apply", "save", "dismiss")
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "96h": 345600.0}


def make_events(
    n: int, members: int, *, now: float, seed: int, spread: float = 90 * 3600
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        events.append(
            {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "member_id": f"m{rng.randrange(members)}",
                "item_id": f"i{rng.randrange(500)}",
                "action": rng.choice((*INTEREST, "impression")),  # impression: not of interest
                "ts": round(now - rng.random() * spread, 3),
            }
        )
        if rng.random() < 0.03:  # a producer retry: the same event again
            events.append(dict(events[-1]))
    return events


def records(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes | None]]:
    return [(e["member_id"].encode(), codec.dumps(e)) for e in events]


def misplaced(events: list[dict[str, Any]], partitions: int, every: int = 2) -> list[Record]:
    """Records of ``events``, every ``every``-th on the partition after its key's (as a
    producer with another partitioner would put it), the rest where Kafka's default puts it."""
    placed: list[Record] = []
    for i, (key, value) in enumerate(records(events)):
        assert key is not None
        owner = partition_for_key(key, partitions)
        placed.append((key, value, (owner + 1) % partitions if i % every == 0 else owner))
    return placed


def oracle(
    events: list[dict[str, Any]], as_of: float, max_recent: int = 100
) -> dict[str, dict[str, Any]]:
    return expected_features(
        events,
        as_of=as_of,
        windows=WINDOWS,
        retention=345600.0,
        bucket=60.0,
        max_recent=max_recent,
        actions_of_interest=INTEREST,
    )


def assert_matches(worker: Worker, expected: dict[str, dict[str, Any]], as_of: float) -> None:
    for member, view in expected.items():
        response = worker.get(f"/v1/members/{member}/features", as_of=as_of)
        assert response.status_code == 200, response.text
        assert served_view(response.json()) == view, member


def test_features_equal_the_oracle(deployment: Deployment) -> None:
    worker = deployment.worker().start().wait_ready()
    now = time.time()
    events = make_events(3000, members=60, now=now, seed=1)
    deployment.produce(records(events))
    wait_applied_to_end(deployment)
    assert worker.metric("nearline_events_in_total") == len(events)
    assert_matches(worker, oracle(events, as_of=now), now)
    unique_of_interest = len({e["event_id"] for e in events if e["action"] in INTEREST})
    assert worker.metric("nearline_events_applied_total") == unique_of_interest
    assert worker.metric('nearline_events_dropped_total{reason="not_of_interest"}') > 0
    # A member never seen is a cold start, not an error.
    cold = worker.get("/v1/members/nobody/features").json()
    assert cold["known"] is False and cold["recent_actions"] == []


def test_malformed_events_go_to_the_dlq_and_the_stream_goes_on(deployment: Deployment) -> None:
    worker = deployment.worker().start().wait_ready()
    now = time.time()
    good = make_events(400, members=20, now=now, seed=2, spread=3600)

    def event(**changes: object) -> bytes:
        body = {"event_id": "x", "member_id": "m1", "item_id": "i", "action": "click", "ts": now}
        return codec.dumps({**body, **changes})

    bad: list[tuple[tuple[bytes | None, bytes | None], str]] = [
        ((b"m1", b"{not json"), "not_json"),
        ((b"m1", b"[1, 2]"), "not_object"),
        ((b"m1", codec.dumps({"event_id": "x", "member_id": "m1"})), "missing_field"),
        ((b"m1", event(ts="yesterday")), "bad_field"),
        ((b"m1", event(ts=now + 86400)), "future_ts"),
        ((b"m1", event(ts=now - 100 * 3600)), "expired_ts"),
        ((b"m1", b'{"pad": "' + b"x" * 20000 + b'"}'), "oversized"),
        ((b"m2", event(event_id="y")), "key_mismatch"),
        ((b"m1", None), "empty"),
    ]
    mixed: list[tuple[bytes | None, bytes | None]] = []
    good_records = records(good)
    for i, record in enumerate(good_records):
        mixed.append(record)
        if i % 40 == 0 and bad:
            mixed.append(bad[len(mixed) % len(bad)][0])
    for record, _ in bad:  # every kind at least once
        mixed.append(record)
    expected_reasons = [reason for record in mixed for r, reason in bad if r is record]
    deployment.produce(mixed)
    # Dead letters are acknowledged before their source offsets are committed.
    wait_applied_to_end(deployment)
    letters = read_to_end(deployment, deployment.dlq)
    assert len(letters) == len(expected_reasons)
    reasons = sorted(dict(m.headers)["nearline-reason"].decode() for m in letters)
    assert reasons == sorted(expected_reasons)
    for message in letters:
        headers = dict(message.headers)
        assert headers["nearline-detail"]
        assert int(headers["nearline-source-offset"]) >= 0
        assert int(headers["nearline-source-partition"]) in range(deployment.partitions)
    originals = {r for r, _ in bad}
    assert {(m.key, m.value) for m in letters} <= originals  # original bytes, untouched
    assert worker.metric("nearline_events_in_total") == len(mixed)
    assert_matches(worker, oracle(good, as_of=now), now)
    assert worker.metric("nearline_events_dead_lettered_total") == len(expected_reasons)


def test_actions_on_other_partitions_are_repartitioned_not_dead_lettered(
    deployment: Deployment,
) -> None:
    worker = deployment.worker().start().wait_ready()
    now = time.time()
    events = make_events(2000, members=40, now=now, seed=6)
    placed = misplaced(events, deployment.partitions)
    # Every fifth without a key (a producer's default): the member id is its key.
    placed = [(None, *r[1:]) if i % 5 == 0 else r for i, r in enumerate(placed)]
    deployment.produce(placed)
    wait_applied_to_end(deployment)
    assert worker.metric("nearline_events_in_total") == len(events)
    assert_matches(worker, oracle(events, as_of=now), now)
    unique_of_interest = len({e["event_id"] for e in events if e["action"] in INTEREST})
    assert worker.metric("nearline_events_applied_total") == unique_of_interest
    assert worker.metric("nearline_events_dead_lettered_total") == 0
    # Only actions of interest are worth forwarding; the rest are dropped where they are.
    moved = []
    for (_, value, partition), event in zip(placed, events, strict=True):
        member = event["member_id"].encode()
        owner = partition_for_key(member, deployment.partitions)
        if event["action"] in INTEREST and partition != owner:
            moved.append((member, value))
    assert worker.metric("nearline_events_repartitioned_total") == len(moved)
    topic = f"{deployment.settings['NEARLINE_APP_ID']}-{deployment.topic}-repartition"
    forwarded = read_to_end(deployment, topic)
    # Values unchanged, keyed by member (also those sent without a key) ...
    assert sorted((m.key, m.value) for m in forwarded) == sorted(moved)
    for message in forwarded:  # ... and each at its owner's partition
        assert message.partition == partition_for_key(message.key, deployment.partitions)
