"""Crash, restart, scale out and expiry, each with real worker processes."""

from __future__ import annotations

import math
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from confluent_kafka.admin import AdminClient, NewTopic

from nearline.app.stack import Stack
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.tables.changelog import END_MARKER_KEY
from nearline.tables.member_state import member_of
from tests.integration.conftest import Deployment, wait_until
from tests.integration.helpers import changelog_history, read_to_end, wait_applied_to_end
from tests.integration.test_ingest import (
    assert_matches,
    make_events,
    misplaced,
    oracle,
    records,
    served_view,
)
from tests.legacy_layout import legacy_value

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("keep_local_state", [False, True], ids=["rocksdb-deleted", "rocksdb-kept"])
def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
    deployment: Deployment, keep_local_state: bool
) -> None:
    # 20 actions served of ~75 per member: chunks are merged and retired into the rollup
    # while the kill hits, and the counts and ids of retired ones must stay exact.
    kept = {"NEARLINE_MAX_RECENT_ACTIONS": "20"}
    worker = deployment.worker(**kept).start().wait_ready()
    now = time.time()
    events = make_events(6000, members=80, now=now, seed=3)
    # Half on another partition than their key's: the kill also hits forwards in flight,
    # and events already forwarded but not yet committed are forwarded again.
    placed = misplaced(events, deployment.partitions)
    producing = threading.Thread(target=deployment.produce, args=(placed,))
    producing.start()
    wait_until(
        lambda: worker.metric("nearline_events_applied_total") > 1500, message="ingest under way"
    )
    worker.kill()
    data_dir = Path(worker.env["NEARLINE_DATA_DIR"])
    if not keep_local_state:
        shutil.rmtree(data_dir)
    producing.join()
    restarted = (
        deployment.worker("w1-restarted", NEARLINE_DATA_DIR=str(data_dir), **kept)
        .start()
        .wait_ready()
    )
    # Every record applied, those read again after the kill too: a double count is in the
    # state by now, so the state must equal the oracle at once.
    wait_applied_to_end(deployment, timeout=90)
    assert_matches(restarted, oracle(events, as_of=now, max_recent=20), now)


def test_two_workers_answer_every_member_identically(deployment: Deployment) -> None:
    first = deployment.worker("w1").start().wait_ready()
    second = deployment.worker("w2").start()
    second.wait_ready()

    def split() -> bool:
        a = first.get("/readyz").json()
        b = second.get("/readyz").json()
        return bool(
            a["ready"]
            and b["ready"]
            and a["partitions"]
            and b["partitions"]
            and sorted(a["partitions"] + b["partitions"]) == [0, 1, 2, 3]
        )

    wait_until(split, timeout=60, message="partitions split across both workers")
    now = time.time()
    events = make_events(2000, members=50, now=now, seed=4)
    # A third misplaced: forwarded, often to the other worker's partitions.
    deployment.produce(misplaced(events, deployment.partitions, every=3))
    wait_applied_to_end(deployment)
    expected = oracle(events, as_of=now)
    assert_matches(first, expected, now)
    for member in expected:
        a = first.get(f"/v1/members/{member}/features", as_of=now)
        b = second.get(f"/v1/members/{member}/features", as_of=now)
        assert a.status_code == b.status_code == 200
        assert a.content == b.content, member
    # Both did part of the work: every partition had an owner applying its events.
    assert first.metric("nearline_events_applied_total") > 0
    assert second.metric("nearline_events_applied_total") > 0
    assert first.metric("nearline_events_repartitioned_total") > 0
    assert second.metric("nearline_events_repartitioned_total") > 0


