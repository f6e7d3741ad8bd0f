"""Recommendations end to end: fresh actions change the ranking, the log, outcomes, training."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nearline.foundation import codec
from nearline.model.dataset import read_examples, write_examples
from nearline.model.feature_log import logged_rows
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from nearline.simulation.examples import WorldConfig, generate_examples
from tests.integration.conftest import Deployment, Worker, wait_until
from tests.integration.helpers import pending_outcomes, read_to_end, run_cli
from tests.integration.test_attributes import JOINS, item

pytestmark = pytest.mark.integration


def recommend(worker: Worker, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{worker.url}/v1/recommendations", json=body, headers=headers, timeout=10)


def act(n: int, member: str, item_id: str, action: str = "click") -> tuple[bytes, bytes]:
    body = {
        "event_id": f"{member}-{n}",
        "member_id": member,
        "item_id": item_id,
        "action": action,
        "ts": time.time(),
    }
    return member.encode(), codec.dumps(body)


def load_items(deployment: Deployment, worker: Worker) -> None:
    topic = deployment.settings["NEARLINE_TOPIC_ITEM_ATTRIBUTES"]
    deployment.produce_to(
        topic,
        [
            item("x", "engineering", [1, 0, 0, 0]),
            item("y", "design", [0, 1, 0, 0]),
            item("near-x-1", "engineering", [0.9, 0.1, 0, 0]),
            item("near-x-2", "engineering", [0.95, 0, 0.05, 0]),
        ],
    )
    wait_until(lambda: worker.metric('nearline_attribute_records_total{outcome="upserted"}') == 4)


def test_fresh_actions_change_the_ranking_and_every_response_is_logged(
    deployment: Deployment,
) -> None:
    worker = deployment.worker(**JOINS).start().wait_ready()
    load_items(deployment, worker)
    ask = {"member_id": "m1", "candidates": ["y", "x", "unknown-item"], "k": 3}
    before = recommend(worker, ask)
    assert before.status_code == 200, before.text
    assert (
        before.json()["model_version"] == "heuristic-v1" and before.json()["ranker"] == "heuristic"
    )
    assert {i["item_id"] for i in before.json()["items"] if i.get("unknown")} == {"unknown-item"}
    scores_before = {i["item_id"]: i["score"] for i in before.json()["items"]}

    deployment.produce([act(1, "m1", "near-x-1"), act(2, "m1", "near-x-2", "apply")])
    wait_until(lambda: worker.metric("nearline_events_applied_total") == 2)
    after = recommend(worker, ask).json()
    scores_after = {i["item_id"]: i["score"] for i in after["items"]}
    assert after["items"][0]["item_id"] == "x"  # close to what m1 just engaged with
    assert scores_after["x"] - scores_after["y"] > scores_before["x"] - scores_before["y"]

    # The batch view: features as of before the actions rank as before.
    as_before = recommend(worker, {**ask, "features_as_of": time.time() - 3600}).json()
    assert {i["item_id"]: i["score"] for i in as_before["items"]} == scores_before

    log = deployment.consume(deployment.settings["NEARLINE_TOPIC_RECOMMENDATIONS_LOG"], expected=3)
    records = {r["request_id"]: r for r in (codec.loads(m.value) for m in log)}
    logged = records[after["request_id"]]
    assert logged["member_id"] == "m1" and logged["model_version"] == "heuristic-v1"
    assert logged["ranked"] == [i["item_id"] for i in after["items"]]
    item_ids, matrix = logged_rows(logged)
    assert item_ids == logged["ranked"]  # what was shown, top first
    assert matrix.shape == (3, len(logged["feature_names"]))
    unknown = matrix[:, logged["feature_names"].index("candidate_unknown")]
    assert dict(zip(item_ids, unknown.tolist(), strict=True)) == {
        "x": 0.0,
        "y": 0.0,
        "unknown-item": 1.0,
    }


def test_outcomes_become_training_examples_and_export(
    deployment: Deployment, tmp_path: Path
) -> None:
    worker = deployment.worker(**JOINS, NEARLINE_OUTCOME_HORIZON="3s").start().wait_ready()
    load_items(deployment, worker)
    response = recommend(worker, {"member_id": "m2", "candidates": ["x", "y", "near-x-1"]}).json()
    deployment.produce([act(1, "m2", "x", "apply"), act(2, "m2", "y", "dismiss")])
    wait_until(lambda: worker.metric('nearline_outcome_responses_total{outcome="labelled"}') == 1)
    # Nothing is pending any more, so nothing can be labelled after this: one example set.
    wait_until(lambda: pending_outcomes(deployment) == {}, message="no response pending")
    (record,) = read_to_end(deployment, deployment.settings["NEARLINE_TOPIC_TRAINING_EXAMPLES"])
    example_set = codec.loads(record.value)
    assert example_set["request_id"] == response["request_id"]
    labelled = zip(
        example_set["item_ids"], example_set["labels"], example_set["outcomes"], strict=True
    )
    assert {item: (label, outcome) for item, label, outcome in labelled} == {
        "x": (1, "apply"),
        "y": (0, "dismiss"),
        "near-x-1": (0, "none"),
    }
    out = tmp_path / "examples.parquet"
    done = run_cli(worker, "export-training", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 3 examples (1 positive) of 1 requests" in done.stdout
    exported = read_examples(out)
    assert sorted(exported.item_id) == ["near-x-1", "x", "y"] and int(exported.label.sum()) == 1


def test_a_trained_model_is_hot_reloaded_under_load_without_a_failed_request(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Also: PyTorch (~225 MB of a worker's memory) is loaded only once a model is served."""
    models = tmp_path / "models"
    worker = (
        deployment.worker(
            **JOINS, NEARLINE_MODEL_DIR=str(models), NEARLINE_MODEL_RELOAD_INTERVAL="500ms"
        )
        .start()
        .wait_ready()
    )
    load_items(deployment, worker)
    ask = {"member_id": "m3", "candidates": ["x", "y", "near-x-1", "near-x-2"]}
    first = recommend(worker, ask).json()
    assert first["model_version"] == "heuristic-v1"
    assert not worker.maps("libtorch"), "a worker serving the heuristic has loaded torch"

    # Examples from the synthetic world, vectorized exactly as this worker does.
    vectorizer = Vectorizer(VectorizerConfig(embedding_dim=4))
    examples = generate_examples(WorldConfig(seed=1, embedding_dim=4, n_requests=300), vectorizer)
    path = tmp_path / "train.parquet"
    write_examples(path, examples)

    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(f"{worker.url}/v1/recommendations", json=ask)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])

    traffic = threading.Thread(target=load)
    traffic.start()
    try:
        trained = run_cli(
            worker, "train", str(path), "--max-epochs", "5", timeout=180, NEARLINE_EMBEDDING_DIM="4"
        )
        assert trained.returncode == 0, trained.stderr
        assert "gate PASSED" in trained.stdout, trained.stdout
        wait_until(lambda: len(versions) >= 2, timeout=30, message="the new model serving")
    finally:
        stop.set()
        traffic.join()
    assert statuses and set(statuses) == {200}, (
        f"{len(statuses)} requests, statuses {set(statuses)}"
    )
    after = recommend(worker, ask).json()
    assert after["ranker"] == "model" and after["model_version"] != "heuristic-v1"
    assert worker.maps("libtorch")
    assert [i["score"] for i in after["items"]] != [i["score"] for i in first["items"]]

    # A way back: the worker follows `nearline model rollback` within the reload interval.
    rolled = run_cli(worker, "model", "rollback", NEARLINE_EMBEDDING_DIM="4")
    assert rolled.returncode == 0 and "serving heuristic-v1" in rolled.stdout, rolled.stderr
    wait_until(
        lambda: recommend(worker, ask).json()["model_version"] == "heuristic-v1",
        timeout=30,
        message="the heuristic serving again after the rollback",
    )


