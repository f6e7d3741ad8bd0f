"""The outcomes join: responses wait in RocksDB for their horizon, then become one example set each.

These run the join's logic against real RocksDB partitions, without a broker: the table's
changelog writes, recovery and the training-examples topic are exercised by
tests/integration/test_outcomes.py; here the examples topic is a list.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rocksdict

from nearline.agents.outcomes import OutcomeJoiner, label_response
from nearline.foundation import codec
from nearline.foundation.metrics import Metrics
from nearline.model.feature_log import decode_matrix, log_record
from nearline.tables.changelog import ChangelogTable, RawUpdates
from nearline.tables.pending import STORED_UNTIL_KEY, PendingResponses

NOW = 1_764_384_000.0
HORIZON = 60.0


class LocalTable(ChangelogTable):
    """A ChangelogTable over local RocksDB partitions, without the changelog producer."""

    def __init__(self, path: Path, partitions: int = 2) -> None:
        self.write_lock = asyncio.Lock()
        self.on_local_write = None
        self._dbs = {
            p: rocksdict.Rdict(str(path / f"p{p}"), options=rocksdict.Options(raw_mode=True))
            for p in range(partitions)
        }
        self.revoked: set[int] = set()

    def db(self, partition: int) -> rocksdict.Rdict:
        return self._dbs[partition]

    def owns(self, partition: int) -> bool:
        return partition not in self.revoked

    def owned_partitions(self) -> list[int]:
        return [p for p in sorted(self._dbs) if p not in self.revoked]

    async def write(self, updates: RawUpdates) -> None:
        for partition, values in updates.items():
            self.write_locally(partition, values)


@dataclass
class State:
    actions: list[list[Any]]


@dataclass
class Store:
    actions: dict[str, list[list[Any]]] = field(default_factory=dict)

    def load(self, partition: int, key: bytes) -> State | None:
        found = self.actions.get(key.decode())
        return State(found) if found is not None else None


@dataclass
class ExamplesTopic:
    """The training-examples topic, a list per partition; ``fail_after_send`` fails after one."""

    records: dict[int, list[bytes]] = field(default_factory=dict)
    fail_after_send: bool = False

    async def end_offset(self, partition: int) -> int:
        return len(self.records.get(partition, []))

    async def request_ids_since(self, partition: int, offset: int) -> set[str]:
        return {codec.loads(v)["request_id"] for v in self.records.get(partition, [])[offset:]}

    async def send(self, partition: int, records: Any) -> None:
        self.records.setdefault(partition, []).extend(value for _, value in records)
        if self.fail_after_send:
            raise ConnectionError("the worker died right after the examples were written")

    def sets(self) -> list[dict[str, Any]]:
        return [codec.loads(v) for values in self.records.values() for v in values]


@dataclass
class LogRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None


def logged(
    request_id: str,
    member: str,
    ts: float,
    items: list[str],
    served: list[str] | None = None,
    arm: str | None = None,
) -> bytes:
    """A logged response; ``served``: the items shown (all of ``items`` if ``None``)."""
    matrix = np.arange(len(items) * 2, dtype=np.float32).reshape(len(items), 2)
    record = log_record(
        request_id=request_id,
        member_id=member,
        ts=ts,
        features_as_of=ts,
        model_version="v",
        feature_names=["a", "b"],
        item_ids=items,
        matrix=matrix,
        ranked=items if served is None else served,
        context={},
        experiment=None if arm is None else {"id": "e1", "arm": arm},
    )
    return codec.dumps(record)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(tmp_path: Path) -> LocalTable:
    return LocalTable(tmp_path)


def state_keys(table: LocalTable, partition: int = 0) -> list[bytes]:
    """The keys of a partition's state but its stored-until offset, which stays."""
    return [key for key in table.db(partition).keys() if key != STORED_UNTIL_KEY]


