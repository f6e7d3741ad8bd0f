"""Member erasure end to end: every store, crashes and restores, re-sent events, two workers.

Real workers on the embedded broker. What is checked is what anyone could read afterwards:
the API, the changelogs (what a restore would bring back), the attribute store, the export.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from nearline.attribute_store import EmbeddedAttributeStore
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.model.dataset import read_examples
from nearline.tables.changelog import END_MARKER_KEY
from nearline.tables.member_state import erased_key
from tests.integration.conftest import Deployment, Worker, wait_until
from tests.integration.helpers import read_to_end, run_cli, wait_applied_to_end
from tests.integration.test_ingest import misplaced, records

pytestmark = pytest.mark.integration

CANDIDATES = [f"item-{n}" for n in range(8)]
HORIZON = 10.0


def events_of(member: str, count: int, *, now: float, ago: float = 600) -> list[dict[str, Any]]:
    """``count`` clicks of ``member``, the first ``ago`` seconds before ``now``, a second apart."""
    return [
        {
            "event_id": f"{member}-{uuid.uuid4().hex}",
            "member_id": member,
            "item_id": f"item-{n % 8}",
            "action": "click",
            "ts": now - ago + n,
        }
        for n in range(count)
    ]


def live_keys(deployment: Deployment, table: str, app_id: str | None = None) -> dict[bytes, bytes]:
    """The table as a restore from its changelog would bring it back now."""
    app_id = app_id or deployment.app_id
    state: dict[bytes, bytes] = {}
    for record in read_to_end(deployment, f"{app_id}-{table}-changelog"):
        if record.key == END_MARKER_KEY:
            continue
        if record.value is None:
            state.pop(record.key, None)
        else:
            state[record.key] = record.value
    return state


def member_attributes(worker: Worker, tmp: Path, member: str) -> dict[str, Any]:
    """The member's static attributes in the worker's embedded store, read beside it."""
    store = EmbeddedAttributeStore.secondary(
        Path(worker.env["NEARLINE_DATA_DIR"]) / "attributes", tmp / f"secondary-{uuid.uuid4().hex}"
    )
    try:
        return asyncio.run(store.get_many([member], kind="members"))
    finally:
        asyncio.run(store.close())


def erase(worker: Worker, member: str) -> httpx.Response:
    return httpx.delete(f"{worker.url}/v1/members/{member}", timeout=15)


def recommend(worker: Worker, member: str) -> str:
    body = {"member_id": member, "candidates": CANDIDATES, "k": 4}
    response = httpx.post(f"{worker.url}/v1/recommendations", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def erased_view(worker: Worker, member: str) -> dict[str, Any]:
    features: dict[str, Any] = worker.get(f"/v1/members/{member}/features").json()
    return features


def assert_erased(worker: Worker, member: str) -> None:
    """Nothing of the member's before the erasure through the API, and it says it is erased."""
    features = erased_view(worker, member)
    assert features["erased"] is not None, features
    assert features["known"] is False and features["recent_actions"] == [], features
    assert all(n == 0 for window in features["counts"].values() for n in window.values())


def load_member_attributes(worker: Worker, tmp: Path, *members: str) -> None:
    """Static attributes for ``members``, straight into the (stopped) worker's store."""
    people = tmp / "members.jsonl"
    people.write_text(
        "\n".join(
            codec.dumps({"member_id": m, "attributes": {"seniority": "senior"}}).decode()
            for m in members
        )
    )
    loaded = run_cli(worker, "attributes", "load", "--kind", "members", "--quiet", str(people))
    assert loaded.returncode == 0, loaded.stderr


def pending_responses(deployment: Deployment) -> list[bytes]:
    """Keys of the responses waiting for their outcomes, what they served (and of a
    labelling pass)."""
    return [k for k in live_keys(deployment, "outcomes-pending") if k[:1] in (b"d", b"v", b"i")]


