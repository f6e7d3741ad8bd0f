"""The heuristic ranker's ordering, and the torch ranker's equivalence across backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nearline.model.heuristic import HEURISTIC_VERSION, HeuristicRanker
from nearline.model.ranker import Ranker
from nearline.model.scorer import Scorer, ScorerConfig, TorchRanker
from nearline.model.vectorizer import Vectorizer, VectorizerConfig

NOW = 1_764_384_000.0


def test_heuristic_prefers_engaged_like_over_dismissed_like() -> None:
    v = Vectorizer(VectorizerConfig(embedding_dim=4))
    features = {
        "recent_actions": [
            {
                "item_id": "liked",
                "action": "click",
                "ts": NOW - 60,
                "attributes": {"embedding": [1, 0, 0, 0], "category": "eng"},
            },
            {
                "item_id": "hated",
                "action": "dismiss",
                "ts": NOW - 60,
                "attributes": {"embedding": [0, 1, 0, 0], "category": "sales"},
            },
        ],
        "counts": {},
        "last_event_ts": NOW - 60,
    }
    candidates = {
        "like-dismissed": {"embedding": [0.1, 1, 0, 0], "category": "sales"},
        "neutral": {"embedding": [0, 0, 1, 0], "category": "ops"},
        "like-engaged": {"embedding": [1, 0.1, 0, 0], "category": "eng"},
    }
    ranker = HeuristicRanker(v.feature_names)
    assert isinstance(ranker, Ranker) and ranker.version == HEURISTIC_VERSION
    scores = ranker.score(v.transform(features, candidates, NOW))
    assert list(np.argsort(-scores)) == [2, 1, 0]


def test_heuristic_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="matrix"):
        HeuristicRanker(["a", "b"]).score(np.zeros((3, 5), dtype=np.float32))


def _scorer(n: int) -> Scorer:
    torch.manual_seed(0)
    scorer = Scorer(ScorerConfig(n, hidden=(16, 8)))
    scorer.fit_normalization(np.random.default_rng(0).normal(3.0, 2.0, (100, n)).astype(np.float32))
    return scorer.eval()


def test_inference_module_folds_normalization_exactly() -> None:
    scorer = _scorer(6)
    x = np.random.default_rng(1).normal(3.0, 2.0, (50, 6)).astype(np.float32)
    with torch.inference_mode():
        expected = scorer(torch.from_numpy(x)).numpy()
        folded = scorer.inference_module()(torch.from_numpy(x)).squeeze(-1).numpy()
    assert folded == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("backend", ["default", "mkldnn", "auto"])
def test_torch_ranker_backends_agree(backend: str) -> None:
    scorer = _scorer(6)
    names = [f"f{i}" for i in range(6)]
    x = np.random.default_rng(2).normal(3.0, 2.0, (40, 6)).astype(np.float32)
    with torch.inference_mode():
        expected = scorer(torch.from_numpy(x)).numpy()
    ranker = TorchRanker(scorer, "v1", names, backend=backend, calibration_rows=40)  # type: ignore[arg-type]
    assert isinstance(ranker, Ranker) and ranker.version == "v1"
    assert ranker.backend in {"default", "mkldnn"}
    assert ranker.score(x) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert ranker.score(np.zeros((0, 6), dtype=np.float32)).shape == (0,)
    with pytest.raises(ValueError):
        ranker.score(np.zeros((2, 5), dtype=np.float32))