def test_workers_joining_and_leaving_mid_stream_lose_nothing(deployment: Deployment) -> None:
    """Rebalances while ingesting: fetches made before one are dropped and read again."""
    first = deployment.worker("w1").start().wait_ready()
    now = time.time()
    events = make_events(8000, members=80, now=now, seed=5)

    def produce_steadily() -> None:  # ~20 s of traffic, so both rebalances fall inside it
        batch = records(events)
        for start in range(0, len(batch), 200):
            deployment.produce(batch[start : start + 200])
            time.sleep(0.5)

    producing = threading.Thread(target=produce_steadily)
    producing.start()
    wait_until(
        lambda: first.metric("nearline_events_applied_total") > 500, message="ingest under way"
    )
    second = deployment.worker("w2").start().wait_ready()
    wait_until(
        lambda: second.metric("nearline_events_applied_total") > 0, message="w2 took partitions"
    )
    second.stop()  # leaves again: its partitions move back to the first worker
    assert producing.is_alive(), "traffic ended before the rebalances; slow it down"
    producing.join()
    # Also the fetches dropped at the rebalances are read again and applied by now.
    wait_applied_to_end(deployment, timeout=90)
    # The second worker may have committed the last records itself before it left: the
    # first answers for its partitions once it holds them all again and has restored them.
    wait_until(
        lambda: (
            (ready := first.get("/readyz").json())["ready"]
            and sorted(ready["partitions"]) == list(range(deployment.partitions))
        ),
        timeout=60,
        message="the first worker to hold every partition again",
    )
    expected = oracle(events, as_of=now)
    for member, view in expected.items():
        served = served_view(first.get(f"/v1/members/{member}/features", as_of=now).json())
        assert served == view, changelog_history(deployment, member, events)


def test_old_events_are_absent_and_expire_while_running(deployment: Deployment) -> None:
    retention = 12.0
    worker = (
        deployment.worker(
            NEARLINE_RETENTION="12s",
            NEARLINE_WINDOWS="2s,6s,12s",
            NEARLINE_BUCKET="1s",
            NEARLINE_SWEEP_INTERVAL="1s",
        )
        .start()
        .wait_ready()
    )
    now = time.time()
    fresh = [
        {
            "event_id": f"e{i}",
            "member_id": f"m{i % 5}",
            "item_id": f"i{i}",
            "action": "click",
            "ts": now - 1,
        }
        for i in range(20)
    ]
    stale = [
        {"event_id": "old", "member_id": "m0", "item_id": "i", "action": "click", "ts": now - 60}
    ]
    deployment.produce(records(fresh + stale))
    letters = deployment.consume(deployment.dlq, expected=1)
    assert dict(letters[0].headers)["nearline-reason"] == b"expired_ts"
    wait_until(lambda: worker.metric("nearline_events_applied_total") == 20)
    body = worker.get("/v1/members/m0/features").json()
    assert len(body["recent_actions"]) == 4 and body["counts"]["12s"]["click"] == 4

    # After the retention nothing is served, and the sweep deletes the members.
    def gone() -> bool:
        body = worker.get("/v1/members/m0/features").json()
        return body["recent_actions"] == [] and body["counts"]["12s"]["click"] == 0

    # Actions leave at the retention; counts when their 1s bucket has left the window.
    wait_until(gone, timeout=retention + 5, message="m0 no longer served")
    wait_until(
        lambda: worker.metric("nearline_members_expired_total") == 5,
        timeout=10,
        message="all five members deleted by the sweep",
    )
    # The sweep counts a deletion once the changelog has acknowledged its tombstones.
    changelog = read_to_end(
        deployment, f"{deployment.settings['NEARLINE_APP_ID']}-members-changelog"
    )
    last_value = {m.key: m.value for m in changelog if m.key != END_MARKER_KEY}
    assert {member_of(key) for key in last_value} == {f"m{i}".encode() for i in range(5)}
    # Every key a member had ends with a tombstone: compaction drops them all.
    assert all(value is None for value in last_value.values())
    worker.stop()
    dbs = list(Path(worker.env["NEARLINE_DATA_DIR"]).rglob("members-*.db"))
    assert dbs, "the worker kept its RocksDB partitions on disk"
    for path in dbs:
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        try:
            assert [k for k in db.keys() if not k.startswith((b"__faust", b"\0"))] == []
        finally:
            db.close()


def _live_keys(data_dir: Path) -> dict[bytes, bytes]:
    """The members table's keys and values in a stopped worker's RocksDB partitions."""
    live: dict[bytes, bytes] = {}
    for path in data_dir.rglob("members-*.db"):
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        try:
            live.update((k, v) for k, v in db.items() if not k.startswith((b"__faust", b"\0")))
        finally:
            db.close()
    return live