def joiner_with(
    table: LocalTable, store: Store, topic: ExamplesTopic, unlabeled_as: str = "negative"
) -> tuple[OutcomeJoiner, Clock]:
    clock = Clock()
    joiner = OutcomeJoiner(
        PendingResponses(table),
        store,  # type: ignore[arg-type]
        topic,
        Metrics(),
        horizon=HORIZON,
        unlabeled_as=unlabeled_as,
        max_per_pass=3,
        clock=clock,
    )
    return joiner, clock


def record(
    offset: int,
    member: str,
    ts: float,
    items: list[str],
    partition: int = 0,
    served: list[str] | None = None,
) -> LogRecord:
    value = logged(f"r{offset}", member, ts, items, served)
    return LogRecord(partition, offset, member.encode(), value, int(ts * 1000))


def test_a_response_is_labelled_once_its_horizon_has_passed(table: LocalTable) -> None:
    store = Store({"m1": [["e1", "x", "apply", NOW + 5, None, None]]})
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, store, topic)

    async def run() -> None:
        assert await joiner.add([record(0, "m1", NOW, ["x", "y"])]) == 1
        clock.now = NOW + HORIZON - 1
        assert await joiner.label_due() == 0 and topic.sets() == []
        clock.now = NOW + HORIZON + 1
        assert await joiner.label_due() == 1

    asyncio.run(run())
    (example_set,) = topic.sets()
    assert example_set["request_id"] == "r0" and example_set["member_id"] == "m1"
    assert example_set["item_ids"] == ["x", "y"] and example_set["labels"] == [1, 0]
    assert example_set["outcomes"] == ["apply", "none"]
    assert decode_matrix(example_set["features"]).tolist() == [[0.0, 1.0], [2.0, 3.0]]
    # Labelled responses leave nothing behind.
    assert state_keys(table) == []


def test_a_response_read_again_is_stored_once_pending_or_labelled(table: LocalTable) -> None:
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic)

    async def run() -> None:
        await joiner.add([record(0, "m1", NOW, ["x"]), record(1, "m1", NOW + 1, ["x"])])
        assert joiner.pending.stored_until(0) == 2
        assert await joiner.add([record(1, "m1", NOW + 1, ["x"])]) == 0  # still pending
        assert joiner.pending.pending_of(0, b"m1") == 2
        clock.now = NOW + 3600
        assert await joiner.label_due() == 2
        # A seek back (a crash before the commit, a rebalance) reads both again: labelled
        # and deleted, they are not stored again.
        assert await joiner.add([record(0, "m1", NOW, ["x"]), record(1, "m1", NOW + 1, ["x"])]) == 0
        assert await joiner.label_due() == 0

    asyncio.run(run())
    assert sorted(s["request_id"] for s in topic.sets()) == ["r0", "r1"]
    assert state_keys(table) == []


def test_a_pending_response_whose_stored_until_offset_was_lost_is_stored_once(
    table: LocalTable,
) -> None:
    # A crash can cut a write's changelog short after the responses, before the offset.
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic)

    async def run() -> None:
        await joiner.add([record(0, "m1", NOW, ["x"])])
        table.db(0).delete(STORED_UNTIL_KEY)
        assert await joiner.add([record(0, "m1", NOW, ["x"]), record(1, "m1", NOW, ["x"])]) == 1
        assert joiner.pending.pending_of(0, b"m1") == 2
        clock.now = NOW + 3600
        assert await joiner.label_due() == 2

    asyncio.run(run())
    assert sorted(s["request_id"] for s in topic.sets()) == ["r0", "r1"]


def test_many_due_responses_are_labelled_in_passes_in_due_order(table: LocalTable) -> None:
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic)

    async def run() -> None:
        await joiner.add([record(n, f"m{n % 3}", NOW + 10 - n, ["x"]) for n in range(8)])
        clock.now = NOW + 3600
        assert await joiner.label_due() == 8  # max_per_pass is 3: three passes

    asyncio.run(run())
    assert [s["request_id"] for s in topic.sets()] == [f"r{n}" for n in reversed(range(8))]


