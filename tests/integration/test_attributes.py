"""Item attributes end to end: the topic feed, joins at ingest and at read, store outages."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nearline.foundation import codec
from tests.integration.conftest import Deployment, wait_until
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.integration

JOINS = {
    "NEARLINE_JOIN_AT_INGEST": "category,company,geo",
    "NEARLINE_JOIN_AT_READ": "embedding",
    "NEARLINE_EMBEDDING_DIM": "4",
}


def item(item_id: str, category: str, embedding: list[float]) -> tuple[bytes, bytes]:
    body = {
        "item_id": item_id,
        "embedding": embedding,
        "geo": {"lat": 52.37, "lon": 4.89, "region": "nl"},
        "attributes": {"category": category, "company": "acme"},
    }
    return item_id.encode(), codec.dumps(body)


def action(n: int, item_id: str, member: str = "m1") -> tuple[bytes, bytes]:
    body = {
        "event_id": f"e{n}",
        "member_id": member,
        "item_id": item_id,
        "action": "click",
        "ts": time.time(),
    }
    return member.encode(), codec.dumps(body)


def test_ingest_and_read_joins_and_updates_on_the_next_read(deployment: Deployment) -> None:
    worker = deployment.worker(**JOINS).start().wait_ready()
    topic = deployment.settings["NEARLINE_TOPIC_ITEM_ATTRIBUTES"]
    deployment.produce_to(topic, [item("job-1", "engineering", [1, 0, 0, 0]), (b"bad", b"{nope")])
    wait_until(lambda: worker.metric('nearline_attribute_records_total{outcome="upserted"}') == 1)
    rejected = deployment.consume(f"{topic}.dlq", expected=1)
    assert dict(rejected[0].headers)["nearline-reason"] == b"invalid_item"

    deployment.produce([action(1, "job-1"), action(2, "job-unknown")])
    wait_until(lambda: worker.metric("nearline_events_applied_total") == 2)
    body = worker.get("/v1/members/m1/features").json()
    by_item = {a["item_id"]: a for a in body["recent_actions"]}
    known, unknown = by_item["job-1"], by_item["job-unknown"]
    assert known["joined"] is True and known["missing"] == []
    assert known["attributes"]["category"] == "engineering"  # copied at ingest
    assert known["attributes"]["geo"]["region"] == "nl"
    assert known["attributes"]["embedding"] == [1, 0, 0, 0]  # fetched at read
    assert unknown["joined"] is False
    assert set(unknown["missing"]) == {"embedding", "category", "company", "geo"}

    # A new version of the item: read-time attributes follow at once; ingest-time ones
    # stay what they were when the action happened (point-in-time).
    deployment.produce_to(topic, [item("job-1", "design", [0, 1, 0, 0])])
    wait_until(lambda: worker.metric('nearline_attribute_records_total{outcome="upserted"}') == 2)
    again = {
        a["item_id"]: a for a in worker.get("/v1/members/m1/features").json()["recent_actions"]
    }
    assert again["job-1"]["attributes"]["embedding"] == [0, 1, 0, 0]
    assert again["job-1"]["attributes"]["category"] == "engineering"

    # The unknown item arrives later: the unjoined action is caught up at read.
    deployment.produce_to(topic, [item("job-unknown", "sales", [0, 0, 1, 0])])
    wait_until(lambda: worker.metric('nearline_attribute_records_total{outcome="upserted"}') == 3)
    late = {a["item_id"]: a for a in worker.get("/v1/members/m1/features").json()["recent_actions"]}
    assert late["job-unknown"]["attributes"]["category"] == "sales"
    assert late["job-unknown"]["missing"] == [] and late["job-unknown"]["joined"] is False

    # A tombstone deletes the item.
    deployment.produce_to(topic, [(b"job-1", None)])
    wait_until(lambda: worker.metric('nearline_attribute_records_total{outcome="deleted"}') == 1)
    gone = {a["item_id"]: a for a in worker.get("/v1/members/m1/features").json()["recent_actions"]}
    assert "embedding" in gone["job-1"]["missing"]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.parametrize("kind", ["closed", "silent"])
def test_ingest_goes_on_while_aerospike_is_unreachable(
    deployment: Deployment, kind: str, request: pytest.FixtureRequest
) -> None:
    """No Aerospike server can run here: the real client is pointed at a dead address."""
    port = request.getfixturevalue(f"{kind}_port")
    worker = (
        deployment.worker(
            **JOINS,
            NEARLINE_ATTRIBUTE_STORE="aerospike",
            NEARLINE_AEROSPIKE_HOSTS=f"127.0.0.1:{port}",
            NEARLINE_AEROSPIKE_CONNECT_TIMEOUT="300ms",
            NEARLINE_AEROSPIKE_TOTAL_TIMEOUT="200ms",
            NEARLINE_AEROSPIKE_RETRIES="0",
        )
        .start()
        .wait_ready()
    )
    deployment.produce([action(n, f"job-{n}", member=f"m{n % 3}") for n in range(30)])
    wait_until(lambda: worker.metric("nearline_events_applied_total") == 30, timeout=60)
    started = time.monotonic()
    response = worker.get("/v1/members/m1/features")
    assert time.monotonic() - started < 3.0  # bounded by the timeouts, not hanging
    body = response.json()
    assert response.status_code == 200 and body["attribute_store"] == "unavailable"
    assert len(body["recent_actions"]) == 10
    assert all(a["joined"] is False for a in body["recent_actions"])
    assert all("embedding" in a["missing"] for a in body["recent_actions"])
    assert worker.metric('nearline_attribute_joins_total{outcome="store_unavailable"}') > 0
    wait_until(lambda: worker.get("/readyz").json()["attribute_store"]["ok"] is False, timeout=15)
    assert worker.metric("nearline_attribute_store_up") == 0
    assert worker.get("/readyz").status_code == 200  # still serving what it has


def test_attributes_load_reports_bad_lines_and_feeds_every_worker(
    deployment: Deployment, tmp_path: Path
) -> None:
    worker = deployment.worker(**JOINS).start().wait_ready()
    items = tmp_path / "items.jsonl"
    items.write_text(
        '{"item_id": "a", "embedding": [0.1, 0.2, 0.3, 0.4], "attributes": {"category": "x"}}\n'
        '{"item_id": "b", "embedding": [1, 2]}\n'
        "not json\n"
        '{"item_id": "c", "embedding": [0, 0, 0, NaN]}\n'
        '{"item_id": "d", "geo": {"lat": 52.1, "lon": 4.3}}\n'
    )
    done = run_cli(worker, "attributes", "load", "--quiet", str(items))
    assert done.returncode == 0, done.stderr
    assert "loaded 2 items, skipped 3" in done.stdout
    assert f"{items}:2: skipped: embedding has dimension 2, expected 4" in done.stderr
    assert f"{items}:3: skipped" in done.stderr and f"{items}:4: skipped" in done.stderr
    wait_until(lambda: worker.metric('nearline_attribute_records_total{outcome="upserted"}') == 2)
