"""Experiments: stable arm assignment, refused definitions, arm fallback, per-arm results."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from click.testing import CliRunner

from nearline.agents.outcomes import label_response
from nearline.app.experiments import decide_promotion, status_text
from nearline.app.exporting import examples_to_set
from nearline.app.recommend import RecommendationRequest, Recommender
from nearline.attribute_store import CachedAttributeStore
from nearline.cli import main
from nearline.foundation import codec
from nearline.model.experiments import (
    EXPERIMENT_FILE,
    Arm,
    Assigner,
    Experiment,
    ExperimentError,
    ExperimentResults,
    arm_results,
    compare,
    daily_cutoff,
    parse_arm,
)
from nearline.model.feature_log import log_record
from nearline.model.heuristic import HEURISTIC_VERSION, HeuristicRanker
from nearline.model.registry import ModelRegistry
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from tests.unit.attribute_store.conftest import RecordingStore
from tests.unit.model.test_registry import scorer_for

H = HEURISTIC_VERSION


def two_arms(experiment_id: str = "e1", control: str = H, treatment: str = H) -> Experiment:
    return Experiment(
        experiment_id,
        (Arm("control", control, "fresh", 0.5), Arm("treatment", treatment, "daily", 0.5)),
    )


@pytest.fixture
def vectorizer() -> Vectorizer:
    return Vectorizer(VectorizerConfig(embedding_dim=4))


# -- assignment ----------------------------------------------------------------------------


def test_assignment_is_stable_and_follows_the_shares() -> None:
    experiment = Experiment(
        "shares",
        (Arm("a", H, "fresh", 0.5), Arm("b", H, "fresh", 0.3), Arm("c", H, "daily", 0.2)),
    )
    members = [f"member-{n}" for n in range(10_000)]
    first = [Assigner(experiment).index(m) for m in members]
    # Another worker, or this one restarted: a new assigner from the definition as stored.
    again = Assigner(Experiment.from_dict(orjson.loads(orjson.dumps(experiment.to_dict()))))
    assert [again.index(m) for m in members] == first
    counts = Counter(first)
    for index, arm in enumerate(experiment.arms):
        assert abs(counts[index] / len(members) - arm.share) <= 0.02, (arm, counts)
    # blake2b, not Python's salted hash(): the same in every process, release and restart.
    assert first[:12] == [0, 1, 0, 1, 0, 1, 2, 1, 1, 2, 2, 1]
    # Another experiment splits the same members independently of this one.
    other = Assigner(Experiment("other", experiment.arms))
    assert [other.index(m) for m in members[:200]] != first[:200]


def test_daily_cutoff_is_the_previous_midnight_utc() -> None:
    midnight = 1_764_374_400.0  # 2025-11-29 00:00 UTC
    assert daily_cutoff(midnight + 86_399.5) == midnight
    assert daily_cutoff(midnight) == midnight == daily_cutoff(midnight + 86_400.0) - 86_400.0


def test_an_experiment_may_define_a_compressed_day() -> None:
    """A simulation at 2000x: a day of 43.2 s from the simulated clock's start, kept through
    the definition file; production's default stays midnight UTC."""
    origin, length = 1_764_374_412.25, 86_400.0 / 2000.0
    assert daily_cutoff(origin + 2.5 * length, origin, length) == pytest.approx(origin + 2 * length)
    assert daily_cutoff(origin + length, origin, length) == pytest.approx(origin + length)
    assert daily_cutoff(origin - 1.0, origin, length) == pytest.approx(origin - length)
    compressed = replace(two_arms(), day_origin=origin, day_length=length)
    compressed.check()
    again = Experiment.from_dict(orjson.loads(orjson.dumps(compressed.to_dict())))
    assert again == compressed
    assert again.cutoff(origin + 10.0 * length + 1.0) == pytest.approx(origin + 10.0 * length)
    # A definition written before the day was configurable reads as midnight UTC.
    legacy = {k: v for k, v in two_arms().to_dict().items() if not k.startswith("day_")}
    assert Experiment.from_dict(legacy).cutoff(1_764_374_400.0 + 5.0) == 1_764_374_400.0
    with pytest.raises(ExperimentError, match="day_length 0"):
        replace(two_arms(), day_length=0.0).check()