def test_bad_requests_get_a_4xx_that_says_what_is_wrong(deployment: Deployment) -> None:
    worker = (
        deployment.worker(NEARLINE_MAX_CANDIDATES="5", NEARLINE_API_TOKEN="s3cret")
        .start()
        .wait_ready()
    )
    auth = {"authorization": "Bearer s3cret"}
    assert recommend(worker, {"member_id": "m", "candidates": ["a"]}).status_code == 401
    assert worker.get("/v1/members/m/features").status_code == 401
    cases = [
        (b"not json", 400, "not JSON"),
        (codec.dumps({"member_id": "m"}), 422, "candidates"),
        (codec.dumps({"member_id": "m", "candidates": ["a"], "k": 0}), 422, "k"),
        (codec.dumps({"member_id": "m", "candidates": ["a"], "extra": 1}), 422, "extra"),
        (
            codec.dumps({"member_id": "m", "candidates": [str(i) for i in range(6)]}),
            422,
            "limit of 5",
        ),
        (b'{"member_id": "m", "candidates": ["' + b"a" * (2 << 20) + b'"]}', 413, "limit"),
    ]
    for body, status, words in cases:
        r = httpx.post(f"{worker.url}/v1/recommendations", content=body, headers=auth, timeout=10)
        assert r.status_code == status, (body[:60], r.text)
        assert words in r.json()["error"]
    cold = recommend(worker, {"member_id": "never-seen", "candidates": ["a", "b"]}, **auth)
    assert cold.status_code == 200 and len(cold.json()["items"]) == 2
    assert httpx.get(f"{worker.url}/openapi.json").json()["paths"]["/v1/recommendations"]
