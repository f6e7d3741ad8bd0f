"""`nearline simulate` end to end: the embedded broker, a real worker, HTTP and Kafka."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from nearline.app.broker import EmbeddedBroker
from nearline.cli import main
from nearline.foundation import codec
from nearline.model.dataset import read_examples
from nearline.simulation.behaviour import BehaviourModel
from nearline.simulation.report import write_report, write_training_report
from nearline.simulation.runner import SimulationConfig, simulate
from nearline.simulation.statistics import compare, permutation_p_values
from nearline.simulation.world import DAY, WorldConfig
from tests.integration.helpers import read_topic_to_end

SECTIONS = (
    "## Results",
    "## Plots",
    "## Design",
    "## Time compression",
    "## Run health",
    "## Parameters",
)


def test_a_small_run_completes_and_reports(broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = SimulationConfig(
        world=WorldConfig(seed=3, members=30, items=500, days=1, warmup_days=1, candidates=50),
        compression=20_000.0,
        model_dir=tmp_path / "models",
    )
    result = simulate(config, broker=broker, progress=False, keep_log=tmp_path / "worker.log")

    measured = [r for r in result.sessions if r.measured]
    assert 0 < len(measured) < len(result.sessions)  # warm-up day, then a measured day
    assert {r.arm for r in measured} == {"nrt", "batch"}
    assert all(r.impressions == config.k for r in result.sessions)
    # Every reaction went through Kafka into the worker's online store, none rejected.
    assert result.actions_produced > len(result.sessions)
    assert result.worker_metrics["nearline_events_applied_total"] == result.actions_produced
    assert result.worker_metrics["nearline_events_dead_lettered_total"] == 0

    # The batch arm really read its features as of the daily cut-off, the NRT arm fresh.
    # The worker has stopped (cleanly, its producer flushed): the log is all there is.
    log = [
        codec.loads(message.value)
        for message in read_topic_to_end(
            broker.bootstrap, result.worker_env["NEARLINE_TOPIC_RECOMMENDATIONS_LOG"]
        )
    ]
    assert len(log) == len(result.sessions)
    scale = result.time_scale
    arm = {f"member-{r.member}": r.arm for r in result.sessions}
    measured_from = scale.cutoff(config.world.warmup_days)
    for entry in log:
        if entry["ts"] < measured_from + 0.5:
            continue  # around the warm-up boundary either view is legitimate
        day = int(scale.sim(entry["ts"]) // DAY)
        if arm[entry["member_id"]] == "batch":
            assert abs(entry["features_as_of"] - scale.cutoff(day)) < 1e-3
        else:
            assert entry["features_as_of"] > scale.cutoff(day)

    # The arms ran as an experiment through the worker: it assigned every measured response
    # an arm (the runner checks each against the hash) and the outcomes join labelled each.
    results = result.experiment
    assert results is not None and results.experiment.id == "sim-3"
    assert not results.experiment.running
    assert results.experiment.day_length == pytest.approx(DAY / config.compression)
    for name in ("nrt", "batch"):
        ours = [r for r in measured if r.arm == name]
        arm = results.arms[name]
        assert arm.arm.features == ("fresh" if name == "nrt" else "daily")
        assert arm.responses == len(ours) and arm.members == len({r.member for r in ours})
        assert arm.totals["impressions"] == config.k * len(ours)
        # The join counts a dismiss within the 30 min horizon of the latest response that
        # served the item before it: 90 ms of wall time at 20000x (one missed if ingested
        # late). Close to the simulator's own count, not equal.
        own = sum(r.dismisses for r in ours)
        assert 0.8 * own <= arm.totals["dismisses"] <= 1.2 * own
    # ... and `nearline experiment status` reports exactly the simulator's numbers.
    status = CliRunner().invoke(main, ["experiment", "status", "--json"], env=result.worker_env)
    assert status.exit_code == 0, status.output
    assert codec.loads(status.stdout) == codec.loads(codec.dumps(results.to_dict()))

    out = tmp_path / "report"
    report = write_report(result, out).read_text()
    for section in SECTIONS:
        assert section in report
    assert "-20 %" in report and "+0.68 %" in report
    assert "`sim-3`" in report and "`nearline experiment status`" in report
    nrt = results.arms["nrt"].metrics["dismiss_rate"]
    assert f"| {nrt[0]:.4f} [{nrt[1]:.4f}, {nrt[2]:.4f}] |" in report
    for name in ("dismiss_rate", "engaged_sessions", "applies_per_session"):
        png = out / f"daily_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png.name})" in report
    assert (out / "sessions.csv").read_text().count("\n") == len(result.sessions) + 1


def test_without_drift_the_arms_do_not_differ_beyond_noise(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The experiment's honesty check: no drift, so the batch view loses (almost) nothing.

    Sound because it is randomization inference: under "the arm changes nothing" every
    split of these members is equally likely, so p < 0.01 happens at most 1 % of the time;
    the world's seed is fixed (chosen before looking at its result), the threshold is strict
    (one of two metrics may fail by chance with probability <= 2 %), so the test is stable.
    """
    config = SimulationConfig(
        world=WorldConfig(
            seed=7,
            members=60,
            items=800,
            days=2,
            warmup_days=1,
            candidates=60,
            focus_changes_per_day=0.0,
            moves_per_day=0.0,
        ),
        behaviour=BehaviourModel(),
        compression=20_000.0,
    )
    result = simulate(config, broker=broker, progress=False)
    measured = [r for r in result.sessions if r.measured]
    assert sum(r.arm == "nrt" for r in measured) > 100
    assert sum(r.arm == "batch" for r in measured) > 100
    p_values = permutation_p_values(result.sessions, seed=1)
    comparison = compare(result.sessions, level=0.99, seed=1)
    detail = {
        name: (round(p_values[name], 4), comparison.difference[name].fmt()) for name in p_values
    }
    assert p_values["dismiss_rate"] > 0.01, detail
    assert p_values["engaged_sessions"] > 0.01, detail


