"""The outcomes agent's queue: responses wait for their horizon, then become examples."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def test_responses_wait_for_their_horizon_then_become_examples() -> None:
    store = Store({"m1": [["e1", "x", "apply", NOW + 5, {}, True]], "m2": []})
    sent: list[tuple[str, list[dict[str, Any]]]] = []

    async def send(member: str, examples: list[dict[str, Any]]) -> None:
        sent.append((member, examples))

    labeler = OutcomeLabeler(store, send, horizon=60.0, unlabeled_as="negative")  # type: ignore[arg-type]
    # Queued by key and timestamp (whole ms), or by the decoded record when there are none.
    first = Event(Message(b"m1", logged("m1", NOW, ["x", "y"]), NOW))
    second = Event(Message(None, logged("m2", NOW + 30, ["z"]), None))
    bad = Event(Message(None, b"not json", None))
    for event in (first, second, bad):
        labeler.add(event)  # type: ignore[arg-type]
    assert bad.acked and labeler.waiting == 2

    assert asyncio.run(labeler.label_due(NOW + 59)) == 0
    assert asyncio.run(labeler.label_due(NOW + 61)) == 2
    assert first.acked and not second.acked
    member, examples = sent[0]
    assert member == "m1"
    assert [(e["item_id"], e["label"], e["outcome"]) for e in examples] == [
        ("x", 1, "apply"),
        ("y", 0, "none"),
    ]
    assert [list(e["features"]) for e in examples] == [[0.0, 1.0], [2.0, 3.0]]
    assert asyncio.run(labeler.label_due(NOW + 91)) == 1 and second.acked


def test_a_record_whose_features_cannot_be_read_is_skipped_and_acknowledged() -> None:
    sent: list[Any] = []

    async def send(member: str, examples: list[dict[str, Any]]) -> None:
        sent.append(examples)

    labeler = OutcomeLabeler(Store(), send, horizon=1.0, unlabeled_as="negative")  # type: ignore[arg-type]
    body = codec.loads(logged("m1", NOW, ["x"]))
    body["features"]["base64"] = "!!"
    event = Event(Message(b"m1", codec.dumps(body), NOW))
    labeler.add(event)  # type: ignore[arg-type]
    assert asyncio.run(labeler.label_due(NOW + 2)) == 0
    assert event.acked and sent == [] and labeler.waiting == 0