def test_a_daily_arm_follows_the_experiments_day(tmp_path: Path, vectorizer: Vectorizer) -> None:
    """The registry hands a request the running experiment's day, and keeps it on stop."""
    registry = ModelRegistry(tmp_path, vectorizer)
    origin, length = 1_000_000.5, 43.2
    registry.start_experiment(replace(two_arms(), day_origin=origin, day_length=length))
    registry.load_latest()
    assignment = registry.assign("m1")
    assert assignment is not None
    assert assignment.cutoff(origin + 3 * length + 7.0) == pytest.approx(origin + 3 * length)
    stopped = registry.stop_experiment()
    assert (stopped.day_origin, stopped.day_length) == (origin, length)
    assert registry.read_experiment() == stopped


def test_the_cli_starts_an_experiment_with_its_own_day(tmp_path: Path) -> None:
    """``--day-origin``/``--day-length`` reach the definition every worker reads; a day
    that is not positive is refused before anything is written."""
    args = ["experiment", "start", "e1", "--model-dir", str(tmp_path)]
    args += ["--arm", "a:heuristic-v1:fresh:0.5", "--arm", "b:heuristic-v1:daily:0.5"]
    refused = CliRunner().invoke(main, [*args, "--day-length", "0"])
    assert refused.exit_code == 1, refused.output
    assert "day_length 0.0 must be positive" in refused.output
    assert not (tmp_path / EXPERIMENT_FILE).exists()
    started = CliRunner().invoke(main, [*args, "--day-origin", "1000.5", "--day-length", "43.2"])
    assert started.exit_code == 0, started.output
    stored = ModelRegistry(tmp_path, Vectorizer(VectorizerConfig())).read_experiment()
    assert stored is not None
    assert (stored.day_origin, stored.day_length) == (1000.5, 43.2)
    assert stored.cutoff(1000.5 + 3 * 43.2 + 1.0) == pytest.approx(1000.5 + 3 * 43.2)


# -- bad definitions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        (["a:heuristic-v1:fresh:0.5", "b:heuristic-v1:daily:0.4"], "sum to 0.9, not 1"),
        (["a:heuristic-v1:fresh:1.0"], "at least two arms"),
        (["a:heuristic-v1:fresh:0.5", "a:heuristic-v1:daily:0.5"], "must differ"),
        (["a:heuristic-v1:fresh:0.5", "b:nope:daily:0.5"], "no model version 'nope'"),
        (["a:heuristic-v1:hourly:0.5", "b:heuristic-v1:daily:0.5"], "fresh or daily"),
        (["a:heuristic-v1:0.5", "b:heuristic-v1:daily:0.5"], "NAME:VERSION:FEATURES:SHARE"),
    ],
)
def test_bad_definitions_are_refused_with_a_reason(
    tmp_path: Path, arms: list[str], message: str
) -> None:
    args = ["experiment", "start", "e1", "--model-dir", str(tmp_path)]
    for arm in arms:
        args += ["--arm", arm]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not (tmp_path / EXPERIMENT_FILE).exists()


def test_one_experiment_at_a_time(tmp_path: Path, vectorizer: Vectorizer) -> None:
    registry = ModelRegistry(tmp_path, vectorizer, backend="default")
    registry.start_experiment(two_arms("first"))
    with pytest.raises(ExperimentError, match="experiment first is running; one experiment"):
        registry.start_experiment(two_arms("second"))
    stopped = registry.stop_experiment()
    assert stopped.id == "first" and not stopped.running
    with pytest.raises(ExperimentError, match="experiment first ran before"):
        registry.start_experiment(two_arms("first"))
    registry.start_experiment(two_arms("second"))
    current = registry.read_experiment()
    assert current is not None and current.running
    assert (current.id, current.arms) == ("second", two_arms().arms)


# -- serving -------------------------------------------------------------------------------