def test_a_compacted_changelog_and_values_of_the_older_layout_restore_the_same_state(
    deployment: Deployment, tmp_path: Path
) -> None:
    """What compaction leaves of the changelog (each key's last value, no tombstones) is
    exactly the live state, and restores it; values of the one-key layout are read, then
    rewritten in chunks on the member's next action."""
    kept = {"NEARLINE_MAX_RECENT_ACTIONS": "10"}
    worker = deployment.worker(**kept).start().wait_ready()
    now = time.time()
    # ~60 actions per member, 10 served: chunks merge, retire into the rollup, and go.
    events = make_events(1200, members=20, now=now, seed=8, spread=3 * 3600)
    for start in range(0, len(events), 200):  # batch after batch, as a stream arrives
        deployment.produce(records(events[start : start + 200]))
        wait_applied_to_end(deployment)
    expected = oracle(events, as_of=now, max_recent=10)
    assert_matches(worker, expected, now)
    app_id = deployment.settings["NEARLINE_APP_ID"]
    last: dict[bytes, tuple[int, bytes | None]] = {}
    for record in read_to_end(deployment, f"{app_id}-members-changelog"):
        if record.key != END_MARKER_KEY:
            last[record.key] = (record.partition, record.value)
    worker.stop()
    compacted = {key: pv for key, pv in last.items() if pv[1] is not None}
    assert len(compacted) < len(last)  # keys that stopped being live got tombstones
    live = _live_keys(Path(worker.env["NEARLINE_DATA_DIR"]))
    assert live == {key: value for key, (_, value) in compacted.items()}

    # Another deployment's changelog: the compacted records, and three members as the
    # older layout wrote them.
    arrival = math.floor(now * 24 / 86400)
    bucket = math.floor((now - 100) / 60)
    old = {
        f"old{n}": legacy_value(
            [-1, -1],
            now - 50,
            now - 40,
            [[bucket, {"click": 1}], [bucket + 1, {"view": 1}], [bucket - 100, {"click": 2}]],
            {arrival: [f"x0-{n}", f"x1-{n}", f"x2-{n}"]},
            [
                [f"x1-{n}", "i1", "click", bucket * 60.0 + 1, None, None],
                [f"x2-{n}", "i2", "view", bucket * 60.0 + 61, None, None],
            ],
        )
        for n in range(3)
    }
    (tmp_path / "second").mkdir()
    second = Stack.isolated(deployment.broker, prefix="t", tmp=tmp_path / "second")
    try:
        topic = f"{second.app_id}-members-changelog"
        admin = AdminClient({"bootstrap.servers": deployment.broker.bootstrap})
        spec = NewTopic(topic, second.partitions, 1, config={"cleanup.policy": "compact"})
        admin.create_topics([spec])[topic].result()
        restored: list[Any] = [(k, v, p) for k, (p, v) in compacted.items()]
        restored += [
            (m.encode(), v, partition_for_key(m.encode(), second.partitions))
            for m, v in old.items()
        ]
        second.produce_to(topic, restored)
        # Alone, after the records: the embedded broker's end offset is then exact.
        second.produce_to(topic, [(END_MARKER_KEY, b"", p) for p in range(second.partitions)])
        other = second.worker("w2", **kept).start().wait_ready()
        assert_matches(other, expected, now)
        view = other.get("/v1/members/old0/features", as_of=now).json()
        assert [a["event_id"] for a in view["recent_actions"]] == ["x2-0", "x1-0"]
        assert view["counts"]["24h"]["click"] == 3 and view["counts"]["1h"]["view"] == 1
        # old0's next action moves it to chunks; a retry of an id it remembered counts once.
        second.produce(
            records(
                [
                    {
                        "event_id": "y",
                        "member_id": "old0",
                        "item_id": "i",
                        "action": "click",
                        "ts": now - 5,
                    },
                    {
                        "event_id": "x0-0",
                        "member_id": "old0",
                        "item_id": "i",
                        "action": "click",
                        "ts": now - 5,
                    },
                ]
            )
        )
        wait_applied_to_end(second)
        view = other.get("/v1/members/old0/features", as_of=now).json()
        assert [a["event_id"] for a in view["recent_actions"]] == ["y", "x2-0", "x1-0"]
        assert view["counts"]["24h"]["click"] == 4
        rewritten = [r for r in read_to_end(second, topic) if member_of(r.key) == b"old0"]
        assert rewritten[-1].key == b"old0" and rewritten[-1].value is None
        assert any(r.key != b"old0" and r.value is not None for r in rewritten)
        assert codec.loads(other.get("/v1/members/old1/features", as_of=now).content)["counts"][
            "24h"
        ] == {"view": 1, "click": 3, "apply": 0, "save": 0, "dismiss": 0}
    finally:
        second.stop()
