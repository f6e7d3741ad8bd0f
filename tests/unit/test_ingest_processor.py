"""The ingest processor's contract with its caller: a batch is done only once forwards are.

The store is the online store on real RocksDB without a changelog (its changelog path runs
in tests/integration), and the repartition sender is one whose broker acknowledgement the
test releases, so the order of events can be checked without a broker.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nearline.agents.ingest import IngestProcessor, SourceRecord
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.metrics import Metrics
from nearline.foundation.settings import load_settings
from nearline.tables.changelog import LocalTable
from nearline.tables.member_state import StatePolicy
from nearline.tables.online_store import OnlineStore

SETTINGS = load_settings(actions_of_interest="click")


def record(
    offset: int, member: str, *, misplaced: bool, topic: str = "member-actions"
) -> SourceRecord:
    key = member.encode()
    owner = partition_for_key(key, 4)
    value = codec.dumps(
        {"event_id": f"e{offset}", "member_id": member, "item_id": "i", "action": "click"}
    )
    partition = (owner + 1) % 4 if misplaced else owner
    return SourceRecord(partition, offset, key, value, topic, int(time.time() * 1000))


async def _forwarded_then_applied(tmp_path: Path) -> None:
    metrics = Metrics()
    table = LocalTable(str(tmp_path / "members"), 4)
    store = OnlineStore(table, StatePolicy.from_settings(SETTINGS), 4)  # type: ignore[arg-type]
    acknowledged = asyncio.Event()
    sent: list[dict[int, list[tuple[bytes, SourceRecord]]]] = []

    async def send_repartitioned(forwards: dict[int, list[tuple[bytes, SourceRecord]]]) -> None:
        sent.append(forwards)
        await acknowledged.wait()  # the broker's acknowledgement, when the test says so

    async def send_dead_letters(letters: object) -> None:
        raise AssertionError(f"nothing here is a dead letter: {letters}")

    processor = IngestProcessor(store, SETTINGS, metrics, send_dead_letters, send_repartitioned)  # type: ignore[arg-type]
    batch = [record(0, "a", misplaced=True), record(1, "b", misplaced=False)]
    processing = asyncio.ensure_future(processor.apply(batch))
    for _ in range(20):
        await asyncio.sleep(0)
    # The direct action is applied, the misplaced one is on its way, and the batch is not
    # done (its offsets cannot be acknowledged) until the broker has the forward.
    assert not processing.done()
    assert sent == [{partition_for_key(b"a", 4): [(b"a", batch[0])]}]
    assert store.load(partition_for_key(b"b", 4), b"b") is not None
    assert store.load(partition_for_key(b"a", 4), b"a") is None
    acknowledged.set()
    plan, stored = await processing
    await stored
    assert plan.forwarded == 1

    def value(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert value("nearline_events_repartitioned_total") == 1
    assert value("nearline_events_in_total") == 1  # the forward counts once its owner has it

    # Read back from the repartition topic by the owner: applied; forwarded twice (a crash
    # between the send and the commit): counted once.
    again = record(0, "a", misplaced=False, topic=SETTINGS.topic_repartition)
    twice = SourceRecord(again.partition, 1, again.key, again.value, again.topic, again.timestamp)
    _, stored = await processor.apply([again, twice])
    await stored
    state = store.load(again.partition, b"a")
    assert state is not None and [a.event_id for a in state.recent_actions(store.policy)] == ["e0"]
    assert value("nearline_events_applied_total") == 2
    assert (
        metrics.registry.get_sample_value("nearline_events_dropped_total", {"reason": "duplicate"})
        == 1
    )
    assert value("nearline_events_in_total") == 3


def test_a_batch_is_done_only_once_its_forwards_are_acknowledged(tmp_path: Path) -> None:
    asyncio.run(_forwarded_then_applied(tmp_path))
