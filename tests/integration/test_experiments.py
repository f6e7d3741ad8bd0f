"""An experiment's online figures against the same figures computed offline from the export."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from nearline.app.compose import vectorizer_from_settings
from nearline.app.traffic import demo_items
from nearline.cli import main
from nearline.foundation import codec
from nearline.model.dataset import ExampleSet, read_examples
from nearline.model.experiments import Arm, Experiment, arm_results, response_outcome
from nearline.model.heuristic import HEURISTIC_VERSION as H
from nearline.model.registry import ModelRegistry
from tests.integration.conftest import Deployment, wait_until
from tests.integration.test_ingest import records
from tests.unit.model.test_registry import scorer_for

pytestmark = pytest.mark.integration

CANDIDATES = [f"item-{n}" for n in range(40)]
MEMBERS = [f"h{n}" for n in range(200)]
ROUNDS = 3
HORIZON = 5.0
#: What the export has of an outcome: its labels, so not the dismisses.
OFFLINE_METRICS = ("ndcg_at_10", "mrr", "positive_rate")


async def _round(
    url: str, rng: random.Random, experiment: str = "offline"
) -> tuple[int, list[dict[str, Any]]]:
    """One request per member, 16 at a time, each served in ``experiment``, and the members'
    reactions to what they were shown: a click that gets rarer down the list (an apply after
    some), a dismiss now and then. (``python -m bench.screenshots`` drives its traffic too.)"""
    reactions: list[dict[str, Any]] = []
    queue = iter(MEMBERS)
    served = 0
    async with httpx.AsyncClient(timeout=30) as client:

        async def run() -> None:
            nonlocal served
            for member in queue:
                body = {"member_id": member, "candidates": CANDIDATES, "k": 10}
                answer = (await client.post(f"{url}/v1/recommendations", json=body)).json()
                assert answer["experiment"]["id"] == experiment, answer
                served += 1
                for position, item in enumerate(answer["items"]):
                    draw = rng.random()
                    if draw < 0.15 * 0.8**position:
                        actions = ["click", "apply"] if draw < 0.03 else ["click"]
                    elif draw > 0.95:
                        actions = ["dismiss"]
                    else:
                        continue
                    reactions.extend(
                        {
                            "event_id": uuid.uuid4().hex,
                            "member_id": member,
                            "item_id": item["item_id"],
                            "action": action,
                            "ts": time.time(),
                        }
                        for action in actions
                    )

        await asyncio.gather(*(run() for _ in range(16)))
    return served, reactions


def offline_sets(examples: ExampleSet, arms: dict[str, str]) -> list[dict[str, Any]]:
    """Each exported request as an arm's outcome, as :func:`nearline.model.experiments.arm_results`
    takes it: the arm is the request's ranker (``arms``: version to arm), the served order
    is the request's rows in export order (top first), a positive is a row labelled 1."""
    sets: dict[str, dict[str, Any]] = {}
    rows: dict[str, tuple[list[str], dict[str, set[str]]]] = {}
    for request, member, version, item, label in zip(
        examples.request_id,
        examples.member_id,
        examples.model_version,
        examples.item_id,
        examples.label,
        strict=True,
    ):
        ranked, reacted = rows.setdefault(request, ([], {}))
        ranked.append(item)
        if label:
            reacted[item] = {"click"}
        sets.setdefault(request, {"request_id": request, "member_id": member, "arm": arms[version]})
    return [
        {
            **found,
            "experiment": {"id": "offline", "arm": found["arm"], **response_outcome(*rows[r])},
        }
        for r, found in sets.items()
    ]


def test_status_agrees_with_the_metrics_of_the_exported_examples(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Held-out style: logged traffic with real outcomes, one arm ranked by the heuristic
    and one by a model version; ``status``'s figure of each arm is within its interval of
    the same figure computed offline from ``nearline export-training``'s examples."""
    settings = deployment.app_settings()
    model_dir = tmp_path / "models"
    registry = ModelRegistry(model_dir, vectorizer_from_settings(settings))
    registry.save(scorer_for(registry.vectorizer, 1), {}, version="v1")
    experiment = Experiment(
        "offline", (Arm("heuristic", H, "fresh", 0.5), Arm("model", "v1", "fresh", 0.5))
    )
    registry.start_experiment(experiment)
    env = {"NEARLINE_MODEL_DIR": str(model_dir), "NEARLINE_OUTCOME_HORIZON": f"{HORIZON}s"}
    worker = deployment.worker(NEARLINE_UNLABELED_AS="negative", **env).start().wait_ready()
    items = list(demo_items(len(CANDIDATES), settings.embedding_dim))
    deployment.produce_to(settings.topic_item_attributes, items)
    worker.wait_for_metric(
        'nearline_attribute_records_total{outcome="upserted"}', len(items), timeout=30
    )

    rng = random.Random(26)
    responses = 0
    for _ in range(ROUNDS):
        served, reactions = asyncio.run(_round(worker.url, rng))
        deployment.produce(records(reactions))
        responses += served
    wait_until(
        lambda: worker.metric('nearline_outcome_responses_total{outcome="labelled"}') >= responses,
        timeout=30,
        message=f"{responses} responses labelled",
    )

    cli_env = {**deployment.settings, **env}
    status = CliRunner().invoke(main, ["experiment", "status", "--json"], env=cli_env)
    assert status.exit_code == 0, status.output
    online = codec.loads(status.stdout)["arms"]
    out = tmp_path / "examples.parquet"
    exported = CliRunner().invoke(main, ["export-training", "--out", str(out)], env=cli_env)
    assert exported.exit_code == 0, exported.output
    offline = arm_results(
        offline_sets(read_examples(out), {H: "heuristic", "v1": "model"}), experiment
    ).arms

    assert sum(online[arm]["totals"]["responses"] for arm in online) == responses
    for arm, result in offline.items():
        totals = online[arm]["totals"]
        assert (totals["responses"], totals["impressions"]) == (
            result.totals["responses"],
            result.totals["impressions"],
        ), arm
        assert online[arm]["members"] == result.members, arm
        assert result.totals["positives"] > 0, arm  # the members did react, in both arms
        for metric in OFFLINE_METRICS:
            shown = online[arm]["metrics"][metric]
            value = result.metrics[metric][0]
            assert shown["low"] <= value <= shown["high"], (arm, metric, value, shown)
            assert np.isclose(value, shown["value"]), (arm, metric, value, shown)
