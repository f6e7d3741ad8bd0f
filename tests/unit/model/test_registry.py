"""Versioned model files: write, load, hot reload under concurrent scoring, refusal."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from nearline.model.exceptions import IncompatibleModelError
from nearline.model.heuristic import HeuristicRanker
from nearline.model.registry import ModelRegistry, new_version
from nearline.model.scorer import Scorer, ScorerConfig, TorchRanker
from nearline.model.vectorizer import Vectorizer, VectorizerConfig


@pytest.fixture
def vectorizer() -> Vectorizer:
    return Vectorizer(VectorizerConfig(embedding_dim=4))


def scorer_for(v: Vectorizer, seed: int) -> Scorer:
    torch.manual_seed(seed)
    return Scorer(ScorerConfig(v.dim, hidden=(8,))).eval()


def test_save_writes_both_files_and_load_latest_picks_the_newest(
    tmp_path: Path, vectorizer: Vectorizer
) -> None:
    registry = ModelRegistry(tmp_path, vectorizer, backend="default")
    assert isinstance(registry.load_latest(), HeuristicRanker)  # empty directory
    registry.save(scorer_for(vectorizer, 1), {"metrics": {"auc": 0.7}}, version="20250101-a")
    saved = registry.save(
        scorer_for(vectorizer, 2), {"metrics": {"auc": 0.8}}, version="20250102-b"
    )
    assert (tmp_path / "nearline-model-20250102-b.pt").exists()
    metadata = orjson.loads((tmp_path / "nearline-model-20250102-b.json").read_bytes())
    assert metadata["feature_names"] == list(vectorizer.feature_names)
    assert metadata["vectorizer"]["embedding_dim"] == 4
    assert metadata["metrics"]["auc"] == 0.8 and "created_at" in metadata
    assert saved.metadata["version"] == "20250102-b"
    assert registry.versions() == ["20250101-a", "20250102-b"]

    fresh = ModelRegistry(tmp_path, vectorizer, backend="default")
    active = fresh.load_latest()
    assert isinstance(active, TorchRanker) and active.version == "20250102-b"
    x = vectorizer.transform({}, {"a": {}, "b": {"popularity": 3.0}}, 0.0)
    with torch.inference_mode():
        expected = scorer_for(vectorizer, 2)(torch.from_numpy(x)).numpy()
    assert active.score(x) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(FileExistsError):
        registry.save(scorer_for(vectorizer, 3), {}, version="20250102-b")


def test_model_registry_from_settings_sets_dir_and_threads(tmp_path: Path) -> None:
    from nearline.app.compose import model_registry
    from nearline.foundation.settings import load_settings

    before = torch.get_num_threads()
    try:
        registry = model_registry(load_settings(model_dir=tmp_path, torch_threads=1))
        assert registry.model_dir == tmp_path and torch.get_num_threads() == 1
        assert registry.active.version == "heuristic-v1"
    finally:
        torch.set_num_threads(before)


def test_torch_loads_with_the_first_model_and_takes_the_configured_threads(
    tmp_path: Path,
) -> None:
    """What a worker, its web app and the CLI import to serve the heuristic leaves torch
    (~225 MB) unloaded; NEARLINE_TORCH_THREADS still holds once a model brings it in."""
    script = f"""
import sys
import nearline.app.cli, nearline.app.recommend, nearline.app.web, nearline.app.worker
from nearline.foundation.settings import load_settings
from nearline.app.compose import model_registry
settings = load_settings(model_dir={str(tmp_path)!r}, torch_threads=3)
registry = model_registry(settings)
assert registry.load_latest().version == registry.served().version == "heuristic-v1"
assert not registry.maybe_reload()
assert "torch" not in sys.modules, "torch imported without a model"
import nearline.model.scorer, torch
assert torch.get_num_threads() == 3, torch.get_num_threads()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_generated_versions_sort_by_time() -> None:
    assert new_version(1_700_000_000.0) < new_version(1_700_000_001.0)


def test_maybe_reload_is_cheap_when_nothing_changed(tmp_path: Path, vectorizer: Vectorizer) -> None:
    registry = ModelRegistry(tmp_path, vectorizer, backend="default")
    assert registry.maybe_reload() is False
    registry.save(scorer_for(vectorizer, 1), {}, version="v1")
    assert registry.maybe_reload() is True and registry.active.version == "v1"
    assert registry.maybe_reload() is False
    registry.save(scorer_for(vectorizer, 2), {}, version="v2")
    assert registry.maybe_reload() is True and registry.active.version == "v2"
    assert ModelRegistry(None, vectorizer).maybe_reload() is False


def test_mismatched_features_are_refused_and_the_old_model_kept(
    tmp_path: Path, vectorizer: Vectorizer, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(tmp_path, vectorizer, backend="default")
    registry.save(scorer_for(vectorizer, 1), {}, version="v1")
    registry.load_latest()
    other = Vectorizer(VectorizerConfig(embedding_dim=4, windows=("1h", "2h")))
    ModelRegistry(tmp_path, other).save(scorer_for(other, 2), {}, version="v2")
    with caplog.at_level(logging.ERROR, logger="nearline.model.registry"):
        assert registry.maybe_reload() is False
    assert registry.active.version == "v1"
    assert "v2 refused" in caplog.text and "feature_names do not match" in caplog.text
    with pytest.raises(IncompatibleModelError, match="missing"):
        registry.read("v2")
    # A fresh worker skips the incompatible newest version and falls back to v1.
    assert ModelRegistry(tmp_path, vectorizer, backend="default").load_latest().version == "v1"


def test_same_names_but_other_vectorizer_config_is_refused(
    tmp_path: Path, vectorizer: Vectorizer
) -> None:
    other = Vectorizer(VectorizerConfig(embedding_dim=4, half_life_s=60.0))
    assert other.feature_names == vectorizer.feature_names
    ModelRegistry(tmp_path, other).save(scorer_for(other, 1), {}, version="v1")
    with pytest.raises(IncompatibleModelError, match="config"):
        ModelRegistry(tmp_path, vectorizer).read("v1")


def test_hot_swap_under_concurrent_scoring_never_fails(
    tmp_path: Path, vectorizer: Vectorizer
) -> None:
    registry = ModelRegistry(tmp_path, vectorizer, backend="mkldnn")
    matrix = np.random.default_rng(0).standard_normal((200, vectorizer.dim)).astype(np.float32)
    errors: list[BaseException] = []
    versions_seen: set[str] = set()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                ranker = registry.active  # one read per request, as the endpoint does
                scores = ranker.score(matrix)
                assert scores.shape == (200,) and np.isfinite(scores).all()
                versions_seen.add(ranker.version)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for i in range(6):
            registry.save(scorer_for(vectorizer, i), {}, version=f"v{i}")
            assert registry.maybe_reload() is True
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors
    assert registry.active.version == "v5"
    assert "v5" in versions_seen and len(versions_seen) >= 3


def test_a_broken_active_file_keeps_the_current_model(
    tmp_path: Path, vectorizer: Vectorizer, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(tmp_path, vectorizer, backend="default")
    registry.save(scorer_for(vectorizer, 1), {}, version="v1")
    registry.activate("v1")
    assert registry.load_latest().version == "v1"
    (tmp_path / "nearline-active.json").write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="nearline.model.registry"):
        assert registry.maybe_reload() is False
    assert registry.active.version == "v1" and "nearline model activate" in caplog.text