def test_workers_follow_the_experiment_and_a_deleted_version_falls_back_to_the_default(
    tmp_path: Path, vectorizer: Vectorizer, caplog: pytest.LogCaptureFixture
) -> None:
    writer = ModelRegistry(tmp_path, vectorizer, backend="default")
    writer.save(scorer_for(vectorizer, 1), {}, version="v1")
    worker = ModelRegistry(tmp_path, vectorizer, backend="default")
    worker.load_latest()  # serves v1, the newest version
    assert worker.assign("m") is None
    writer.activate(H)
    writer.start_experiment(two_arms(treatment="v1"))
    assert worker.maybe_reload()  # the active file changed too: the heuristic is the default
    members = [f"m{n}" for n in range(40)]
    served = {m: worker.assign(m) for m in members}
    assert {a.ranker.version for a in served.values() if a is not None} == {H, "v1"}
    treated = [m for m, a in served.items() if a is not None and a.arm.name == "treatment"]

    for suffix in (".pt", ".json"):
        (tmp_path / f"nearline-model-v1{suffix}").unlink()
    with caplog.at_level(logging.ERROR, logger="nearline.model.registry"):
        worker.maybe_reload()
    assert "arm treatment: model version v1 is gone" in caplog.text
    assert "served by the default ranker" in caplog.text
    for member in treated:
        assignment = worker.assign(member)
        assert assignment is not None and assignment.arm.name == "treatment"
        assert isinstance(assignment.ranker, HeuristicRanker)  # the default, never an error

    writer.stop_experiment()
    worker.maybe_reload()
    assert worker.assign(treated[0]) is None


def test_a_recommendation_is_ranked_and_logged_by_its_arm(
    tmp_path: Path, vectorizer: Vectorizer
) -> None:
    registry = ModelRegistry(tmp_path, vectorizer, backend="default")
    registry.save(scorer_for(vectorizer, 1), {}, version="v1")
    registry.activate(H)
    registry.start_experiment(two_arms(treatment="v1"))
    registry.load_latest()
    logged: list[dict[str, Any]] = []

    class Sink:
        async def log(self, member_id: str, record: dict[str, Any]) -> None:
            logged.append(record)

    cache = CachedAttributeStore(RecordingStore(), maxsize=100, ttl=60.0)
    recommender = Recommender(registry, cache, Sink())
    for member in ("m1", "m2", "m3", "m4", "m5", "m6"):
        assignment = recommender.assign(member)
        assert assignment is not None
        request = RecommendationRequest(member_id=member, candidates=["a", "b", "c"])
        response = asyncio.run(recommender.recommend(request, {}, assignment=assignment))
        arm = {"id": "e1", "arm": assignment.arm.name}
        assert response["experiment"] == arm and logged[-1]["experiment"] == arm
        assert response["model_version"] == assignment.arm.version


# -- outcomes and results ------------------------------------------------------------------


def test_the_join_adds_each_arm_response_its_outcome_even_without_examples() -> None:
    record = codec.loads(
        codec.dumps(
            log_record(
                request_id="r1",
                member_id="m1",
                ts=100.0,
                features_as_of=100.0,
                model_version=H,
                feature_names=["f"],
                item_ids=["a", "b", "c", "d"],
                matrix=np.zeros((4, 1), dtype=np.float32),
                ranked=["a", "b", "c", "d"],
                context={},
                experiment={"id": "e1", "arm": "treatment"},
            )
        )
    )
    actions = [("c", "click", 101.0), ("c", "apply", 102.0), ("a", "dismiss", 101.0)]
    actions += [("d", "save", 103.0), ("b", "click", 99.0)]  # b: before the request
    example_set = label_response(record, actions, horizon=60.0, unlabeled_as="skip")
    assert example_set is not None
    assert example_set["experiment"] == {
        "id": "e1",
        "arm": "treatment",
        "served": 4,
        "apply": 1,
        "click": 1,
        "save": 1,
        "dismiss": 1,
        "positives": [2, 3],
    }
    # No reaction, no example: still one outcome for the arm, which exports as no rows.
    quiet = label_response(record, [], horizon=60.0, unlabeled_as="skip")
    assert quiet is not None and quiet["item_ids"] == [] and quiet["experiment"]["served"] == 4
    exported = examples_to_set([codec.loads(codec.dumps(s)) for s in (quiet, example_set)], ["f"])
    assert list(exported.item_id) == ["a", "c", "d"] and list(exported.label) == [0, 1, 1]
    assert label_response({**record, "experiment": None}, [], 60.0, "skip") is None