def test_labels_see_every_reaction_not_only_the_recent_actions(table: LocalTable) -> None:
    # The online store kept nothing (its cap), but the join recorded the reactions.
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic, unlabeled_as="skip")

    async def run() -> None:
        await joiner.add([record(0, "m1", NOW, ["x", "y", "z"])])
        await joiner.record_reactions(
            {
                (0, b"m1"): [
                    ("e1", "x", "click", NOW + 1),
                    ("e2", "y", "dismiss", NOW + 2),
                    ("e3", "z", "click", NOW + HORIZON + 5),  # after the horizon
                ],
                (0, b"m2"): [("e4", "x", "click", NOW + 1)],  # no pending response: not kept
            }
        )
        clock.now = NOW + HORIZON + 10
        await joiner.label_due()

    asyncio.run(run())
    (example_set,) = topic.sets()
    assert example_set["item_ids"] == ["x", "y"] and example_set["labels"] == [1, 0]
    assert state_keys(table) == []  # reactions go with the member's last response


def test_a_pass_cut_short_after_sending_is_not_written_twice(table: LocalTable) -> None:
    topic = ExamplesTopic(fail_after_send=True)
    joiner, clock = joiner_with(table, Store(), topic)

    async def run() -> None:
        await joiner.add([record(n, "m1", NOW + n, ["x"]) for n in range(2)])
        clock.now = NOW + 3600
        with pytest.raises(ConnectionError):
            await joiner.label_due()
        # Another response arrives before the worker (or the next owner) labels again.
        await joiner.add([record(2, "m1", NOW + 2, ["x"])])
        topic.fail_after_send = False
        assert await joiner.label_due() == 1  # the two already written are settled, r2 sent

    asyncio.run(run())
    assert sorted(s["request_id"] for s in topic.sets()) == ["r0", "r1", "r2"]
    assert state_keys(table) == []


def test_an_unreadable_record_is_not_stored(table: LocalTable) -> None:
    topic = ExamplesTopic()
    joiner, _ = joiner_with(table, Store(), topic)
    assert asyncio.run(joiner.add([LogRecord(0, 0, None, b"not json", None)])) == 0
    assert state_keys(table) == []
    assert joiner.pending.stored_until(0) == 1  # read, so not read again


def test_a_partition_revoked_during_a_pass_is_left_to_its_new_owner(table: LocalTable) -> None:
    class Revoking(ExamplesTopic):
        async def send(self, partition: int, records: Any) -> None:
            await super().send(partition, records)
            table.revoked.add(partition)

    topic = Revoking()
    joiner, clock = joiner_with(table, Store(), topic)

    async def run() -> None:
        await joiner.add([record(0, "m1", NOW, ["x"])])
        clock.now = NOW + 3600
        await joiner.label_due()
        # The new owner restores the state as it was, marker included, and resumes.
        table.revoked.clear()
        assert await joiner.label_due() == 0  # its set is there already: settled, not sent
        assert state_keys(table) == []

    asyncio.run(run())
    assert [s["request_id"] for s in topic.sets()] == ["r0"]


def test_an_erased_members_responses_make_no_examples_and_leave_nothing(
    table: LocalTable,
) -> None:
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic)

    async def run() -> None:
        await joiner.add([record(0, "m1", NOW, ["x"]), record(1, "m2", NOW, ["x"])])
        await joiner.record_reactions({(0, b"m1"): [("e1", "x", "click", NOW + 1)]})
        joiner.erased = {"m1": NOW + 5}
        # The erasure deletes every key of the member...
        keys = await joiner.pending.member_keys(0, {b"m1"})
        assert len(keys) == 4  # the response, what it served, the count, the reaction
        await joiner.pending.write({0: dict.fromkeys(keys)})
        assert all(b"m1" not in key for key in state_keys(table))
        # ... a response logged before it and read after it is not stored; a later one is.
        assert await joiner.add([record(2, "m1", NOW + 4, ["x"])]) == 0
        assert await joiner.add([record(3, "m1", NOW + 6, ["x"])]) == 1
        clock.now = NOW + 3600
        await joiner.label_due()

    asyncio.run(run())
    assert sorted(s["request_id"] for s in topic.sets()) == ["r1", "r3"]


