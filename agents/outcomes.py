"""The outcomes join: logged recommendations and the member's later actions, into training examples.

A windowed stream-stream join kept in state, as Kafka Streams and Samza do it. A logged
response is read off the recommendations log, stored in a changelog-backed RocksDB table
(:class:`~nearline.tables.pending.PendingResponses`) keyed by its due time, and acknowledged at
once; nothing waits inside a stream, so the consumer that also reads the actions is never held. A
timer labels the responses whose horizon has passed with the member's actions (the online
store of the same partition, plus every action recorded for members with pending
responses), writes one example set per response and deletes it.

Last touch: a reaction to an item goes to the member's latest response that served the item
before it, not to every response within the horizon that served it, so an arm that repeats
its lists has each reaction counted once, in its examples and in its outcome. Each stored
response keeps what it served beside it (see :mod:`nearline.tables.pending`), which labelling
reads with one prefix scan per member with reactions. A candidate logged but not served is
labelled by any reaction to it, as before. A later response not yet stored when an earlier
one is labelled (the log read behind by more than their gap) takes no credit from it.

Exactly one example set per response, across crashes too. Each write of responses also
stores the log offset they reach (the ``s`` key, after them), so a response read again,
after a crash, a rebalance or any seek back, is never stored a second time, even once it
has been labelled and deleted; nothing has to wait for the log's offsets to be committed.
Before a labelling pass sends anything it stores the keys of its responses and the
training-examples partition's end offset (the ``i`` key of the state). A pass that finished
deletes that key with its responses; one cut short leaves it, and the next pass (on this
worker or, after a rebalance, on the partition's new owner, which restores it from the
changelog) first reads the training-examples partition from that offset and deletes those
of its responses whose example sets are already there; the others are labelled as usual.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from nearline.agents.ingest import KafkaRecord
from nearline.foundation import codec
from nearline.foundation.metrics import Metrics
from nearline.model.experiments import response_outcome
from nearline.model.feature_log import encode_matrix, logged_rows
from nearline.tables.online_store import OnlineStore
from nearline.tables.pending import (
    IN_PROGRESS_KEY,
    STORED_UNTIL_KEY,
    DueResponse,
    PendingResponses,
    due_key,
    reaction_key,
    reaction_value,
    served_key,
    served_value,
    stored_until_value,
)

__all__ = [
    "ExamplesTopic",
    "OutcomeJoiner",
    "feature_set_id",
    "label_response",
]

log = logging.getLogger(__name__)

POSITIVE = frozenset({"click", "apply", "save"})
NEGATIVE = frozenset({"dismiss"})
_LABELLING = POSITIVE | NEGATIVE
#: Responses labelled between two yields to the event loop.
_YIELD_EVERY = 16

#: A member's action as the labels need it: (item_id, action, event time).
Reacted = tuple[str, str, float]


def feature_set_id(feature_names: Iterable[str]) -> str:
    """A short fingerprint of a feature list: examples and models must agree on it."""
    return hashlib.sha1("\n".join(feature_names).encode()).hexdigest()[:12]


def label_response(
    record: Mapping[str, Any],
    actions: Iterable[Reacted],
    horizon: float,
    unlabeled_as: str,
    served_at: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any] | None:
    """The example set of one logged response: its candidates labelled by what followed.

    Positive: a click, apply or save on the item after the request and within the horizon;
    negative: a dismiss (or, with ``unlabeled_as="negative"``, no reaction at all). The
    features are the rows logged at request time, so the examples are point-in-time
    correct. A response of an experiment's arm also gets its outcome (``"experiment"``).
    ``None`` when no candidate makes an example and the response is of no arm.

    Last touch: ``served_at`` gives, per item, when the member's responses that served it
    were requested (ascending; this one's own time may be among them). A reaction to an item
    this response served is credited to the latest response that served the item before
    it: this one does not count it if another served the item after this one's request and
    before the reaction. A candidate logged but not served is labelled by any reaction to
    it within the horizon, as is a response without ``served_at``.
    """
    start, end = record["ts"], record["ts"] + horizon
    served = frozenset(record.get("ranked") or ()) if served_at else frozenset()
    reactions: dict[str, set[str]] = {}
    for item_id, action, ts in actions:
        if not start < ts <= end:
            continue
        if item_id in served and _served_between(served_at, item_id, start, ts):
            continue  # a later response's
        reactions.setdefault(item_id, set()).add(action)
    item_ids, matrix = logged_rows(record)
    arm = record.get("experiment")
    keep, labels, outcomes = [], [], []
    for row, item_id in enumerate(item_ids):
        seen = reactions.get(item_id, ())
        positive = POSITIVE.intersection(seen)
        if positive:
            label, outcome = 1, sorted(positive)[0]
        elif NEGATIVE.intersection(seen):
            label, outcome = 0, "dismiss"
        elif unlabeled_as == "negative":
            label, outcome = 0, "none"
        else:
            continue
        keep.append(row)
        labels.append(label)
        outcomes.append(outcome)
    if not keep and arm is None:
        return None
    example_set: dict[str, Any] = {
        "request_id": record["request_id"],
        "member_id": record["member_id"],
        "ts": record["ts"],
        "model_version": record["model_version"],
        "feature_set": feature_set_id(record["feature_names"]),
        "item_ids": [item_ids[row] for row in keep],
        "labels": labels,
        "outcomes": outcomes,
        "features": encode_matrix(matrix[keep]),
    }
    if arm is not None:
        # Every response of an arm has its outcome here, with or without examples: the
        # arm's results are computed from this topic (nearline.model.experiments.arm_results).
        arm_outcome = response_outcome(record["ranked"], reactions)
        example_set["experiment"] = {"id": arm["id"], "arm": arm["arm"], **arm_outcome}
    return example_set


def _served_between(
    served_at: Mapping[str, Sequence[float]] | None, item_id: str, start: float, ts: float
) -> bool:
    """Whether a response requested after ``start`` and before ``ts`` served ``item_id``."""
    times = served_at.get(item_id) if served_at else None
    if not times:
        return False
    after = bisect.bisect_right(times, start)
    return after < len(times) and times[after] < ts


class ExamplesTopic(Protocol):
    """The training-examples topic, as the join writes and checks it."""

    async def end_offset(self, partition: int) -> int: ...

    async def request_ids_since(self, partition: int, offset: int) -> set[str]: ...

    async def send(self, partition: int, records: Sequence[tuple[bytes, bytes]]) -> None: ...


class OutcomeJoiner:
    """Stores logged responses, records reactions to them, and labels them when due."""

    def __init__(
        self,
        pending: PendingResponses,
        store: OnlineStore,
        examples: ExamplesTopic,
        metrics: Metrics,
        *,
        horizon: float,
        unlabeled_as: str,
        max_per_pass: int = 500,
        erased: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pending = pending
        self.store = store
        self.examples = examples
        self.metrics = metrics
        self.horizon_ms = round(horizon * 1000)
        self.horizon = horizon
        self.unlabeled_as = unlabeled_as
        self.max_per_pass = max_per_pass
        #: Member id → erasure time: the member's responses up to then make no examples.
        self.erased = erased
        self.clock = clock

    def _erased(self, member: bytes, due_ms: int) -> bool:
        """Whether the response of ``member`` due at ``due_ms`` was requested at or before
        the member's erasure."""
        if not self.erased:
            return False
        at = self.erased.get(member.decode(errors="replace"))
        return at is not None and (due_ms - 1 - self.horizon_ms) / 1000 <= at

    # -- the recommendations log -------------------------------------------------------

    async def add(self, records: Sequence[KafkaRecord]) -> int:
        """Store logged responses until their horizon; returns how many were new.

        A record before its partition's stored-until offset was stored before (it is still
        pending, or labelled already): a re-read of the log, after a crash, a rebalance or a
        seek back, skips it. Beside each response goes what it served (its ``v`` key, just
        before its ``d`` key: a changelog restored in part has the one whenever the other).
        """
        by_partition: dict[int, list[KafkaRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        new = unreadable = erased = 0
        pending = self.pending
        async with pending.write_lock:
            updates: dict[int, dict[bytes, bytes | None]] = {}
            for partition, batch in by_partition.items():
                stored_until = pending.stored_until(partition)
                counts: dict[bytes, int] = {}
                values: dict[bytes, bytes | None] = {}
                for record in batch:
                    if record.offset < stored_until:
                        continue
                    found = self._member_and_due(record)
                    if found is None:
                        unreadable += 1
                        continue
                    member, due_ms = found
                    if self._erased(member, due_ms):
                        erased += 1
                        continue
                    key = due_key(due_ms, record.offset, member)
                    if key in values or pending.response(partition, key) is not None:
                        continue  # stored, but a crash lost the stored-until offset after it
                    if member not in counts:
                        counts[member] = pending.pending_of(partition, member)
                    counts[member] += 1
                    served = self._served(record)
                    if served is not None:
                        values[served_key(member, due_ms, record.offset)] = served
                    values[key] = record.value or b""
                    new += 1
                for member, count in counts.items():
                    values[pending.count_key(member)] = str(count).encode()
                last = max(record.offset for record in batch) + 1
                if last > stored_until:
                    # Last: restored from the changelog, it comes with all it covers.
                    values[STORED_UNTIL_KEY] = stored_until_value(last)
                updates[partition] = values
            await pending.write(updates)
        self.metrics.responses.labels("stored").inc(new)
        if erased:
            self.metrics.responses.labels("erased").inc(erased)
        if unreadable:
            self.metrics.responses.labels("unreadable").inc(unreadable)
        return new

    @staticmethod
    def _served(record: KafkaRecord) -> bytes | None:
        """The ``v`` value of a logged response: its request time and the items it served.
        ``None`` for a record without them (one that cannot be labelled, or of an older
        shape): its response takes no credit from the member's earlier ones."""
        try:
            body = codec.loads(record.value or b"")
            return served_value(float(body["ts"]), [str(item) for item in body["ranked"]])
        except (ValueError, KeyError, TypeError):
            return None

    def _member_and_due(self, record: KafkaRecord) -> tuple[bytes, int] | None:
        # Records are keyed by member and stamped with the request time (whole ms): enough
        # to know when one is due without decoding it.
        if record.key and record.timestamp is not None and record.timestamp > 0:
            return record.key, record.timestamp + 1 + self.horizon_ms
        try:
            body = codec.loads(record.value or b"")
            member, ts = body["member_id"], float(body["ts"])
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(member, str) or not member:
            return None
        return member.encode(), int(ts * 1000) + 1 + self.horizon_ms

    # -- actions -----------------------------------------------------------------------

    async def record_reactions(
        self, events: Mapping[tuple[int, bytes], Sequence[tuple[str, str, str, float]]]
    ) -> None:
        """Keep the actions of members with pending responses, so every one is labelled.

        ``events``: per (partition, member) the valid actions of a batch as
        (event_id, item_id, action, ts). Idempotent: re-reads write the same keys.
        """
        by_partition: dict[int, list[bytes]] = {}
        for partition, member in events:
            by_partition.setdefault(partition, []).append(member)
        async with self.pending.write_lock:
            updates: dict[int, dict[bytes, bytes | None]] = {}
            for partition, members in by_partition.items():
                if not self.pending.owns(partition):
                    continue
                for member in self.pending.members_waiting(partition, members):
                    values = updates.setdefault(partition, {})
                    for event_id, item_id, action, ts in events[(partition, member)]:
                        if action in _LABELLING:  # a view labels nothing
                            values[reaction_key(member, ts, event_id)] = reaction_value(
                                item_id, action
                            )
            if updates:
                await self.pending.write(updates)

    # -- labelling ---------------------------------------------------------------------

    async def label_due(self) -> int:
        """Label every due response of the partitions owned here; returns how many."""
        labelled = 0
        for partition in self.pending.owned_partitions():
            while True:
                done, more = await self._label_partition(partition)
                labelled += done
                if not more:
                    break
        return labelled

    def oldest_due_seconds(self) -> float:
        """How far behind labelling is: seconds since the earliest pending response was due."""
        now_ms = self.clock() * 1000
        behind = 0.0
        for partition in self.pending.owned_partitions():
            due = self.pending.earliest_due_ms(partition)
            if due is not None:
                behind = max(behind, (now_ms - due) / 1000)
        return behind

    async def _label_partition(self, partition: int) -> tuple[int, bool]:
        """One pass over at most ``max_per_pass`` due responses: (labelled, more are due)."""
        pending = self.pending
        if pending.in_progress(partition) is not None:
            await self._resolve_cut_short(partition)
        due = pending.due(partition, int(self.clock() * 1000), self.max_per_pass)
        if not due:
            return 0, False
        end = await self.examples.end_offset(partition)
        marker = {"offset": end, "keys": [r.key.hex() for r in due]}
        async with pending.write_lock:
            await pending.write({partition: {IN_PROGRESS_KEY: codec.dumps(marker)}})

        sets: list[tuple[bytes, bytes]] = []
        unreadable = erased = 0
        # Per member with reactions, what its pending responses served: one scan a pass.
        served_at: dict[bytes, dict[str, list[float]]] = {}
        for n, response in enumerate(due, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a response costs ~0.1-0.5 ms: keep serving meanwhile
            member = response.member
            if self._erased(member, response.due_ms):
                erased += 1  # deleted with the others, and no example set
                continue
            try:
                actions = self._actions(partition, member)
                if member not in served_at and any(a[1] in _LABELLING for a in actions):
                    served_at[member] = pending.served_at(partition, member)
                example_set = label_response(
                    codec.loads(response.record),
                    actions,
                    self.horizon,
                    self.unlabeled_as,
                    served_at.get(member),
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "skipping a recommendations-log record that cannot be labelled: %s", exc
                )
                unreadable += 1
                continue
            if example_set is not None:
                sets.append((response.member, codec.dumps(example_set)))
                self.metrics.examples_written.inc(len(example_set["labels"]))
                if "experiment" in example_set:
                    self.metrics.count_arm_outcome(example_set["experiment"])
        if sets:
            await self.examples.send(partition, sets)
        if not pending.owns(partition):
            return 0, False  # revoked meanwhile: the new owner resolves the pass from its marker
        async with pending.write_lock:
            await pending.write({partition: self._deletions(partition, due)})
        self.metrics.responses.labels("labelled").inc(len(due) - unreadable - erased)
        if erased:
            self.metrics.responses.labels("erased").inc(erased)
        if unreadable:
            self.metrics.responses.labels("unreadable").inc(unreadable)
        return len(due), len(due) >= self.max_per_pass

    async def _resolve_cut_short(self, partition: int) -> None:
        """Settle a pass that was cut short: delete its responses whose sets were written.

        Its marker names its responses and the examples partition's end before it sent
        anything; a set written from there on carries its response's request id. The
        others stay pending and are labelled as any other.
        """
        pending = self.pending
        marker = codec.loads(pending.in_progress(partition) or b"{}")
        written = await self.examples.request_ids_since(partition, int(marker["offset"]))
        settled = []
        for key in marker["keys"]:
            response = pending.response(partition, bytes.fromhex(key))
            if response is None:
                continue  # deleted before the cut
            try:
                request_id = codec.loads(response.record)["request_id"]
            except (ValueError, KeyError, TypeError):
                continue  # unreadable: labelled (and skipped) as any other
            if request_id in written:
                settled.append(response)
        async with pending.write_lock:
            await pending.write({partition: self._deletions(partition, settled)})
        if settled:
            self.metrics.responses.labels("already_written").inc(len(settled))

    def _deletions(
        self, partition: int, responses: Sequence[DueResponse]
    ) -> dict[bytes, bytes | None]:
        """Writes that delete ``responses`` (labelled, earliest due first) and the marker.

        Also what they served, the members' counts, and their reactions that can no longer
        label anything: every response still pending was requested after these were.
        """
        if not responses:
            return {IN_PROGRESS_KEY: None}
        pending = self.pending
        updates: dict[bytes, bytes | None] = {}
        done_by_member: dict[bytes, int] = {}
        for response in responses:
            updates[response.served_key] = None  # before the response: see add
            updates[response.key] = None
            done_by_member[response.member] = done_by_member.get(response.member, 0) + 1
        cutoff_ms = max(r.due_ms for r in responses) - 1 - self.horizon_ms
        for member, done in done_by_member.items():
            left = pending.pending_of(partition, member) - done
            count_key = pending.count_key(member)
            if left > 0:
                updates[count_key] = str(left).encode()
                until: int | None = cutoff_ms
            else:
                updates[count_key] = None
                until = None
            for key in pending.reaction_keys(partition, member, until):
                updates[key] = None
        # The marker goes last. A broker whose end offset is the start of its last record
        # batch (the embedded one) lets recovery restore only part of a batch cut short by a
        # crash; a part without the marker's deletion leaves the marker to settle the rest.
        updates[IN_PROGRESS_KEY] = None
        return updates

    def _actions(self, partition: int, member: bytes) -> list[Reacted]:
        """The member's actions: the online store's recent ones and every recorded reaction."""
        state = self.store.load(partition, member)
        actions: list[Reacted] = (
            [(row[1], row[2], row[3]) for row in state.actions] if state is not None else []
        )
        actions += [(r.item_id, r.action, r.ts) for r in self.pending.reactions(partition, member)]
        return actions