def _outcome_sets(
    experiment: Experiment, rates: dict[str, float], members: int, seed: int
) -> list[dict[str, Any]]:
    """Example sets of ``members`` members, 1-5 responses each, a positive at position 0
    with the arm's rate (or none)."""
    rng = np.random.default_rng(seed)
    assigner = Assigner(experiment)
    sets = []
    for n in range(members):
        member = f"m{n}"
        arm = experiment.arms[assigner.index(member)].name
        for r in range(int(rng.integers(1, 6))):
            positive = bool(rng.random() < rates[arm])
            sets.append(
                {
                    "request_id": f"{member}-{r}",
                    "member_id": member,
                    "experiment": {
                        "id": experiment.id,
                        "arm": arm,
                        "served": 10,
                        "click": int(positive),
                        "apply": 0,
                        "save": 0,
                        "dismiss": int(not positive),
                        "positives": [0] if positive else [],
                    },
                }
            )
    return sets


def test_results_equal_the_sums_and_intervals_cover_them() -> None:
    experiment = two_arms()
    sets = _outcome_sets(experiment, {"control": 0.3, "treatment": 0.3}, 400, seed=1)
    duplicate = sets[0]  # a set read twice counts once
    results = arm_results([*sets, duplicate, {"request_id": "x", "member_id": "y"}], experiment)
    for name, result in results.arms.items():
        mine = [s["experiment"] for s in sets if s["experiment"]["arm"] == name]
        positives = sum(1 for o in mine if o["positives"])
        assert result.responses == len(mine)
        assert result.totals["impressions"] == 10 * len(mine)
        assert result.totals["clicks"] == positives
        assert result.metrics["mrr"][0] == pytest.approx(positives / len(mine))
        assert result.metrics["ndcg_at_10"][0] == pytest.approx(positives / len(mine))
        assert result.metrics["dismiss_rate"][0] == pytest.approx(
            (len(mine) - positives) / (10 * len(mine))
        )
        value, low, high = result.metrics["mrr"]
        assert low < value < high
        assert result.mean_first_position == 1.0


def _results(rates: dict[str, float], members: int) -> ExperimentResults:
    experiment = two_arms()
    return arm_results(_outcome_sets(experiment, rates, members, seed=2), experiment)


def test_promotion_needs_an_interval_that_excludes_zero() -> None:
    same = decide_promotion(_results({"control": 0.3, "treatment": 0.3}, 400), "ndcg_at_10")
    refusal = same.refusal()
    assert refusal is not None and "includes 0" in refusal and "--force" in refusal
    better = decide_promotion(_results({"control": 0.2, "treatment": 0.5}, 400), "ndcg_at_10")
    assert better.winner == "treatment" and better.refusal() is None
    fewer_dismisses = decide_promotion(
        _results({"control": 0.2, "treatment": 0.5}, 400), "dismiss_rate"
    )
    assert fewer_dismisses.winner == "treatment" and fewer_dismisses.refusal() is None


def test_status_says_how_many_more_responses_the_effect_needs() -> None:
    small = _results({"control": 0.30, "treatment": 0.36}, 200)
    comparison = compare(small, "ndcg_at_10", "treatment", "control")
    assert not comparison.decided and comparison.more_responses is not None
    # As many responses as it asks for (members scaled alike): the interval excludes 0.
    responses = sum(arm.responses for arm in small.arms.values())
    members = round(200 * (responses + comparison.more_responses) / responses)
    larger = _results({"control": 0.30, "treatment": 0.36}, members)
    assert compare(larger, "ndcg_at_10", "treatment", "control").decided
    text = status_text(small, "ndcg_at_10")
    assert "more responses to decide at this effect size" in text
    assert "control: heuristic-v1 fresh 0.5" in text