def test_a_pending_response_of_a_member_erased_meanwhile_is_dropped_when_due(
    table: LocalTable,
) -> None:
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic)

    async def run() -> None:
        await joiner.add([record(0, "m1", NOW, ["x"]), record(1, "m2", NOW, ["x"])])
        joiner.erased = {"m1": NOW}  # read after the response was stored
        clock.now = NOW + 3600
        assert await joiner.label_due() == 2

    asyncio.run(run())
    assert [s["request_id"] for s in topic.sets()] == ["r1"]
    assert state_keys(table) == []
    assert (
        joiner.metrics.registry.get_sample_value(
            "nearline_outcome_responses_total", {"outcome": "erased"}
        )
        == 1
    )


# -- last touch: a reaction goes to the latest response that served the item -------------------


def decoded(
    request_id: str, ts: float, items: list[str], served: list[str] | None = None, arm: str = "a"
) -> dict[str, Any]:
    return dict(codec.loads(logged(request_id, "m1", ts, items, served, arm)))


def served_at(*responses: dict[str, Any]) -> dict[str, list[float]]:
    """What the join's state gives labelling: per item, when these responses served it."""
    found: dict[str, list[float]] = {}
    for response in sorted(responses, key=lambda r: float(r["ts"])):
        for item_id in response["ranked"]:
            found.setdefault(item_id, []).append(response["ts"])
    return found


def outcomes(example_set: dict[str, Any] | None) -> dict[str, str]:
    assert example_set is not None
    return dict(zip(example_set["item_ids"], example_set["outcomes"], strict=True))


@pytest.mark.parametrize("action", ["click", "dismiss"])
def test_a_reaction_after_two_servings_credits_only_the_later_response(action: str) -> None:
    first, second = decoded("r1", NOW, ["x", "y"]), decoded("r2", NOW + 10, ["x", "z"])
    shown = served_at(first, second)
    actions = [("x", action, NOW + 20)]
    assert outcomes(label_response(first, actions, HORIZON, "negative", shown)) == {
        "x": "none",
        "y": "none",
    }
    assert outcomes(label_response(second, actions, HORIZON, "negative", shown)) == {
        "x": action,
        "z": "none",
    }
    # Without what the member's responses served, both count it (as before last touch).
    assert outcomes(label_response(first, actions, HORIZON, "negative"))["x"] == action


@pytest.mark.parametrize("at", [NOW + 5, NOW + 10], ids=["between", "at-the-later-request"])
def test_a_reaction_between_two_servings_credits_the_earlier_response(at: float) -> None:
    first, second = decoded("r1", NOW, ["x"]), decoded("r2", NOW + 10, ["x"])
    shown = served_at(first, second)
    actions = [("x", "click", at)]
    assert outcomes(label_response(first, actions, HORIZON, "skip", shown)) == {"x": "click"}
    assert outcomes(label_response(second, actions, HORIZON, "skip", shown)) == {}


def test_a_candidate_logged_but_not_served_neither_takes_nor_loses_credit() -> None:
    # x: served by the first, only logged by the second; y: the other way round.
    first = decoded("r1", NOW, ["x", "y"], served=["x"])
    second = decoded("r2", NOW + 10, ["x", "y"], served=["y"])
    shown = served_at(first, second)
    actions = [("x", "click", NOW + 20), ("y", "dismiss", NOW + 20)]
    expected = {"x": "click", "y": "dismiss"}
    assert outcomes(label_response(first, actions, HORIZON, "skip", shown)) == expected
    assert outcomes(label_response(second, actions, HORIZON, "skip", shown)) == expected


