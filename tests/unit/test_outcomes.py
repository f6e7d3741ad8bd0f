"""The outcomes agent: responses wait for their horizon, then become examples."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from agents.outcomes import OutcomeLabeler
from app import codec
from model.feature_log import log_record

NOW = 1_764_384_000.0


@dataclass
class Message:
    key: bytes | None
    value: bytes | None
    timestamp: float | None
    partition: int = 0


@dataclass
class Event:
    message: Message
    acked: bool = False

    def ack(self) -> None:
        self.acked = True


@dataclass
class State:
    actions: list[list[Any]]


@dataclass
class Store:
    actions: dict[str, list[list[Any]]] = field(default_factory=dict)

    def owns(self, partition: int) -> bool:
        return True

    def load(self, partition: int, key: bytes) -> State | None:
        found = self.actions.get(key.decode())
        return State(found) if found is not None else None


def logged(member: str, ts: float, items: list[str]) -> bytes:
    matrix = np.arange(len(items) * 2, dtype=np.float32).reshape(len(items), 2)
    record = log_record(
        request_id=f"r-{member}",
        member_id=member,
        ts=ts,
        features_as_of=ts,
        model_version="v",
        feature_names=["a", "b"],
        item_ids=items,
        matrix=matrix,
        ranked=items,
        context={},
    )
    return codec.dumps(record)


class Clock:
    """Time that moves only when the labeler sleeps."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def labeler_with(store: Any, sent: list[Any], horizon: float) -> tuple[OutcomeLabeler, Clock]:
    clock = Clock(NOW)

    async def send(member: str, examples: list[dict[str, Any]]) -> None:
        sent.append((member, examples))

    labeler = OutcomeLabeler(
        store, send, horizon=horizon, unlabeled_as="negative", clock=clock, sleep=clock.sleep
    )
    return labeler, clock


def test_responses_wait_for_their_horizon_then_become_examples() -> None:
    store = Store({"m1": [["e1", "x", "apply", NOW + 5, {}, True]], "m2": []})
    sent: list[tuple[str, list[dict[str, Any]]]] = []
    labeler, clock = labeler_with(store, sent, horizon=60.0)
    # Due by key and timestamp (whole ms), or by the decoded record when there are none.
    first = Event(Message(b"m1", logged("m1", NOW, ["x", "y"]), NOW))
    second = Event(Message(None, logged("m2", NOW + 30, ["z"]), None))

    assert asyncio.run(labeler.handle(first)) == 2  # type: ignore[arg-type]
    assert first.acked and clock.slept == [pytest.approx(60.001)]
    member, examples = sent[0]
    assert member == "m1"
    assert [(e["item_id"], e["label"], e["outcome"]) for e in examples] == [
        ("x", 1, "apply"),
        ("y", 0, "none"),
    ]
    assert [list(e["features"]) for e in examples] == [[0.0, 1.0], [2.0, 3.0]]
    assert asyncio.run(labeler.handle(second)) == 1 and second.acked  # type: ignore[arg-type]
    assert clock.slept[1] == pytest.approx(30.0 - 0.001)  # due 90 s after NOW


def test_an_unreadable_record_is_acknowledged_without_waiting() -> None:
    sent: list[Any] = []
    labeler, clock = labeler_with(Store(), sent, horizon=60.0)
    bad = Event(Message(None, b"not json", None))
    assert asyncio.run(labeler.handle(bad)) == 0  # type: ignore[arg-type]
    assert bad.acked and clock.slept == [] and sent == []


def test_a_record_whose_features_cannot_be_read_is_skipped_and_acknowledged() -> None:
    sent: list[Any] = []
    labeler, _ = labeler_with(Store(), sent, horizon=1.0)
    body = codec.loads(logged("m1", NOW, ["x"]))
    body["features"]["base64"] = "!!"
    event = Event(Message(b"m1", codec.dumps(body), NOW))
    assert asyncio.run(labeler.handle(event)) == 0  # type: ignore[arg-type]
    assert event.acked and sent == []


def test_a_response_whose_partition_moved_while_waiting_is_left_for_its_new_owner() -> None:
    class Revoked(Store):
        def owns(self, partition: int) -> bool:
            return False

    sent: list[Any] = []
    labeler, _ = labeler_with(Revoked({"m1": []}), sent, horizon=60.0)
    event = Event(Message(b"m1", logged("m1", NOW, ["x"]), NOW))
    assert asyncio.run(labeler.handle(event)) == 0  # type: ignore[arg-type]
    assert not event.acked and sent == []
