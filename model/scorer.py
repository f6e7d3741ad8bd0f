"""The PyTorch scorer: an MLP over vectorizer rows, and the ranker that serves it.

Importing this module imports torch (~225 MB of RSS): only code that reads, serves or
trains a model does, inside the function that needs it. What is needed without torch
(``Backend``, ``ScorerConfig``, ``configure_threads``) is in :mod:`nearline.model.scorer_config`;
the thread count configured there is applied here, as torch loads.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

from nearline.foundation.extras import requires_extra
from nearline.model.ranker import NamedColumns
from nearline.model.scorer_config import Backend, ScorerConfig, apply_threads, configure_threads

with requires_extra("A trained model"):
    import torch
    from torch import nn

__all__ = ["Backend", "Scorer", "ScorerConfig", "TorchRanker", "configure_threads"]

log = logging.getLogger(__name__)

apply_threads(torch)  # before any model exists: NEARLINE_TORCH_THREADS from the first one on


class Scorer(nn.Module):
    """``(x - mean) / std`` then Linear/ReLU layers down to one logit per candidate.

    The normalization lives in buffers (part of the state_dict), fitted on training data,
    so the features can stay in their natural units everywhere else.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.n_features))
        self.register_buffer("inv_std", torch.ones(config.n_features))
        layers: list[nn.Module] = []
        width = config.n_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) * self.inv_std).squeeze(-1)

    def fit_normalization(self, features: np.ndarray) -> None:
        """Mean and spread of the training features; constant columns are left unscaled."""
        mean = features.mean(axis=0)
        std = features.std(axis=0)
        inv = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0)
        self.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.inv_std.copy_(torch.from_numpy(inv.astype(np.float32)))

    def inference_module(self) -> nn.Sequential:
        """An equivalent plain Linear/ReLU stack with the normalization folded into layer 1.

        Dropout is dropped and ``(x - mean) * inv_std`` is absorbed into the first weight
        and bias, which saves two elementwise passes per call and leaves only modules that
        oneDNN's converter understands.
        """
        modules = [m for m in self.body if not isinstance(m, nn.Dropout)]
        copies: list[nn.Module] = []
        for m in modules:
            if isinstance(m, nn.Linear):
                layer = nn.Linear(m.in_features, m.out_features)
                layer.load_state_dict(m.state_dict())
                copies.append(layer)
            else:
                copies.append(nn.ReLU())
        first = copies[0]
        assert isinstance(first, nn.Linear)
        with torch.no_grad():
            weight = first.weight * self.inv_std
            first.bias.copy_(first.bias - weight @ self.mean)
            first.weight.copy_(weight)
        return nn.Sequential(*copies).eval()


class TorchRanker(NamedColumns):
    """Serves a trained :class:`Scorer`: one forward pass per request, no autograd.

    ``backend="auto"`` times the plain and the oneDNN (mkldnn) module on a
    ``calibration_rows`` batch when constructed and keeps the faster one on this machine.
    """

    def __init__(
        self,
        scorer: Scorer,
        version: str,
        feature_names: Sequence[str],
        backend: Backend = "auto",
        calibration_rows: int = 500,
    ) -> None:
        if len(feature_names) != scorer.config.n_features:
            raise ValueError(
                f"scorer expects {scorer.config.n_features} features, "
                f"{len(feature_names)} names given"
            )
        super().__init__(version, feature_names)
        self._dense = scorer.inference_module()
        self._mkldnn: nn.Module | None = None
        if backend != "default" and torch.backends.mkldnn.is_available():
            with warnings.catch_warnings():
                # torch.utils.mkldnn builds on torch.jit.script_method, deprecated in 2.x
                # but still the documented conversion; the warning is noise for operators.
                warnings.simplefilter("ignore", DeprecationWarning)
                from torch.utils import mkldnn

                self._mkldnn = mkldnn.to_mkldnn(scorer.inference_module())
        if backend == "mkldnn" and self._mkldnn is None:
            raise RuntimeError("oneDNN (mkldnn) is not available in this torch build")
        self.backend: Literal["default", "mkldnn"] = "mkldnn" if backend == "mkldnn" else "default"
        if backend == "auto" and self._mkldnn is not None:
            self.backend = self._calibrate(calibration_rows)
            log.info("model %s scores on the %s backend", version, self.backend)

    def score(self, matrix: np.ndarray) -> np.ndarray:
        self.check_matrix(matrix)
        if matrix.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return self._forward(np.ascontiguousarray(matrix, dtype=np.float32), self.backend)

    def _forward(self, matrix: np.ndarray, backend: str) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(matrix)
            if backend == "mkldnn" and self._mkldnn is not None:
                out = self._mkldnn(x.to_mkldnn()).to_dense()
            else:
                out = self._dense(x)
            return out.reshape(-1).numpy().copy()

    def _calibrate(self, rows: int, repeats: int = 15) -> Literal["default", "mkldnn"]:
        sample = np.random.default_rng(0).standard_normal((rows, len(self._feature_names)))
        sample = sample.astype(np.float32)
        timings: dict[Literal["default", "mkldnn"], float] = {}
        for backend in ("default", "mkldnn", "default", "mkldnn"):  # warm both, then measure
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                self._forward(sample, backend)
                runs.append(time.perf_counter() - start)
            timings[backend] = statistics.median(runs)
        # oneDNN must be clearly faster to be worth a second code path in production.
        return "mkldnn" if timings["mkldnn"] < 0.9 * timings["default"] else "default"