def test_an_arms_outcome_counts_each_reaction_once_by_last_touch() -> None:
    first, second = decoded("r1", NOW, ["x", "y"]), decoded("r2", NOW + 10, ["y", "x"])
    shown = served_at(first, second)
    actions = [("x", "click", NOW + 5), ("y", "dismiss", NOW + 20), ("x", "apply", NOW + 30)]
    earlier = label_response(first, actions, HORIZON, "skip", shown)
    later = label_response(second, actions, HORIZON, "skip", shown)
    assert earlier is not None and later is not None
    counts = ("served", "click", "apply", "save", "dismiss", "positives")
    assert [earlier["experiment"][c] for c in counts] == [2, 1, 0, 0, 0, [0]]
    assert [later["experiment"][c] for c in counts] == [2, 0, 1, 0, 1, [1]]


def positives(topic: ExamplesTopic) -> list[tuple[str, str]]:
    """(request id, item id) of every positive example written."""
    return sorted(
        (s["request_id"], item_id)
        for s in topic.sets()
        for item_id, label in zip(s["item_ids"], s["labels"], strict=True)
        if label == 1
    )


def test_the_join_credits_a_click_after_two_servings_to_the_later_response(
    table: LocalTable,
) -> None:
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic)

    async def run() -> None:
        await joiner.add([record(0, "m1", NOW, ["x", "y"]), record(1, "m1", NOW + 10, ["x"])])
        await joiner.record_reactions({(0, b"m1"): [("e1", "x", "click", NOW + 20)]})
        clock.now = NOW + 3600
        assert await joiner.label_due() == 2

    asyncio.run(run())
    assert positives(topic) == [("r1", "x")]
    assert sorted(len(s["labels"]) for s in topic.sets()) == [1, 2]  # x is r0's negative
    assert state_keys(table) == []  # what they served went with them


def test_the_join_credits_the_last_serving_across_labelling_passes(table: LocalTable) -> None:
    # max_per_pass is 3: r0-r2 are labelled (and deleted) before r3, the one that takes it.
    topic = ExamplesTopic()
    store = Store({"m1": [["e1", "x", "click", NOW + 20, None, None]]})
    joiner, clock = joiner_with(table, store, topic, unlabeled_as="skip")

    async def run() -> None:
        await joiner.add([record(n, "m1", NOW + n, ["x"]) for n in range(4)])
        clock.now = NOW + 3600
        assert await joiner.label_due() == 4

    asyncio.run(run())
    assert positives(topic) == [("r3", "x")]
    assert state_keys(table) == []


def test_a_later_response_that_only_logged_the_item_takes_no_credit(table: LocalTable) -> None:
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic, unlabeled_as="skip")

    async def run() -> None:
        later = record(1, "m1", NOW + 10, ["w", "x"], served=["w"])
        await joiner.add([record(0, "m1", NOW, ["x"]), later])
        await joiner.record_reactions({(0, b"m1"): [("e1", "x", "click", NOW + 20)]})
        clock.now = NOW + 3600
        await joiner.label_due()

    asyncio.run(run())
    # r1's unserved candidate is labelled by the click as before; r0 served x and keeps it.
    assert positives(topic) == [("r0", "x"), ("r1", "x")]


def test_a_response_stored_without_what_it_served_takes_no_credit(table: LocalTable) -> None:
    # As one stored by a version before last touch.
    topic = ExamplesTopic()
    joiner, clock = joiner_with(table, Store(), topic, unlabeled_as="skip")

    async def run() -> None:
        await joiner.add([record(0, "m1", NOW, ["x"]), record(1, "m1", NOW + 10, ["x"])])
        (response,) = [r for r in joiner.pending.due(0, 2**62, 10) if r.offset == 1]
        table.db(0).delete(response.served_key)
        await joiner.record_reactions({(0, b"m1"): [("e1", "x", "click", NOW + 20)]})
        clock.now = NOW + 3600
        assert await joiner.label_due() == 2

    asyncio.run(run())
    assert positives(topic) == [("r0", "x"), ("r1", "x")]
    assert state_keys(table) == []
