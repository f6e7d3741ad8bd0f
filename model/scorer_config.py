"""What the registry and settings need of the scorer before any model is read: no torch.

PyTorch costs a worker ~225 MB of RSS and a second of start-up. A worker that serves the
heuristic (no trained model in ``model_dir``) never needs it, so nothing that a worker,
the web app or the CLI imports at start may import torch: :mod:`nearline.model.scorer` and
:mod:`nearline.model.training` (which do) are imported inside the functions that read, serve or
train a model. What those callers need up front lives here: the backend names, the
architecture config saved beside the weights, and the thread count torch is to use.

``configure_threads`` only records the count while torch is not loaded;
:mod:`nearline.model.scorer` applies it as it imports torch, before any model exists, so the
setting still holds from the first model used.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Backend", "ScorerConfig", "apply_threads", "configure_threads"]

Backend = Literal["auto", "default", "mkldnn"]

#: torch's intra-op thread count, from settings; None: torch's own default.
_threads: int | None = None


def configure_threads(threads: int) -> None:
    """Set torch's intra-op threads (process-wide; call once at startup from settings).

    Applied now if torch is loaded, else when :mod:`nearline.model.scorer` loads it.
    """
    global _threads
    _threads = threads
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):  # loaded, not half-way
        apply_threads(torch)


def apply_threads(torch: Any) -> None:
    """Give ``torch`` (the module) the configured thread count, if one was configured."""
    if _threads is not None and torch.get_num_threads() != _threads:
        torch.set_num_threads(_threads)


@dataclass(frozen=True)
class ScorerConfig:
    """Architecture hyper-parameters, saved next to the weights to rebuild the module."""

    n_features: int
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["hidden"] = list(self.hidden)
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> ScorerConfig:
        return cls(
            n_features=int(body["n_features"]),
            hidden=tuple(int(h) for h in body.get("hidden", (128, 64))),
            dropout=float(body.get("dropout", 0.1)),
        )
