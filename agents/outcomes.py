"""The outcomes agent: joins logged recommendations with later actions into training examples.

The recommendations log is its own state. A logged response stays unacknowledged until its
horizon has passed and its examples are written, so after a crash or a rebalance the
worker that owns the partition re-reads exactly the responses still waiting. The member's
later actions come from the online store of the same partition (the log is keyed by
member, like the actions, so Faust gives both partitions to the same worker).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from faust.types import EventT

from app import codec
from model.feature_log import logged_rows
from tables.member_state import ActionRow
from tables.online_store import OnlineStore

__all__ = ["OutcomeLabeler", "feature_set_id", "label_examples"]

log = logging.getLogger(__name__)

POSITIVE = frozenset({"click", "apply", "save"})
NEGATIVE = frozenset({"dismiss"})


def feature_set_id(feature_names: Iterable[str]) -> str:
    """A short fingerprint of a feature list: examples and models must agree on it."""
    return hashlib.sha1("\n".join(feature_names).encode()).hexdigest()[:12]


def label_examples(
    record: dict[str, Any], actions: Sequence[ActionRow], horizon: float, unlabeled_as: str
) -> list[dict[str, Any]]:
    """One example per logged candidate, labelled by what the member did within the horizon.

    Positive: a click, apply or save on the item after the request; negative: a dismiss
    (or, with ``unlabeled_as="negative"``, no reaction at all). The features are the ones
    logged at request time, so the example is point-in-time correct.
    """
    start, end = record["ts"], record["ts"] + horizon
    reactions: dict[str, set[str]] = {}
    for _event_id, item_id, action, ts, _attrs, _joined in actions:
        if start < ts <= end:
            reactions.setdefault(item_id, set()).add(action)
    fingerprint = feature_set_id(record["feature_names"])
    item_ids, matrix = logged_rows(record)
    examples = []
    for item_id, features in zip(item_ids, matrix, strict=True):
        seen = reactions.get(item_id, set())
        if seen & POSITIVE:
            label, outcome = 1, sorted(seen & POSITIVE)[0]
        elif seen & NEGATIVE:
            label, outcome = 0, "dismiss"
        elif unlabeled_as == "negative":
            label, outcome = 0, "none"
        else:
            continue
        examples.append(
            {
                "request_id": record["request_id"],
                "member_id": record["member_id"],
                "ts": record["ts"],
                "model_version": record["model_version"],
                "item_id": item_id,
                "features": features,
                "feature_set": fingerprint,
                "label": label,
                "outcome": outcome,
            }
        )
    return examples


SendExamples = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


class OutcomeLabeler:
    """Labels each logged response once its horizon has passed, then acknowledges it.

    The recommendations log itself is the queue: the agent takes the next response only
    after this one is labelled, so waiting responses cost broker storage, not worker memory.
    """

    def __init__(
        self,
        store: OnlineStore,
        send_examples: SendExamples,
        *,
        horizon: float,
        unlabeled_as: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.send_examples = send_examples
        self.horizon = horizon
        self.unlabeled_as = unlabeled_as
        self.clock = clock
        self.sleep = sleep
        self.examples_written = 0

    async def handle(self, event: EventT) -> int:
        """Wait for the response's horizon, write its examples; returns how many."""
        message = event.message
        try:
            member_id, due = self._member_and_due(message.key, message.timestamp, message.value)
        except (ValueError, KeyError, TypeError):
            log.warning("skipping an unreadable recommendations-log record")
            event.ack()
            return 0
        delay = due - self.clock()
        if delay > 0:
            await self.sleep(delay)
        if not self.store.owns(message.partition):
            return 0  # revoked while waiting: the new owner reads it again, unacknowledged
        state = self.store.load(message.partition, member_id.encode())
        actions = state.actions if state is not None else []
        try:
            record = codec.loads(message.value or b"")
            examples = label_examples(record, actions, self.horizon, self.unlabeled_as)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping a recommendations-log record with bad features: %s", exc)
            examples = []
        if examples:
            await self.send_examples(member_id, examples)
        event.ack()
        self.examples_written += len(examples)
        return len(examples)

    def _member_and_due(
        self, key: bytes | None, timestamp: float | None, value: bytes | None
    ) -> tuple[str, float]:
        # Records are keyed by member and stamped with the request time (whole ms): enough
        # to know when one is due without decoding it.
        if key and timestamp:
            return key.decode(), timestamp + 0.001 + self.horizon
        record = codec.loads(value or b"")
        member_id = record["member_id"]
        if not isinstance(member_id, str):
            raise TypeError("member_id is not a string")
        return member_id, float(record["ts"]) + self.horizon