def test_simulate_train_closes_the_loop_through_the_gate(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """`simulate --train` at a small size: the warm-up ranks with the heuristic, the worker's
    own examples train a model, the gate judges it (too few requests here, so it refuses and
    ``force`` publishes), the measured days rank with it in both arms, and the report puts
    the run beside the same world ranked by the heuristic."""
    config = SimulationConfig(
        world=WorldConfig(seed=3, members=30, items=500, days=1, warmup_days=1, candidates=50),
        compression=20_000.0,
        train=True,
        force=True,
        training_epochs=5,
    )
    trained = simulate(config, broker=broker, progress=False)
    training = trained.training
    assert training is not None and training.published and training.report is not None
    version = training.served_version
    assert version != "heuristic-v1" and training.report.version is not None
    assert training.report.version.version == version
    # The warm-up responses the member reacted to became examples (unlabeled: skip), with
    # the features the worker logged.
    warmup = [r for r in trained.sessions if not r.measured]
    # (At 20000x the 30 min horizon is 90 ms of wall time, so a reaction the worker had not
    # ingested by then is missed: at most, not exactly.)
    reacted = sum(1 for r in warmup if r.clicks or r.dismisses)
    assert 0.8 * reacted <= training.requests <= reacted
    # A reaction labels each of the member's responses that showed its item within the
    # horizon before it (two sessions of a member can share an item), so a response's
    # examples are items its member reacted to in the warm-up: at most that many.
    reactions: Counter[str] = Counter()
    for r in warmup:
        reactions[f"member-{r.member}"] += r.clicks + r.dismisses
    per_response = Counter(zip(training.data.request_id, training.data.member_id, strict=True))
    assert all(n <= reactions[member] for (_, member), n in per_response.items())
    assert set(training.data.label.tolist()) == {0, 1}
    assert training.data.features.shape[1] == len(training.data.feature_names or ()) > 40
    assert training.report.gate.served_version == "heuristic-v1"
    assert {r.model_version for r in warmup} == {"heuristic-v1"}
    measured = [r for r in trained.sessions if r.measured]
    assert {r.model_version for r in measured} == {version}
    assert {r.arm for r in measured} == {"nrt", "batch"}
    assert trained.pause >= training.seconds * 0.5 > 0

    baseline = simulate(
        SimulationConfig(world=config.world, compression=config.compression, pause=trained.pause),
        broker=broker,
        progress=False,
    )
    assert baseline.training is None and baseline.pause == pytest.approx(trained.pause, abs=0.5)
    assert {r.model_version for r in baseline.sessions} == {"heuristic-v1"}
    assert [(r.member, r.day) for r in baseline.sessions] == [
        (r.member, r.day) for r in trained.sessions
    ]
    for record in trained.sessions:
        assert 0.0 <= record.true_ndcg <= 1.0 and record.true_hit in (0.0, 1.0)

    out = tmp_path / "report"
    text = write_training_report(trained, baseline, out).read_text()
    assert "## Training and the gate" in text and "gate REFUSED" in text
    assert "## NRT vs batch under each ranker" in text
    assert "## Trained model vs heuristic" in text
    assert "heuristic: NRT vs batch" in text and "trained: NRT vs batch" in text
    assert f"ranked by `{version}`" in text
    for run in ("trained", "heuristic"):
        assert (out / run / "report.md").exists()
    assert (
        read_examples(out / "trained" / "warmup-examples.parquet").n_requests == training.requests
    )
