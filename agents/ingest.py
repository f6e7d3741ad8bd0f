"""The ingest agent: validate member actions, keep those of interest, apply them in batches.

An action read on another partition than its key's (a producer with another partitioner,
e.g. librdkafka's default CRC32) is valid: it is forwarded, unchanged, to the repartition
topic at its owner's partition, and applied when the owner reads it there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nearline.agents.events import ActionEvent, InvalidEvent, parse_action
from nearline.attribute_store import AttributeStore, StoreUnavailable, ingest_fields
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.metrics import Metrics
from nearline.tables.member_state import Applied, MemberState, RecentAction, Source
from nearline.tables.online_store import OnlineStore

__all__ = [
    "BatchPlan",
    "DeadLetter",
    "IngestProcessor",
    "IngestRules",
    "KafkaRecord",
    "SourceRecord",
    "plan_batch",
]

log = logging.getLogger(__name__)

#: Records parsed, or members updated, between two yields to the event loop: a few
#: milliseconds of work, so a request waits at most that long behind a large batch.
_YIELD_EVERY = 500


class KafkaRecord(Protocol):
    """What ingest needs of one Kafka record (aiokafka's ConsumerRecord has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # milliseconds; negative when the record has none
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A :class:`KafkaRecord` built by hand (tests, tools)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    topic: str = "member-actions"
    timestamp: int = -1
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
class IngestRules:
    """What an action is checked against, and where it can be read from.

    The few settings ingest reads, unpacked by the composition root (app/compose.py), so
    this layer and its tests never need a whole configuration.
    """

    actions_of_interest: frozenset[str]
    topic_actions: str
    topic_repartition: str
    max_event_bytes: int
    retention: float  # older actions are invalid
    max_future_skew: float  # actions further ahead of the clock are invalid
    ts_from_record: bool  # an action without ``ts`` takes its record's timestamp


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: KafkaRecord
    reason: str
    detail: str


#: One valid event of a member: where it was read (a :class:`Source` as a plain int, and
#: the offset) and what it is.
PlannedEvent = tuple[int, int, ActionEvent]


@dataclass(slots=True)
class BatchPlan:
    """A batch sorted out: valid events per member (in offset order per source), records
    to repartition (with the member id as key) by their owner's partition, dead letters,
    drops."""

    by_member: dict[tuple[int, bytes], list[PlannedEvent]] = field(default_factory=dict)
    forwards: dict[int, list[tuple[bytes, KafkaRecord]]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    not_of_interest: int = 0
    erased: int = 0  # events of erased members, at or before their erasure

    @property
    def forwarded(self) -> int:
        return sum(map(len, self.forwards.values()))


def plan_batch(
    records: Iterable[KafkaRecord],
    rules: IngestRules,
    *,
    now: float,
    partitions: int,
    into: BatchPlan | None = None,
    erased: Mapping[str, float] | None = None,
) -> BatchPlan:
    """Validate and group a batch of the actions and repartition topics, adding to ``into``.

    ``erased``: member id → erasure time; a member's events at or before it are counted
    in ``plan.erased`` and go no further (neither applied nor forwarded).

    Pure, so every rule is testable without a broker.
    """
    plan = BatchPlan() if into is None else into
    interesting = rules.actions_of_interest
    # Plain ints, not the enum members: a tuple holding only ints and events (gc=False
    # structs) is left alone by the cyclic GC; with an enum member in it, 100k tuples per
    # batch were tracked and made planning ~1.5 µs per action slower.
    sources = {
        rules.topic_actions: int(Source.ACTIONS),
        rules.topic_repartition: int(Source.REPARTITION),
    }
    from_record = rules.ts_from_record
    for record in records:
        try:
            event = parse_action(
                record.value,
                now=now,
                max_bytes=rules.max_event_bytes,
                retention=rules.retention,
                max_future_skew=rules.max_future_skew,
                record_timestamp_ms=record.timestamp if from_record else None,
            )
            key = event.member_id.encode()
            # No key at all (a producer's default) is no contradiction: the member id is it.
            if record.key != key and record.key is not None:
                raise InvalidEvent(
                    "key_mismatch",
                    f"record key {record.key!r} is not the member_id {event.member_id!r}; "
                    "key every action by its member id (or send it without a key)",
                )
            source = sources[record.topic]
            owner = partition_for_key(key, partitions)
            if record.partition != owner and source == Source.REPARTITION:
                # Forwards go to the owner's partition; this one was written with another
                # partition count, and forwarding it again could go round for ever.
                raise InvalidEvent(
                    "wrong_partition",
                    f"member {event.member_id!r} belongs in partition {owner} of "
                    f"{record.topic}, not {record.partition}: the topic was written with "
                    "another partition count; give it NEARLINE_TOPIC_PARTITIONS partitions",
                )
        except InvalidEvent as exc:
            plan.dead_letters.append(DeadLetter(record, exc.reason, exc.detail))
            continue
        if event.action not in interesting:
            plan.not_of_interest += 1
            continue
        if erased:
            at = erased.get(event.member_id)
            if at is not None and event.ts <= at:
                plan.erased += 1
                continue
        if record.partition != owner:
            plan.forwards.setdefault(owner, []).append((key, record))
            continue
        plan.by_member.setdefault((owner, key), []).append((source, record.offset, event))
    return plan


Reaction = tuple[str, str, str, float]


class _Reactions(Mapping[tuple[int, bytes], list[Reaction]]):
    """A batch's valid actions per (partition, member) as (event_id, item_id, action, ts),
    built only for the members looked up: few have responses pending."""

    def __init__(self, by_member: Mapping[tuple[int, bytes], list[PlannedEvent]]) -> None:
        self._by_member = by_member

    def __getitem__(self, member: tuple[int, bytes]) -> list[Reaction]:
        return [(e.event_id, e.item_id, e.action, e.ts) for _, _, e in self._by_member[member]]

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return iter(self._by_member)

    def __len__(self) -> int:
        return len(self._by_member)


SendDeadLetters = Callable[[Sequence[DeadLetter]], Awaitable[None]]
#: Told every valid action of a batch, per (partition, member): (event_id, item_id, action, ts).
RecordReactions = Callable[[Mapping[tuple[int, bytes], list[Reaction]]], Awaitable[None]]
#: Sends records to the given partitions of the repartition topic, keyed by the given key
#: (the member id) and otherwise unchanged; returns once the broker has acknowledged all.
SendRepartitioned = Callable[[Mapping[int, Sequence[tuple[bytes, KafkaRecord]]]], Awaitable[None]]


class IngestProcessor:
    """Applies batches of records to the online store; the Faust agent only feeds it."""

    def __init__(
        self,
        store: OnlineStore,
        rules: IngestRules,
        metrics: Metrics,
        send_dead_letters: SendDeadLetters,
        send_repartitioned: SendRepartitioned,
        *,
        attributes: AttributeStore | None = None,
        ingest_fields: Sequence[str] = (),
        record_reactions: RecordReactions | None = None,
        erased: Mapping[str, float] | None = None,
        join_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.rules = rules
        self.metrics = metrics
        self.send_dead_letters = send_dead_letters
        self.send_repartitioned = send_repartitioned
        self.attributes = attributes
        self.ingest_fields = tuple(ingest_fields) if attributes is not None else ()
        self.record_reactions = record_reactions
        #: Member id → erasure time (the worker's ErasureLog keeps it current).
        self.erased = erased
        self.join_timeout = join_timeout
        self.clock = clock

    async def apply(
        self, records: Sequence[KafkaRecord], *, current: Callable[[], bool] = lambda: True
    ) -> tuple[BatchPlan, Awaitable[None]]:
        """Apply a batch; returns its plan and what to await before committing its offsets.

        Every write but the online store's changelog is acknowledged on return (forwards,
        dead letters, reactions). The online store's acknowledgement is left to the caller,
        so the next batch can be applied while the broker acknowledges this one.
        ``current`` says whether the batch's fetch is still current: once a rebalance or a
        shutdown has begun, the batch writes no member state (see :meth:`OnlineStore.send`).
        """
        started = time.perf_counter()
        now = self.clock()
        plan = BatchPlan()
        for start in range(0, len(records), _YIELD_EVERY):
            chunk = records[start : start + _YIELD_EVERY]
            plan_batch(
                chunk,
                self.rules,
                now=now,
                partitions=self.store.partitions,
                into=plan,
                erased=self.erased,
            )
            await asyncio.sleep(0)  # a large batch must not stall the web app
        if plan.not_of_interest:
            self.metrics.events_dropped.labels("not_of_interest").inc(plan.not_of_interest)
        if plan.erased:
            self.metrics.events_dropped.labels("erased").inc(plan.erased)
        # Sent while this batch is applied; awaited before returning, because the caller
        # acknowledges the source offsets then: a crash before the broker has them re-reads
        # them, and a forward sent twice that way is a repeated event id, counted once.
        forwarding = (
            asyncio.ensure_future(self.send_repartitioned(plan.forwards)) if plan.forwards else None
        )
        outcomes = {Applied.APPLIED: 0, Applied.REPLAYED: 0, Applied.DUPLICATE: 0}
        policy = self.store.policy
        joined = await self._attributes_at_ingest(plan)
        joining = bool(self.ingest_fields)
        async with self.store.write_lock:
            updates: dict[int, dict[bytes, MemberState]] = {}
            for n, ((partition, key), events) in enumerate(plan.by_member.items(), 1):
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # reads meanwhile see the states before the batch
                state = self.store.load(partition, key) or MemberState()
                changed = False
                for source, offset, event in events:
                    attributes = dict(event.attributes)
                    found = joined.get(event.item_id) if joined is not None else None
                    if found is not None:
                        attributes.update(found)
                    outcome = state.apply(
                        RecentAction(
                            event.event_id,
                            event.item_id,
                            event.action,
                            event.ts,
                            attributes,
                            (found is not None) if joining else None,
                        ),
                        offset=offset,
                        applied_at=now,
                        policy=policy,
                        source=source,
                    )
                    outcomes[outcome] += 1
                    changed = changed or outcome is not Applied.REPLAYED
                if changed:
                    state.prune(now, policy)
                    updates.setdefault(partition, {})[key] = state
            acknowledged = await self.store.send(updates, current=current)
        if self.record_reactions is not None and plan.by_member:
            # Every valid action, whatever apply() said of it: a re-read after a crash must
            # still reach the outcomes join, and its writes are idempotent.
            await self.record_reactions(_Reactions(plan.by_member))
        if plan.dead_letters:
            await self.send_dead_letters(plan.dead_letters)
            for letter in plan.dead_letters:
                self.metrics.events_dead_lettered.labels(letter.reason).inc()
        forwarded = plan.forwarded
        if forwarding is not None:
            await forwarding
            self.metrics.events_repartitioned.inc(forwarded)
        # Counted once handled, so "events in" reaching N means N records are applied; a
        # repartitioned record is handled when its owner reads it from the repartition topic.
        self.metrics.events_in.inc(len(records) - forwarded)
        self.metrics.events_applied.inc(outcomes[Applied.APPLIED])
        for outcome in (Applied.REPLAYED, Applied.DUPLICATE):
            if outcomes[outcome]:
                self.metrics.events_dropped.labels(outcome.value).inc(outcomes[outcome])
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return plan, acknowledged

    async def _attributes_at_ingest(self, plan: BatchPlan) -> dict[str, dict[str, Any]] | None:
        """Ingest-time fields of every item in the batch, in one store read.

        ``None`` when the store could not answer: the actions are stored unjoined, and the
        read path fills them in once the store is back.
        """
        if not self.ingest_fields or self.attributes is None:
            return {}
        items = {event.item_id for events in plan.by_member.values() for _, _, event in events}
        if not items:
            return {}
        try:
            records = await asyncio.wait_for(self.attributes.get_many(items), self.join_timeout)
        except (StoreUnavailable, TimeoutError) as exc:
            self.metrics.attribute_joins.labels("store_unavailable").inc(len(items))
            log.warning("attribute store unavailable at ingest (%s); storing unjoined", exc)
            return None
        joined = ingest_fields(records, self.ingest_fields)
        self.metrics.attribute_joins.labels("joined").inc(len(joined))
        if len(joined) < len(items):
            self.metrics.attribute_joins.labels("item_unknown").inc(len(items) - len(joined))
        return joined
