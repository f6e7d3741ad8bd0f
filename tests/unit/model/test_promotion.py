"""`nearline train` through the gate and `nearline model list | activate | rollback`.

Real files in a temporary model directory, the real CLI in process; a registry that has
loaded a version stands in for a worker and follows with ``maybe_reload``, as the worker's
reload timer does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from click.testing import CliRunner

from nearline.app.compose import vectorizer_from_settings
from nearline.cli import main
from nearline.foundation.settings import load_settings
from nearline.model.dataset import ExampleSet, split_by_time, write_examples
from nearline.model.heuristic import HEURISTIC_VERSION, HeuristicRanker
from nearline.model.registry import ACTIVE_FILE, ModelRegistry
from nearline.model.scorer import TorchRanker
from nearline.simulation.examples import EXAMPLES_WORLD, generate_examples


@pytest.fixture(scope="module")
def examples() -> ExampleSet:
    return generate_examples(replace(EXAMPLES_WORLD, n_requests=900, seed=3))


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    for name in ("NEARLINE_MODEL_DIR", "NEARLINE_EMBEDDING_DIM", "NEARLINE_WINDOWS"):
        monkeypatch.delenv(name, raising=False)


def corrupted(examples: ExampleSet, seed: int = 0) -> ExampleSet:
    """Labels permuted within each request of the training part (all but the latest 20 %
    of requests, which validate): nothing left to learn, judged on the true labels."""
    rng = np.random.default_rng(seed)
    label = examples.label.copy()
    train, _ = split_by_time(examples, 0.2)
    for request in np.unique(train.request_id):
        rows = np.flatnonzero(examples.request_id == request)
        label[rows] = label[rng.permutation(rows)]
    return ExampleSet(**{**examples.__dict__, "label": label})


def run(*args: str) -> tuple[int, str]:
    # `train` runs with --skip-erasure-check: no broker answers here, and no member was
    # erased from these files (tests/integration/test_erasure.py checks the erasures).
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def registry(models: Path) -> ModelRegistry:
    return ModelRegistry(models, vectorizer_from_settings(load_settings()), backend="default")


def test_the_gate_publishes_a_better_model_refuses_a_worse_one_and_force_overrides(
    tmp_path: Path, examples: ExampleSet
) -> None:
    assert vectorizer_from_settings(load_settings()).feature_names == examples.feature_names
    models = tmp_path / "models"
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    write_examples(good, examples)
    write_examples(bad, corrupted(examples))
    worker = registry(models)
    assert isinstance(worker.load_latest(), HeuristicRanker)

    code, out = run(
        "train", "--skip-erasure-check", str(good), "--model-dir", str(models), "--max-epochs", "12"
    )
    assert code == 0, out
    assert "gate PASSED" in out and "vs served heuristic-v1" in out
    first = registry(models).served().version
    assert first != HEURISTIC_VERSION
    assert worker.maybe_reload() and worker.active.version == first  # the worker follows

    # Trained on labels with no signal, the candidate is worse than the served model.
    code, out = run(
        "train", "--skip-erasure-check", str(bad), "--model-dir", str(models), "--max-epochs", "3"
    )
    assert code == 1, out
    assert "gate REFUSED" in out and f"vs served {first}" in out
    assert "saved as rejected" in out
    versions = registry(models).versions()
    assert len(versions) == 2
    rejected = versions[-1]
    meta = orjson.loads((models / f"nearline-model-{rejected}.json").read_bytes())
    assert meta["status"] == "rejected" and meta["gate"]["passed"] is False
    gain = meta["gate"]["metrics"]["ndcg_at_10"]
    assert gain["high"] < 0.0  # significantly worse than the served model
    assert registry(models).served().version == first
    assert not worker.maybe_reload() and worker.active.version == first
    # A fresh worker does not pick the newer, rejected version either.
    assert registry(models).load_latest().version == first

    code, out = run(
        "train",
        "--skip-erasure-check",
        str(bad),
        "--model-dir",
        str(models),
        "--max-epochs",
        "3",
        "--force",
    )
    assert code == 0, out
    assert "gate REFUSED" in out and "published (now served)" in out
    forced = registry(models).served()
    assert forced.version not in (first, rejected) and forced.previous == (first, HEURISTIC_VERSION)
    assert worker.maybe_reload() and worker.active.version == forced.version
    meta = orjson.loads((models / f"nearline-model-{forced.version}.json").read_bytes())
    assert meta["status"] == "published" and meta["forced"] is True

    code, out = run("model", "list", "--model-dir", str(models))
    assert code == 0, out
    assert f"served: {forced.version} (active file)" in out
    assert f"* {forced.version}" in out and "rejected" in out and out.count("published") == 2


def test_rollback_restores_and_activate_serves_any_version(
    tmp_path: Path, examples: ExampleSet
) -> None:
    models = tmp_path / "models"
    path = tmp_path / "good.parquet"
    write_examples(path, examples)
    for seed in ("1", "2"):
        code, out = run(
            "train",
            "--skip-erasure-check",  # no broker here: nobody was erased
            str(path),
            "--model-dir",
            str(models),
            "--max-epochs",
            "8",
            "--force",
            "--seed",
            seed,
        )
        assert code == 0, out
    older, newer = registry(models).versions()
    worker = registry(models)
    assert worker.load_latest().version == newer

    code, out = run("model", "rollback", "--model-dir", str(models))
    assert code == 0 and f"serving {older}" in out, out
    assert worker.maybe_reload() and worker.active.version == older
    code, out = run("model", "rollback", "--model-dir", str(models))
    assert code == 0 and f"serving {HEURISTIC_VERSION}" in out, out
    assert worker.maybe_reload() and isinstance(worker.active, HeuristicRanker)
    code, out = run("model", "rollback", "--model-dir", str(models))
    assert code == 1 and "nothing to roll back to" in out

    code, out = run("model", "activate", newer, "--model-dir", str(models))
    assert code == 0 and f"serving {newer}" in out, out
    assert worker.maybe_reload() and isinstance(worker.active, TorchRanker)
    assert worker.active.version == newer
    assert registry(models).served().previous[0] == HEURISTIC_VERSION
    code, out = run("model", "activate", "no-such-version", "--model-dir", str(models))
    assert code == 1 and "no model version 'no-such-version'" in out
    assert (models / ACTIVE_FILE).exists()
    code, out = run("model", "rollback", "--model-dir", str(models))
    assert code == 0 and f"serving {HEURISTIC_VERSION}" in out, out


def test_a_canary_publishes_to_a_share_of_members_as_an_experiment(
    tmp_path: Path, examples: ExampleSet
) -> None:
    models = tmp_path / "models"
    good = tmp_path / "good.parquet"
    write_examples(good, examples)
    worker = registry(models)
    worker.load_latest()
    args = ("train", "--skip-erasure-check", str(good), "--model-dir", str(models))
    args += ("--max-epochs", "3")
    code, out = run(*args, "--canary", "0.1")
    assert code == 0, out
    assert "gate PASSED" in out and "published to 10% of members as experiment canary-" in out
    canary = registry(models).versions()[-1]
    # The default stays the heuristic (pinned: the new version is not the default by being
    # the newest); a tenth of the members get the canary.
    assert registry(models).served().version == HEURISTIC_VERSION
    worker.maybe_reload()
    assert worker.active.version == HEURISTIC_VERSION
    served = [worker.assign(f"m{n}") for n in range(2000)]
    canaries = [a for a in served if a is not None and a.arm.name == "canary"]
    assert {a.ranker.version for a in canaries} == {canary}
    assert abs(len(canaries) / 2000 - 0.1) < 0.02
    meta = orjson.loads((models / f"nearline-model-{canary}.json").read_bytes())
    assert meta["status"] == "canary"

    # One experiment at a time: a second canary is refused before any training.
    code, out = run(*args, "--canary", "0.1")
    assert code == 1 and f"experiment canary-{canary} is running" in out
    assert len(registry(models).versions()) == 1


def test_the_trainer_exports_trains_and_gates_in_one_run(
    tmp_path: Path, examples: ExampleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def export(settings: Any, out: Path, feature_names: Any) -> tuple[ExampleSet, int]:
        write_examples(out, examples)  # what the training-examples topic holds
        return examples, 0  # no member erased

    monkeypatch.setattr("nearline.app.exporting.export_training", export)
    models = tmp_path / "models"
    code, out = run("trainer", "--model-dir", str(models), "--max-epochs", "3")
    assert code == 0, out
    assert f"exported {len(examples)} examples" in out and "published (now served)" in out
    first = registry(models).served().version
    assert first != HEURISTIC_VERSION

    # Refused (the same data cannot beat the model trained on it): saved as rejected, and
    # the scheduled run still succeeds.
    code, out = run("trainer", "--model-dir", str(models), "--max-epochs", "1", "--seed", "5")
    assert code == 0, out
    assert "gate REFUSED" in out and "saved as rejected" in out
    assert registry(models).served().version == first
