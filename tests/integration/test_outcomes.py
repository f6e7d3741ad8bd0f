"""Serving never stops ingest: the outcomes join, restarts under a backlog, and stall detection."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from nearline.cli import main
from nearline.foundation import codec
from nearline.foundation.kafka import partition_for_key
from nearline.model.experiments import Arm, Experiment
from nearline.model.heuristic import HEURISTIC_VERSION as H
from nearline.model.registry import ModelRegistry
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from tests.integration.conftest import Deployment, Worker, wait_until
from tests.integration.helpers import pending_outcomes, read_to_end
from tests.integration.test_ingest import make_events, records

pytestmark = pytest.mark.integration

#: Faust's stream read-ahead the old outcomes agent had: every backlog here is 10x it.
READ_AHEAD = 256
CANDIDATES = [f"item-{n}" for n in range(50)]


async def _burst(
    url: str,
    count: int,
    *,
    concurrency: int = 16,
    prefix: str = "b",
    arms: dict[str, str] | None = None,
) -> list[str]:
    """``count`` recommendation requests, ``concurrency`` at a time; their request ids
    (and in ``arms`` each one's experiment arm)."""
    ids: list[str] = []
    queue = iter(range(count))
    async with httpx.AsyncClient(timeout=30) as client:

        async def run() -> None:
            for n in queue:
                body = {"member_id": f"{prefix}{n % 500}", "candidates": CANDIDATES, "k": 10}
                response = await client.post(f"{url}/v1/recommendations", json=body)
                assert response.status_code == 200, response.text
                answer = response.json()
                ids.append(answer["request_id"])
                if arms is not None:
                    arms[answer["request_id"]] = answer["experiment"]["arm"]

        await asyncio.gather(*(run() for _ in range(concurrency)))
    return ids


def burst(
    worker: Worker, count: int, prefix: str = "b", arms: dict[str, str] | None = None
) -> list[str]:
    return asyncio.run(_burst(worker.url, count, prefix=prefix, arms=arms))


def ingests_at_once(deployment: Deployment, worker: Worker, count: int, seed: int) -> None:
    """``count`` fresh actions are all applied within seconds, and lag comes back to 0."""
    before = worker.metric("nearline_events_in_total")
    events = make_events(count, members=60, now=time.time(), seed=seed)
    deployment.produce(records(events))
    wait_until(
        lambda: worker.metric("nearline_events_in_total") >= before + count,
        timeout=20,
        message=f"{count} actions applied",
    )
    wait_until(
        lambda: all(p["lag"] == 0 for p in worker.get("/readyz").json()["lag"]),
        timeout=10,
        message="lag back to 0",
    )


def test_a_burst_of_recommendations_before_any_action_does_not_hold_ingest(
    deployment: Deployment,
) -> None:
    worker = deployment.worker().start().wait_ready()
    served = burst(worker, 10 * READ_AHEAD + 440)
    assert len(set(served)) == 3000
    ingests_at_once(deployment, worker, 300, seed=1)
    wait_until(
        lambda: worker.metric('nearline_outcome_responses_total{outcome="stored"}') == 3000,
        message="every response stored in the join's state",
    )
    assert worker.get("/healthz").status_code == 200


def test_a_worker_restarted_after_serving_ingests_at_once(deployment: Deployment) -> None:
    worker = deployment.worker().start().wait_ready()
    burst(worker, 10 * READ_AHEAD)
    ingests_at_once(deployment, worker, 100, seed=2)
    worker.stop()  # SIGTERM, as a rolling restart does
    again = deployment.worker("w1-again", NEARLINE_DATA_DIR=worker.env["NEARLINE_DATA_DIR"])
    again.start().wait_ready()
    # A clean stop keeps local state: recovery reads only the changelogs' tails.
    assert "did not stop cleanly" not in again.log_path.read_text(errors="replace")
    ingests_at_once(deployment, again, 300, seed=3)
    again.stop()
    # A new app id on the same topics: a new group that reads the whole backlog of responses.
    fresh = deployment.worker(
        "w2-new-app", NEARLINE_APP_ID=f"{deployment.settings['NEARLINE_APP_ID']}-b"
    )
    fresh.start().wait_ready()
    ingests_at_once(deployment, fresh, 300, seed=4)
    wait_until(
        lambda: (
            fresh.metric('nearline_outcome_responses_total{outcome="stored"}') >= 10 * READ_AHEAD
        ),
        message="the backlog of responses stored",
    )


# The restarted worker may read log records again that were already labelled (here, about one
# run in five, a fetch from an older position before the seek to the committed offsets):
# neither may be stored, and labelled, a second time. An experiment runs meanwhile: its
# per-arm accounting must come out exact too.
@pytest.mark.parametrize("keep_local_state", [False, True], ids=["rocksdb-deleted", "rocksdb-kept"])
def test_sigkill_with_pending_responses_yields_each_example_set_exactly_once(
    deployment: Deployment, keep_local_state: bool, tmp_path: Path
) -> None:
    horizon = 4.0
    model_dir = tmp_path / "models"
    experiment = Experiment("kill", (Arm("fresh", H, "fresh", 0.5), Arm("daily", H, "daily", 0.5)))
    ModelRegistry(model_dir, Vectorizer(VectorizerConfig())).start_experiment(experiment)
    env = {"NEARLINE_OUTCOME_HORIZON": f"{horizon}s", "NEARLINE_MODEL_DIR": str(model_dir)}
    worker = deployment.worker(**env).start().wait_ready()
    arms: dict[str, str] = {}
    served = burst(worker, 1200, prefix="k", arms=arms)
    # Kill once labelling is under way and responses are still pending.
    wait_until(
        lambda: worker.metric('nearline_outcome_responses_total{outcome="labelled"}') > 0,
        timeout=30,
        interval=0.05,
        message="labelling under way",
    )
    worker.kill()
    data_dir = Path(worker.env["NEARLINE_DATA_DIR"])
    if not keep_local_state:
        shutil.rmtree(data_dir)
    restarted = deployment.worker("w1-restarted", NEARLINE_DATA_DIR=str(data_dir), **env)
    restarted.start().wait_ready()
    if keep_local_state:
        # RocksDB may hold writes its changelogs never got: it is restored from them instead.
        assert "did not stop cleanly" in restarted.log_path.read_text(errors="replace")
    # Done when the state holds nothing: no response, no pass in progress. Nothing can
    # write examples after that, so the count below is final.
    wait_until(
        lambda: pending_outcomes(deployment) == {},
        timeout=60,
        interval=1,
        message="every pending response labelled",
    )
    topic = deployment.settings["NEARLINE_TOPIC_TRAINING_EXAMPLES"]
    sets = [codec.loads(r.value) for r in read_to_end(deployment, topic)]
    per_request = Counter(s["request_id"] for s in sets)
    assert set(per_request) == set(served)
    assert [rid for rid, n in per_request.items() if n != 1] == []
    assert all(len(s["item_ids"]) == 10 for s in sets)  # the k served of each response

    # Per arm, the status command's figures are the oracle's: the responses served in the arm.
    env_for_cli = {**deployment.settings, "NEARLINE_MODEL_DIR": str(model_dir)}
    status = CliRunner().invoke(main, ["experiment", "status", "--json"], env=env_for_cli)
    assert status.exit_code == 0, status.output
    results = codec.loads(status.stdout)["arms"]
    oracle = Counter(arms.values())
    assert set(oracle) == {"fresh", "daily"}
    for arm, count in oracle.items():
        totals = results[arm]["totals"]
        assert (totals["responses"], totals["impressions"]) == (count, 10 * count), arm
        assert totals["clicks"] == totals["dismisses"] == 0  # nobody acted on these

    # The restarted worker's live view (the console's panel, /metrics) comes to the same.
    def live_totals() -> dict[str, tuple[float, float]]:
        view = restarted.get("/v1/console/experiment").json()
        return {
            arm: (result["totals"]["responses"], result["totals"]["impressions"])
            for arm, result in view["arms"].items()
        }

    expected = {arm: (count, 10 * count) for arm, count in oracle.items()}
    wait_until(lambda: live_totals() == expected, timeout=20, message="the live view exact")
    gauge = 'nearline_experiment_metric{arm="fresh",bound="value",experiment="kill",metric="mrr"}'
    assert f"{gauge} 0.0" in restarted.get("/metrics").text.splitlines()
    # The arm is the hash's: the same for every response of one member.
    by_member: dict[str, set[str]] = {}
    for example_set in sets:
        by_member.setdefault(example_set["member_id"], set()).add(example_set["experiment"]["arm"])
    assert all(len(found) == 1 for found in by_member.values())


def test_a_click_after_two_servings_is_one_positive_of_the_later_response(
    deployment: Deployment,
) -> None:
    """Last touch, through serving, the log, the join's state and the examples topic."""
    worker = deployment.worker(NEARLINE_OUTCOME_HORIZON="5s").start().wait_ready()
    body = {"member_id": "touch", "candidates": CANDIDATES[:5], "k": 3}
    first, second = (
        httpx.post(f"{worker.url}/v1/recommendations", json=body, timeout=30).json()
        for _ in range(2)
    )
    item = first["items"][0]["item_id"]
    assert item in [entry["item_id"] for entry in second["items"]]
    click = {"event_id": "touch-1", "member_id": "touch", "item_id": item, "action": "click"}
    deployment.produce(records([{**click, "ts": time.time()}]))
    wait_until(
        lambda: worker.metric('nearline_outcome_responses_total{outcome="labelled"}') == 2,
        timeout=30,
        message="both responses labelled",
    )
    topic = deployment.settings["NEARLINE_TOPIC_TRAINING_EXAMPLES"]
    examples = [codec.loads(r.value) for r in read_to_end(deployment, topic)]
    sets = {found["request_id"]: found for found in examples}
    assert set(sets) == {first["request_id"], second["request_id"]}
    positives = [
        (request_id, item_id)
        for request_id, found in sets.items()
        for item_id, label in zip(found["item_ids"], found["labels"], strict=True)
        if label == 1
    ]
    assert positives == [(second["request_id"], item)]
    assert pending_outcomes(deployment) == {}  # what they served went with them


def test_a_stalled_partition_turns_the_liveness_probe_red(deployment: Deployment) -> None:
    worker = deployment.worker(NEARLINE_STALL_TIMEOUT="3s")
    worker.start(module="tests.integration.stalling_worker").wait_ready()
    assert worker.get("/healthz").status_code == 200
    members = [f"s{n}" for n in range(40)]
    on_zero = [m for m in members if partition_for_key(m.encode(), deployment.partitions) == 0]
    assert on_zero, "some member must hash to partition 0"
    now = time.time()
    events: list[dict[str, Any]] = [
        {"event_id": f"e{n}", "member_id": m, "item_id": "x", "action": "click", "ts": now}
        for n, m in enumerate(members)
    ]
    deployment.produce(records(events))

    def red() -> bool:
        return worker.get("/healthz").status_code == 503

    wait_until(red, timeout=30, message="the liveness probe turns red")
    body = worker.get("/healthz").json()
    assert f"{deployment.topic}[0]" in body["reason"] and "NEARLINE_STALL_TIMEOUT" in body["reason"]
    stalled = {(p["topic"], p["partition"]): p for p in body["lag"]}
    assert stalled[(deployment.topic, 0)]["lag"] > 0
    assert stalled[(deployment.topic, 0)]["stalled_seconds"] >= 3
    assert worker.get("/readyz").status_code == 503
    assert worker.metric("nearline_partition_stalled_seconds") >= 3
