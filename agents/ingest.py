"""The ingest agent: validate member actions, keep those of interest, apply them in batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agents.events import ActionEvent, InvalidEvent, parse_action
from app.kafka import partition_for_key
from app.metrics import Metrics
from app.settings import Settings
from tables.member_state import Applied, MemberState, RecentAction
from tables.online_store import OnlineStore

__all__ = ["BatchPlan", "DeadLetter", "IngestProcessor", "SourceRecord", "plan_batch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """What ingest needs of one Kafka record."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: SourceRecord
    reason: str
    detail: str


@dataclass(slots=True)
class BatchPlan:
    """A batch sorted out: valid events per member (in offset order), dead letters, drops."""

    by_member: dict[tuple[int, bytes], list[tuple[int, ActionEvent]]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    not_of_interest: int = 0


def plan_batch(
    records: Iterable[SourceRecord], settings: Settings, *, now: float, partitions: int
) -> BatchPlan:
    """Validate and group a batch; pure, so every rule is testable without a broker."""
    plan = BatchPlan()
    interesting = frozenset(settings.actions_of_interest)
    for record in records:
        try:
            event = parse_action(
                record.value,
                now=now,
                max_bytes=settings.max_event_bytes,
                retention=settings.retention,
                max_future_skew=settings.max_future_skew,
            )
            key = event.member_id.encode()
            if record.key != key:
                raise InvalidEvent(
                    "key_mismatch",
                    f"record key {record.key!r} is not the member_id {event.member_id!r}; "
                    "key every action by its member id",
                )
            expected = partition_for_key(key, partitions)
            if record.partition != expected:
                raise InvalidEvent(
                    "wrong_partition",
                    f"member {event.member_id!r} belongs in partition {expected}, not "
                    f"{record.partition}; produce with Kafka's default partitioner",
                )
        except InvalidEvent as exc:
            plan.dead_letters.append(DeadLetter(record, exc.reason, exc.detail))
            continue
        if event.action not in interesting:
            plan.not_of_interest += 1
            continue
        plan.by_member.setdefault((record.partition, key), []).append((record.offset, event))
    return plan


SendDeadLetters = Callable[[Sequence[DeadLetter]], Awaitable[None]]


class IngestProcessor:
    """Applies batches of records to the online store; the Faust agent only feeds it."""

    def __init__(
        self,
        store: OnlineStore,
        settings: Settings,
        metrics: Metrics,
        send_dead_letters: SendDeadLetters,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.send_dead_letters = send_dead_letters
        self.clock = clock
        self.next_offsets: dict[int, int] = {}  # per source partition, for the lag gauge

    async def process(self, records: Sequence[SourceRecord]) -> BatchPlan:
        started = time.perf_counter()
        now = self.clock()
        plan = plan_batch(records, self.settings, now=now, partitions=self.store.partitions)
        self.metrics.events_in.inc(len(records))
        if plan.not_of_interest:
            self.metrics.events_dropped.labels("not_of_interest").inc(plan.not_of_interest)
        outcomes = {Applied.APPLIED: 0, Applied.REPLAYED: 0, Applied.DUPLICATE: 0}
        policy = self.store.policy
        async with self.store.write_lock:
            updates: dict[int, dict[bytes, MemberState | None]] = {}
            for (partition, key), events in plan.by_member.items():
                state = self.store.load(partition, key) or MemberState()
                changed = False
                for offset, event in events:
                    outcome = state.apply(
                        RecentAction(
                            event.event_id,
                            event.item_id,
                            event.action,
                            event.ts,
                            dict(event.attributes),
                        ),
                        offset=offset,
                        applied_at=now,
                        policy=policy,
                    )
                    outcomes[outcome] += 1
                    changed = changed or outcome is not Applied.REPLAYED
                if changed:
                    state.prune(now, policy)
                    updates.setdefault(partition, {})[key] = state
            await self.store.write(updates)
        if plan.dead_letters:
            await self.send_dead_letters(plan.dead_letters)
            for letter in plan.dead_letters:
                self.metrics.events_dead_lettered.labels(letter.reason).inc()
        self.metrics.events_applied.inc(outcomes[Applied.APPLIED])
        for outcome in (Applied.REPLAYED, Applied.DUPLICATE):
            if outcomes[outcome]:
                self.metrics.events_dropped.labels(outcome.value).inc(outcomes[outcome])
        for record in records:
            self.next_offsets[record.partition] = max(
                record.offset + 1, self.next_offsets.get(record.partition, 0)
            )
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return plan
