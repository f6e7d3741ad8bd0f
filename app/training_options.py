"""Click options of the training loop that ``nearline train`` and ``nearline simulate --train``
share, declared once: which loss, and whether to publish a model the gate refuses.

The choices and default mirror :data:`nearline.model.training.Loss` and ``TrainingConfig.loss``;
they are spelled out here because importing :mod:`nearline.model.training` loads PyTorch, which no
command should pay for before it trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["LOSSES", "canary_option", "force_option", "loss_option"]

LOSSES = ("pointwise", "listwise", "pairwise")

_Command = TypeVar("_Command", bound=Callable[..., Any])


def loss_option(context: str = "") -> Callable[[_Command], _Command]:
    """``--loss``; ``context`` starts its help (``simulate`` says when it applies)."""
    return click.option(
        "--loss",
        type=click.Choice(LOSSES),
        default="pairwise",
        show_default=True,
        help=f"{context}pointwise: cross-entropy per candidate (class-weighted); listwise: "
        "softmax over each request's candidates; pairwise: BPR, positives over sampled "
        "negatives.",
    )


def force_option(context: str = "") -> Callable[[_Command], _Command]:
    """``--force``; ``context`` starts its help."""
    what = "publish" if context else "Publish"
    return click.option(
        "--force", is_flag=True, help=f"{context}{what} even if the gate refuses the model."
    )


def canary_option() -> Callable[[_Command], _Command]:
    """``--canary SHARE``: publish as an experiment against the served ranker."""
    return click.option(
        "--canary",
        type=float,
        help="Publish to this share of members only (e.g. 0.1), as an experiment against the "
        "served ranker; `nearline experiment promote` serves it to everyone.",
    )