def test_promote_refuses_then_force_promotes(
    tmp_path: Path, vectorizer: Vectorizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path, vectorizer, backend="default")
    registry.save(scorer_for(vectorizer, 1), {}, version="v1")
    registry.activate(H)
    experiment = two_arms(treatment="v1")
    registry.start_experiment(experiment)
    sets = _outcome_sets(experiment, {"control": 0.3, "treatment": 0.31}, 100, seed=3)

    async def read(settings: Any, current: Experiment, level: float = 0.95) -> ExperimentResults:
        return arm_results(sets, current, level=level)

    monkeypatch.setattr("nearline.app.experiments.read_results", read)
    monkeypatch.setenv("NEARLINE_EMBEDDING_DIM", "4")  # the CLI's vectorizer, as v1's
    args = ["experiment", "promote", "--arm", "treatment", "--model-dir", str(tmp_path)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "includes 0" in refused.output, refused.output
    assert registry.served().version == H and registry.read_experiment() == experiment
    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "promoted treatment (forced): serving v1" in forced.output
    assert registry.served().version == "v1"
    stopped = registry.read_experiment()
    assert stopped is not None and not stopped.running and stopped.promoted == "treatment"


def test_parse_arm() -> None:
    assert parse_arm("b:v1:daily:0.25") == Arm("b", "v1", "daily", 0.25)


def test_a_daily_arm_reads_features_as_of_the_previous_midnight(tmp_path: Path) -> None:
    from tests.unit.test_web import TestClient, web_app

    app = web_app()
    registry: ModelRegistry = app.state.recommender.registry
    registry.model_dir = tmp_path
    registry.start_experiment(two_arms())  # control fresh, treatment daily
    registry.load_latest()
    client = TestClient(app)
    arms = {}
    for n in range(20):
        body = {"member_id": f"m{n}", "candidates": ["a", "b"]}
        answer = client.post("/v1/recommendations", json=body)
        assert answer.status_code == 200, answer.text
        arms[f"m{n}"] = answer.json()["experiment"]["arm"]
    now = time.time()
    asked = dict(app.state.features.asked)
    assert set(arms.values()) == {"control", "treatment"}
    for member, arm in arms.items():
        if arm == "treatment":
            assert asked[member] == daily_cutoff(now)
        else:
            assert now - 60 < asked[member] <= now
    # A cut-off the caller asks for is kept in either arm.
    member = next(m for m, arm in arms.items() if arm == "treatment")
    body = {"member_id": member, "candidates": ["a"], "features_as_of": 1000.0}
    assert client.post("/v1/recommendations", json=body).status_code == 200
    assert app.state.features.asked[-1] == (member, 1000.0)


class FakeTopic:
    """The training-examples topic as :class:`LiveResults` reads it: one partition."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.position = 0
        self.seeks = 0
        self.fail = False

    async def start(self) -> None: ...

    async def topics(self) -> set[str]:
        return {"training-examples"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, partitions: list[Any]) -> None: ...

    async def seek_to_beginning(self) -> None:
        self.position, self.seeks = 0, self.seeks + 1

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[int, list[Any]]:
        if self.fail:
            self.fail = False
            raise KafkaConnectionError("the broker went away")
        new, self.position = self.values[self.position :], len(self.values)
        return {0: [type("Record", (), {"value": value})() for value in new]}


def test_the_live_view_follows_the_topic_and_the_running_experiment(
    tmp_path: Path, vectorizer: Vectorizer
) -> None:
    from nearline.app.experiments import LiveResults
    from nearline.foundation.metrics import Metrics
    from nearline.foundation.settings import load_settings

    registry = ModelRegistry(tmp_path, vectorizer, backend="default")
    topic = FakeTopic()
    metrics = Metrics()
    live = LiveResults(load_settings(), registry, lambda: topic, metrics.show_arm_results)  # type: ignore[arg-type, return-value]
    asyncio.run(live.poll())
    assert live.view() is None and topic.seeks == 0  # no experiment: nothing read

    experiment = two_arms()
    registry.start_experiment(experiment)
    registry.maybe_reload()
    sets = _outcome_sets(experiment, {"control": 0.3, "treatment": 0.3}, 50, seed=4)
    topic.values += [codec.dumps(s) for s in sets[:40]] + [b"{}", b"not json"]
    asyncio.run(live.poll())
    view = live.view()
    assert view is not None and topic.seeks == 1
    assert sum(a["totals"]["responses"] for a in view["arms"].values()) == 40
    topic.values += [codec.dumps(s) for s in sets]  # the first 40 again: counted once
    topic.fail = True
    asyncio.run(live.poll())  # logged, and read again from the start on the next poll
    live._computed_at = 0.0  # as if the wait between two computations had passed
    asyncio.run(live.poll())
    assert topic.seeks == 2
    view = live.view()
    assert view is not None and view["comparisons"]["treatment"]["metric"] == "ndcg_at_10"
    expected = arm_results(sets, experiment)
    for name, result in view["arms"].items():
        assert result["totals"]["responses"] == expected.arms[name].responses
    assert b'nearline_experiment_metric{arm="control",bound="value"' in metrics.exposition()

    registry.stop_experiment()
    registry.maybe_reload()
    asyncio.run(live.poll())
    assert live.view() is None
    assert b"nearline_experiment_metric{" not in metrics.exposition()
