"""How the ingest agent sorts a batch: per-member groups, dead letters, drops."""

from __future__ import annotations

import time

from agents.ingest import SourceRecord, plan_batch
from app import codec
from app.kafka import partition_for_key
from app.settings import load_settings

SETTINGS = load_settings(actions_of_interest="click,apply")


def record(offset: int, member: str, action: str = "click", key: str | None = None) -> SourceRecord:
    now = time.time()
    value = codec.dumps(
        {"event_id": f"e{offset}", "member_id": member, "item_id": "i", "action": action, "ts": now}
    )
    k = (key or member).encode()
    return SourceRecord(partition_for_key(k, 4), offset, k, value)


def test_groups_by_member_in_offset_order_and_drops_uninteresting() -> None:
    records = [record(0, "a"), record(1, "b", "view"), record(2, "a", "apply"), record(3, "c")]
    plan = plan_batch(records, SETTINGS, now=time.time(), partitions=4)
    a = plan.by_member[(partition_for_key(b"a", 4), b"a")]
    assert [offset for offset, _ in a] == [0, 2]
    assert plan.not_of_interest == 1 and not plan.dead_letters
    assert len(plan.by_member) == 2


def test_wrong_key_and_wrong_partition_are_dead_letters() -> None:
    mismatched = record(0, "a", key="b")
    misplaced = SourceRecord((partition_for_key(b"a", 4) + 1) % 4, 1, b"a", record(1, "a").value)
    plan = plan_batch([mismatched, misplaced], SETTINGS, now=time.time(), partitions=4)
    assert [letter.reason for letter in plan.dead_letters] == ["key_mismatch", "wrong_partition"]
    assert not plan.by_member


def test_the_partitioner_matches_kafkas_default() -> None:
    # Reference values of the Java client's murmur2 partitioner (also aiokafka's).
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"member-1", b"m42", b"\xff\x00"):
        assert partition_for_key(key, 12) == DefaultPartitioner()(
            key, list(range(12)), list(range(12))
        )
