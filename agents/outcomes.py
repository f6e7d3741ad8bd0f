"""The outcomes agent: joins logged recommendations with later actions into training examples.

The recommendations log is its own state. A logged response stays unacknowledged until its
horizon has passed and its examples are written, so after a crash or a rebalance the
worker that owns the partition re-reads exactly the responses still waiting. The member's
later actions come from the online store of the same partition (the log is keyed by
member, like the actions, so Faust gives both partitions to the same worker).
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
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


@dataclass
class _Pending:
    # Only what orders the queue: the record is decoded again when labelled, so a waiting
    # response costs its message bytes, not a decoded copy as well.
    event: EventT
    member_id: str
    due: float


SendExamples = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


class OutcomeLabeler:
    """Holds logged responses until their horizon, then writes their examples and acks."""

    def __init__(
        self,
        store: OnlineStore,
        send_examples: SendExamples,
        *,
        horizon: float,
        unlabeled_as: str,
    ) -> None:
        self.store = store
        self.send_examples = send_examples
        self.horizon = horizon
        self.unlabeled_as = unlabeled_as
        self._pending: dict[int, deque[_Pending]] = {}
        self.examples_written = 0

    def add(self, event: EventT) -> None:
        message = event.message
        try:
            member_id, due = self._member_and_due(message.key, message.timestamp, message.value)
        except (ValueError, KeyError, TypeError):
            log.warning("skipping an unreadable recommendations-log record")
            event.ack()
            return
        self._pending.setdefault(message.partition, deque()).append(_Pending(event, member_id, due))

    def _member_and_due(
        self, key: bytes | None, timestamp: float | None, value: bytes | None
    ) -> tuple[str, float]:
        # Records are keyed by member and stamped with the request time (whole ms): enough
        # to queue one without decoding it; it is decoded when labelled.
        if key and timestamp:
            return key.decode(), timestamp + 0.001 + self.horizon
        record = codec.loads(value or b"")
        member_id = record["member_id"]
        if not isinstance(member_id, str):
            raise TypeError("member_id is not a string")
        return member_id, float(record["ts"]) + self.horizon

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._pending.values())

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their new owner re-reads the unacknowledged responses."""
        for partition in partitions:
            self._pending.pop(partition, None)

    async def label_due(self, now: float) -> int:
        """Write the examples of every response whose horizon has passed; returns how many."""
        written = 0
        for partition, queue in list(self._pending.items()):
            if not self.store.owns(partition):
                continue
            while queue and queue[0].due <= now:
                pending = queue[0]
                member = pending.member_id
                state = self.store.load(partition, member.encode())
                actions = state.actions if state is not None else []
                try:
                    record = codec.loads(pending.event.message.value or b"")
                    examples = label_examples(record, actions, self.horizon, self.unlabeled_as)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("skipping a recommendations-log record with bad features: %s", exc)
                    examples = []
                if examples:
                    await self.send_examples(member, examples)
                queue.popleft()
                pending.event.ack()
                written += len(examples)
        self.examples_written += written
        return written
