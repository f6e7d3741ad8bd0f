"""How the ingest agent sorts a batch: per-member groups, dead letters, drops."""

from __future__ import annotations

import time

from nearline.agents.ingest import SourceRecord, plan_batch
from nearline.app.compose import ingest_rules
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.settings import load_settings
from nearline.tables.member_state import Source

RULES = ingest_rules(load_settings(actions_of_interest="click,apply"))
REPARTITION = RULES.topic_repartition


def record(offset: int, member: str, action: str = "click", key: str | None = None) -> SourceRecord:
    now = time.time()
    value = codec.dumps(
        {"event_id": f"e{offset}", "member_id": member, "item_id": "i", "action": action, "ts": now}
    )
    k = (key or member).encode()
    return SourceRecord(partition_for_key(k, 4), offset, k, value)


def test_groups_by_member_in_offset_order_and_drops_uninteresting() -> None:
    records = [record(0, "a"), record(1, "b", "view"), record(2, "a", "apply"), record(3, "c")]
    plan = plan_batch(records, RULES, now=time.time(), partitions=4)
    a = plan.by_member[(partition_for_key(b"a", 4), b"a")]
    assert [(source, offset) for source, offset, _ in a] == [
        (Source.ACTIONS, 0),
        (Source.ACTIONS, 2),
    ]
    assert plan.not_of_interest == 1 and not plan.dead_letters
    assert len(plan.by_member) == 2


def test_a_wrong_key_is_a_dead_letter() -> None:
    plan = plan_batch([record(0, "a", key="b")], RULES, now=time.time(), partitions=4)
    assert [letter.reason for letter in plan.dead_letters] == ["key_mismatch"]
    assert not plan.by_member and not plan.forwards


def test_a_valid_action_on_another_partition_is_forwarded_to_its_owner() -> None:
    owner = partition_for_key(b"a", 4)
    headers = [("trace", b"1")]
    misplaced = SourceRecord(
        (owner + 1) % 4, 1, b"a", record(1, "a").value, timestamp=5, headers=headers
    )
    uninteresting = SourceRecord((owner + 1) % 4, 2, b"a", record(2, "a", "view").value)
    plan = plan_batch([misplaced, uninteresting], RULES, now=time.time(), partitions=4)
    # The record itself (value, timestamp, headers), keyed by its member.
    assert plan.forwards == {owner: [(b"a", misplaced)]}
    assert plan.forwarded == 1
    assert not plan.dead_letters and not plan.by_member
    assert plan.not_of_interest == 1  # not worth forwarding


def test_an_action_without_a_key_is_keyed_by_its_member() -> None:
    owner = partition_for_key(b"a", 4)
    here = SourceRecord(owner, 0, None, record(0, "a").value)
    elsewhere = SourceRecord((owner + 1) % 4, 1, None, record(1, "a").value)
    plan = plan_batch([here, elsewhere], RULES, now=time.time(), partitions=4)
    assert [offset for _, offset, _ in plan.by_member[(owner, b"a")]] == [0]
    assert plan.forwards == {owner: [(b"a", elsewhere)]}
    assert not plan.dead_letters


def test_the_repartition_topic_is_a_source_of_its_own() -> None:
    owner = partition_for_key(b"a", 4)
    direct = record(7, "a")
    forwarded = SourceRecord(owner, 7, b"a", record(3, "a").value, topic=REPARTITION)
    plan = plan_batch([direct, forwarded], RULES, now=time.time(), partitions=4)
    events = plan.by_member[(owner, b"a")]
    assert [(source, offset) for source, offset, _ in events] == [
        (Source.ACTIONS, 7),
        (Source.REPARTITION, 7),
    ]


def test_a_misplaced_record_of_the_repartition_topic_is_a_dead_letter_not_a_loop() -> None:
    owner = partition_for_key(b"a", 4)
    stray = SourceRecord((owner + 1) % 4, 0, b"a", record(0, "a").value, topic=REPARTITION)
    plan = plan_batch([stray], RULES, now=time.time(), partitions=4)
    assert [letter.reason for letter in plan.dead_letters] == ["wrong_partition"]
    assert "NEARLINE_TOPIC_PARTITIONS" in plan.dead_letters[0].detail
    assert not plan.forwards


def test_a_missing_ts_takes_the_record_timestamp_if_the_settings_allow() -> None:
    now = time.time()
    value = codec.dumps({"event_id": "e", "member_id": "a", "item_id": "i", "action": "click"})
    untimed = SourceRecord(partition_for_key(b"a", 4), 0, b"a", value, timestamp=int(now * 1000))
    plan = plan_batch([untimed], RULES, now=now, partitions=4)
    [(_, _, event)] = plan.by_member[(untimed.partition, b"a")]
    assert event.ts == int(now * 1000) / 1000
    strict = ingest_rules(load_settings(actions_of_interest="click", ts_from_record=False))
    plan = plan_batch([untimed], strict, now=now, partitions=4)
    assert [letter.reason for letter in plan.dead_letters] == ["missing_field"]


def test_the_partitioner_matches_kafkas_default() -> None:
    # Reference values of the Java client's murmur2 partitioner (also aiokafka's).
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"member-1", b"m42", b"\xff\x00"):
        assert partition_for_key(key, 12) == DefaultPartitioner()(
            key, list(range(12)), list(range(12))
        )


def test_an_erased_members_events_up_to_the_erasure_are_counted_and_go_no_further() -> None:
    now = time.time()

    def at(offset: int, member: str, ts: float, *, elsewhere: bool = False) -> SourceRecord:
        value = codec.dumps(
            {
                "event_id": f"e{offset}",
                "member_id": member,
                "item_id": "i",
                "action": "click",
                "ts": ts,
            }
        )
        owner = partition_for_key(member.encode(), 4)
        return SourceRecord((owner + 1) % 4 if elsewhere else owner, offset, member.encode(), value)

    records = [
        at(0, "gone", now - 10),
        at(1, "gone", now - 5, elsewhere=True),  # not forwarded either
        at(2, "gone", now - 2),  # at the erasure: erased too
        at(3, "gone", now - 1),  # after it: a new start
        at(4, "kept", now - 10),
    ]
    plan = plan_batch(records, RULES, now=now, partitions=4, erased={"gone": now - 2})
    assert plan.erased == 3 and not plan.forwards
    gone = plan.by_member[(partition_for_key(b"gone", 4), b"gone")]
    assert [offset for _, offset, _ in gone] == [3]
    assert (partition_for_key(b"kept", 4), b"kept") in plan.by_member
