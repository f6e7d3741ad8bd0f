"""The ingest processor's contract with its caller: a batch is done only once forwards are.

The store is the online store on real RocksDB without a changelog (its changelog path runs
in tests/integration), and the repartition sender is one whose broker acknowledgement the
test releases, so the order of events can be checked without a broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nearline.agents.ingest import IngestProcessor, KafkaRecord, SourceRecord
from nearline.app.compose import ingest_rules, state_policy
from nearline.attribute_store import ItemAttributes, join_at_read
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.metrics import Metrics
from nearline.foundation.settings import load_settings
from nearline.tables.changelog import LocalTable
from nearline.tables.online_store import OnlineStore
from tests.unit.attribute_store.conftest import RecordingStore, item

SETTINGS = load_settings(actions_of_interest="click")
ATTRS = {"j1": item("j1", company="acme"), "j2": ItemAttributes("j2", attributes={"company": "b"})}


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
    store = OnlineStore(table, state_policy(SETTINGS), 4)  # type: ignore[arg-type]
    acknowledged = asyncio.Event()
    Forwards = Mapping[int, Sequence[tuple[bytes, KafkaRecord]]]
    sent: list[Forwards] = []

    async def send_repartitioned(forwards: Forwards) -> None:
        sent.append(forwards)
        await acknowledged.wait()  # the broker's acknowledgement, when the test says so

    async def send_dead_letters(letters: object) -> None:
        raise AssertionError(f"nothing here is a dead letter: {letters}")

    processor = IngestProcessor(
        store, ingest_rules(SETTINGS), metrics, send_dead_letters, send_repartitioned
    )
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


# -- the ingest-time join: attributes copied into each action as it is applied --------------


async def _ingest_with_attributes(
    tmp_path: Path, store_fails: bool, fields: tuple[str, ...]
) -> tuple[list[dict[str, Any]], Metrics]:
    """Apply one action on each of j1, j2 and an unknown item; the member's stored actions."""
    metrics = Metrics()
    table = LocalTable(str(tmp_path / "members"), 4)
    store = OnlineStore(table, state_policy(SETTINGS), 4)  # type: ignore[arg-type]
    attributes = RecordingStore()
    await attributes.put_many([ATTRS["j1"], ATTRS["j2"]])
    attributes.fail = store_fails

    async def refuse(sent: object) -> None:
        raise AssertionError(f"nothing here is forwarded or dead-lettered: {sent}")

    processor = IngestProcessor(
        store,
        ingest_rules(SETTINGS),
        metrics,
        refuse,
        refuse,
        attributes=attributes,
        ingest_fields=fields,
    )
    owner = partition_for_key(b"m", 4)
    batch = [
        SourceRecord(owner, n, b"m", codec.dumps(action), "member-actions", int(time.time() * 1000))
        for n, action in enumerate(
            {
                "event_id": f"e{n}",
                "member_id": "m",
                "item_id": item_id,
                "action": "click",
                "ts": time.time() - 10 + n,
                "attributes": {"source": "feed"},
            }
            for n, item_id in enumerate(("j1", "j2", "nope"))
        )
    ]
    _, stored = await processor.apply(batch)
    await stored
    assert len(attributes.reads) == (1 if fields else 0)  # one read for the whole batch
    actions = store.features("m", time.time())["recent_actions"]
    return sorted(actions, key=lambda action: action["event_id"]), metrics


def test_ingest_copies_only_the_configured_fields_of_each_found_item(tmp_path: Path) -> None:
    (j1, j2, unknown), metrics = asyncio.run(
        _ingest_with_attributes(tmp_path, False, ("geo", "category", "company"))
    )
    assert j1["joined"] is True
    assert j1["attributes"] == {
        "source": "feed",
        "geo": {"lat": 52.52, "lon": 13.405, "region": "Berlin"},
        "category": "engineering",
        "company": "acme",
    }
    assert "embedding" not in j1["attributes"]
    # An item without one of the fields (no geo) is still joined: nothing more to copy later.
    assert j2["joined"] is True and j2["attributes"] == {"source": "feed", "company": "b"}
    assert unknown["joined"] is False and unknown["attributes"] == {"source": "feed"}
    joins = "nearline_attribute_joins_total"
    assert metrics.registry.get_sample_value(joins, {"outcome": "joined"}) == 2
    assert metrics.registry.get_sample_value(joins, {"outcome": "item_unknown"}) == 1


def test_an_unavailable_store_stores_actions_unjoined_and_the_read_catches_them_up(
    tmp_path: Path,
) -> None:
    fields = ("geo", "category")
    stored, metrics = asyncio.run(_ingest_with_attributes(tmp_path, True, fields))
    assert [action["joined"] for action in stored] == [False, False, False]
    assert all(action["attributes"] == {"source": "feed"} for action in stored)
    unavailable = {"outcome": "store_unavailable"}
    assert metrics.registry.get_sample_value("nearline_attribute_joins_total", unavailable) == 3
    j1, j2, unknown = join_at_read(stored, ATTRS, ["embedding"], catch_up=fields)
    assert j1["attributes"]["geo"]["region"] == "Berlin" and j1["missing"] == []
    assert j1["joined"] is False  # still records what happened at ingest
    # j2 has none of these fields; the unknown item, nothing at all.
    assert j2["missing"] == unknown["missing"] == ["embedding", "geo", "category"]


def test_without_ingest_fields_nothing_is_joined_or_flagged(tmp_path: Path) -> None:
    stored, _ = asyncio.run(_ingest_with_attributes(tmp_path, False, ()))
    assert [action.get("joined") for action in stored] == [None, None, None]
    assert all(action["attributes"] == {"source": "feed"} for action in stored)