def test_an_erased_member_is_gone_from_every_store_and_stays_gone(
    deployment: Deployment, tmp_path: Path
) -> None:
    worker = deployment.worker(NEARLINE_OUTCOME_HORIZON=f"{HORIZON}s")
    load_member_attributes(worker, tmp_path, "gone", "kept")
    worker.start().wait_ready()
    now = time.time()
    old = {m: events_of(m, 30, now=now) for m in ("gone", "kept")}
    deployment.produce(misplaced(old["gone"] + old["kept"], deployment.partitions, every=3))
    # A first response each, labelled into example sets before the erasure...
    early = {m: recommend(worker, m) for m in ("gone", "kept")}
    examples_topic = deployment.settings["NEARLINE_TOPIC_TRAINING_EXAMPLES"]
    wait_until(
        lambda: (
            {codec.loads(r.value)["request_id"] for r in read_to_end(deployment, examples_topic)}
            >= set(early.values())
        ),
        timeout=30,
        message="the first responses labelled",
    )
    # ... and a second still pending at the erasure, with a reaction recorded for it.
    late = {m: recommend(worker, m) for m in ("gone", "kept")}
    reactions = [{**e, "ts": time.time(), "event_id": uuid.uuid4().hex} for e in old["gone"][:2]]
    deployment.produce(records(reactions))
    wait_applied_to_end(deployment)
    assert erased_view(worker, "gone")["recent_actions"]
    pending = live_keys(deployment, "outcomes-pending")
    assert any(b"gone" in key for key in pending), "the erasure must find something pending"

    requested = time.monotonic()
    answer = erase(worker, "gone")
    assert answer.status_code == 202, answer.text
    assert answer.json()["member_id"] == "gone"
    wait_until(lambda: erased_view(worker, "gone").get("erased"), timeout=5, interval=0.05)
    took = time.monotonic() - requested
    assert took < 5, took
    assert_erased(worker, "gone")
    assert len(erased_view(worker, "kept")["recent_actions"]) == 30
    stores = ("online", "pending", "attributes")
    wait_until(
        lambda: all(
            worker.metric(f'nearline_erasure_seconds_count{{store="{store}"}}') == 1
            for store in stores
        ),
        message="the erasure acknowledged in every store",
    )
    # Every store: the changelogs a restore reads, the join's state, the attribute store.
    members = live_keys(deployment, "members")
    assert [k for k in members if k.startswith(b"gone\0")] == [erased_key(b"gone")]
    assert any(k.startswith(b"kept\0") for k in members)
    assert not [key for key in live_keys(deployment, "outcomes-pending") if b"gone" in key]
    assert member_attributes(worker, tmp_path, "gone") == {}
    assert set(member_attributes(worker, tmp_path, "kept")) == {"kept"}
    assert worker.metric('nearline_erasures_total{outcome="applied"}') == 1
    assert worker.metric('nearline_erasures_total{outcome="requested"}') == 1
    system = worker.get("/v1/console/system").json()["erasures"]
    for store in stores:  # request to completion, p99 by its bucket's bound
        assert system["stores"][store] == {"count": 1, "p99_seconds": pytest.approx(0, abs=5)}

    # Its old events again, whatever their path: retries (same ids), new ids with old
    # times, on the member's partition and through the repartition topic. Ignored, counted.
    resent = old["gone"] + [{**e, "event_id": uuid.uuid4().hex} for e in old["gone"]]
    deployment.produce(misplaced(resent, deployment.partitions, every=2))
    wait_applied_to_end(deployment)
    assert worker.metric('nearline_events_dropped_total{reason="erased"}') == len(resent)
    assert_erased(worker, "gone")
    # The erased member's pending response makes no example set; the other one does.
    wait_until(
        lambda: not pending_responses(deployment),
        timeout=30,
        message="every response due labelled",
    )
    written = {codec.loads(r.value)["request_id"] for r in read_to_end(deployment, examples_topic)}
    assert late["kept"] in written and late["gone"] not in written
    # The export leaves out the example set written before the erasure too.
    out = tmp_path / "examples.parquet"
    exported = run_cli(worker, "export-training", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "left out" in exported.stdout
    assert set(read_examples(out).member_id) == {"kept"}
    # (`nearline train` on a file exported before: tests/unit/test_erasures.py.)

    # A new event after the erasure: the member starts from zero.
    fresh = [{**events_of("gone", 1, now=time.time(), ago=0)[0]}]
    deployment.produce(records(fresh))
    wait_until(lambda: erased_view(worker, "gone")["recent_actions"], message="the new event")
    after = erased_view(worker, "gone")
    assert [a["event_id"] for a in after["recent_actions"]] == [fresh[0]["event_id"]]
    assert after["counts"]["1h"]["click"] == 1 and after["erased"] is not None

    # SIGKILL, local state kept then deleted: the restore brings back nothing erased. The
    # member's attributes, loaded again while the worker is down, are deleted again.
    data_dir = Path(worker.env["NEARLINE_DATA_DIR"])
    for n, keep in enumerate((True, False)):
        worker.kill()
        if not keep:
            for path in data_dir.iterdir():
                if path.name != "attributes":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        worker = deployment.worker(f"w1-restart-{n}", NEARLINE_DATA_DIR=str(data_dir))
        load_member_attributes(worker, tmp_path, "gone")
        worker.start().wait_ready()
        wait_applied_to_end(deployment)
        after = erased_view(worker, "gone")
        assert [a["event_id"] for a in after["recent_actions"]] == [fresh[0]["event_id"]]
        assert len(erased_view(worker, "kept")["recent_actions"]) == 30
        wait_until(
            lambda: member_attributes(worker, tmp_path, "gone") == {},  # noqa: B023
            message="the attributes loaded again deleted again",
        )
        assert set(member_attributes(worker, tmp_path, "kept")) == {"kept"}


def test_an_erasure_taken_by_a_worker_not_owning_the_member_and_a_new_app_id(
    deployment: Deployment, tmp_path: Path
) -> None:
    first = deployment.worker("w1").start().wait_ready()
    second = deployment.worker("w2").start().wait_ready()

    def split() -> bool:
        a, b = first.get("/readyz").json(), second.get("/readyz").json()
        return bool(a["ready"] and b["ready"] and a["partitions"] and b["partitions"])

    wait_until(split, timeout=60, message="partitions split across both workers")
    owned_by_second = set(second.get("/readyz").json()["partitions"])
    members = [f"m{n}" for n in range(40)]
    target = next(
        m
        for m in members
        if partition_for_key(m.encode(), deployment.partitions) in owned_by_second
    )
    now = time.time()
    events = [e for m in members for e in events_of(m, 5, now=now)]
    deployment.produce(records(events))
    wait_applied_to_end(deployment)
    assert len(erased_view(first, target)["recent_actions"]) == 5

    # An unknown member, bad ids, and the same member twice: 202 or a clear 4xx.
    assert erase(first, "never-seen").status_code == 202
    too_long = erase(first, "x" * 257)
    assert too_long.status_code == 422 and "over the limit" in too_long.json()["error"]
    assert erase(first, "").status_code == 404
    answers = [erase(first, target), erase(second, target)]
    assert [a.status_code for a in answers] == [202, 202]
    wait_until(
        lambda: (
            erased_view(first, target).get("erased", {}).get("erasure_id")
            == answers[1].json()["erasure_id"]
        ),
        timeout=5,
        interval=0.05,
        message="the second erasure applied by the owner",
    )
    assert_erased(first, target)
    assert_erased(second, target)
    assert second.metric('nearline_erasures_total{outcome="applied"}') >= 1
    others = [m for m in members if m != target]
    by_cli, kept = others[:2], others[2]
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{by_cli[1]}\n\n")
    cli = run_cli(first, "members", "erase", by_cli[0], "--file", str(ids))
    assert cli.returncode == 0, cli.stderr
    assert [line.split("\t")[0] for line in cli.stdout.splitlines()] == by_cli
    wait_until(
        lambda: all(erased_view(first, m).get("erased") for m in by_cli),
        timeout=5,
        message="the members erased by the command erased",
    )
    bad = run_cli(first, "members", "erase", "ok", "x" * 300)
    assert bad.returncode != 0 and "nothing erased" in bad.stderr
    assert first.get("/healthz").status_code == second.get("/healthz").status_code == 200

    # A worker under a new app id on the same topics applies every action again, from the
    # start: none of the erased members' comes back, and what came after an erasure stays.
    first.stop()
    second.stop()
    later = events_of(target, 1, now=time.time(), ago=0)
    deployment.produce(records(later))
    fresh = deployment.worker("w3-new-app", NEARLINE_APP_ID=f"{deployment.app_id}-b")
    fresh.start().wait_ready()
    wait_until(
        lambda: fresh.metric("nearline_events_in_total") >= len(events) + 1,
        timeout=30,
        message="every action read again",
    )
    wait_until(
        lambda: all(erased_view(fresh, m).get("erased") for m in (target, *by_cli)),
        timeout=10,
        message="the erasures marked in the new app's state",
    )
    for member in by_cli:
        assert erased_view(fresh, member)["recent_actions"] == [], member
    shown = erased_view(fresh, target)["recent_actions"]
    assert [a["event_id"] for a in shown] == [later[0]["event_id"]]
    assert len(erased_view(fresh, kept)["recent_actions"]) == 5
    assert fresh.metric('nearline_events_dropped_total{reason="erased"}') == 15
