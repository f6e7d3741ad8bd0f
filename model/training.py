"""Train the scorer on logged examples, pass it through the promotion gate, write a version.

:func:`train` (what ``nearline train`` runs) splits the requests by time: the earliest
train, the next ones stop training early (on NDCG@10), the latest validate. On those the
candidate is compared with the ranker now served (the heuristic or the active model), and
the version is written to the model directory as ``nearline-model-<version>.{pt,json}``:
published if the gate passed (or ``force``), saved as rejected otherwise.

Three losses: ``pointwise`` (binary cross-entropy per candidate, positives weighted up to
balance the classes), ``listwise`` (softmax over each request's candidates, the positives'
log-probability maximised) and ``pairwise`` (BPR: each positive should outscore sampled
negatives of the same request). The last two learn what is served, an order within a
request, instead of a probability per row. Pairwise is the default: compared on
validation NDCG@10, it was ahead where positives are rare (the simulator's logged examples
with every unreacted candidate a negative) and level with the others elsewhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from nearline.foundation.extras import requires_extra
from nearline.model.dataset import ExampleSet, read_examples, split_by_time
from nearline.model.evaluation import Metrics, evaluate, per_request
from nearline.model.exceptions import ExamplesError, IncompatibleModelError, ModelFileError
from nearline.model.experiments import Arm, Experiment, ExperimentError
from nearline.model.gate import GateDecision, GateRules, decide
from nearline.model.heuristic import HEURISTIC_VERSION, HeuristicRanker
from nearline.model.ranker import Ranker
from nearline.model.registry import ModelRegistry, ModelVersion
from nearline.model.vectorizer import Vectorizer

with requires_extra("Training"):
    import torch
    import torch.nn.functional as F

    from nearline.model.scorer import Scorer, ScorerConfig

__all__ = [
    "LOSSES",
    "Loss",
    "TrainingConfig",
    "TrainingReport",
    "compare_losses",
    "fit_scorer",
    "train",
]

log = logging.getLogger(__name__)

Loss = Literal["pointwise", "listwise", "pairwise"]
LOSSES: tuple[Loss, ...] = ("pointwise", "listwise", "pairwise")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation knobs; recorded in the model's metadata."""

    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    # Pairwise won the comparison on the ranking metric (see the README's training section).
    loss: Loss = "pairwise"
    requests_per_batch: int = 16
    # Pointwise only: positives weighted by negatives/positives (at most this), so a 1 %
    # positive rate does not teach the network that "no" is always right.
    max_positive_weight: float = 50.0
    # Pairwise only: negatives sampled per request for each positive to outrank.
    pairwise_negatives: int = 32
    max_epochs: int = 30
    patience: int = 3
    validation_fraction: float = 0.2
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")


@dataclass(frozen=True)
class TrainingReport:
    """What a training run produced, how it compares, and whether it was published."""

    model: Metrics
    heuristic: Metrics
    served: Metrics
    gate: GateDecision
    best_epoch: int
    epochs_run: int
    train_rows: int
    validation_rows: int
    train_range: tuple[float, float]
    validation_range: tuple[float, float]
    loss: Loss
    version: ModelVersion | None = None
    published: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    canary: float | None = None  # published to this share of members, as an experiment

    def summary(self) -> str:
        lines = [
            f"validation ({self.validation_rows} rows, {self.model.ranked_requests} requests "
            f"with a positive), {self.loss} loss, best epoch {self.best_epoch}/{self.epochs_run}",
            f"  model      {self.model.fmt()}",
            f"  heuristic  {self.heuristic.fmt()}",
        ]
        if self.gate.served_version != HEURISTIC_VERSION:
            lines.append(f"  served     {self.served.fmt()} ({self.gate.served_version})")
        lines.append(self.gate.summary())
        if self.version is not None:
            state = "published (now served)" if self.published else "saved as rejected"
            if self.published and self.canary is not None:
                state = (
                    f"published to {self.canary:.0%} of members as experiment "
                    f"canary-{self.version.version} (`nearline experiment status`)"
                )
            lines.append(f"version {self.version.version} {state}")
        return "\n".join(lines)


def _scores(scorer: Scorer, features: np.ndarray, batch: int = 8192) -> np.ndarray:
    scorer.eval()
    with torch.inference_mode():
        parts = [
            scorer(torch.from_numpy(features[i : i + batch])).numpy()
            for i in range(0, len(features), batch)
        ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _request_matrix(request_id: np.ndarray) -> np.ndarray:
    """Row indices of each request as a padded ``[requests, longest]`` matrix (-1 = none)."""
    _, inverse, counts = np.unique(request_id, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.arange(len(order)) - np.repeat(starts, counts)
    matrix = np.full((len(counts), int(counts.max()) if len(counts) else 0), -1, dtype=np.int64)
    matrix[inverse[order], position] = order
    return matrix


def _batch_loss(
    config: TrainingConfig,
    logits: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    positive_weight: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The loss of a ``[requests, longest]`` block of scores (padding masked by ``valid``)."""
    if config.loss == "pointwise":
        weight = torch.where(labels > 0, positive_weight, 1.0) * valid
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (losses * weight).sum() / weight.sum()
    if config.loss == "listwise":
        masked = logits.masked_fill(~valid, float("-inf"))
        log_p = torch.log_softmax(masked, dim=1).masked_fill(~valid, 0.0)
        return -((log_p * labels).sum(1) / labels.sum(1)).mean()
    # pairwise (BPR): sample negatives by random keys, the top keys among negatives win.
    negative = valid & (labels == 0)
    keys = torch.rand(logits.shape, generator=generator).masked_fill(~negative, -1.0)
    count = min(config.pairwise_negatives, logits.shape[1])
    keys, picked = keys.topk(count, dim=1)
    negative_logits = logits.gather(1, picked)
    pairs = (labels > 0).unsqueeze(2) & (keys >= 0).unsqueeze(1)
    margins = logits.unsqueeze(2) - negative_logits.unsqueeze(1)
    return -F.logsigmoid(margins[pairs]).mean()


def fit_scorer(
    train_set: ExampleSet, validation: ExampleSet, config: TrainingConfig
) -> tuple[Scorer, int, list[dict[str, float]]]:
    """Fit an MLP with ``config.loss``; keep the weights of the epoch with the best
    validation NDCG@10 (what is served is a top-k ranking, so that is what stops it).

    Returns the scorer, the best epoch (1-based) and per-epoch history.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scorer = Scorer(
        ScorerConfig(train_set.features.shape[1], hidden=config.hidden, dropout=config.dropout)
    )
    scorer.fit_normalization(train_set.features)
    optimizer = torch.optim.AdamW(
        scorer.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    x = torch.from_numpy(np.ascontiguousarray(train_set.features, dtype=np.float32))
    y = torch.from_numpy(train_set.label.astype(np.float32))
    requests = _request_matrix(train_set.request_id)
    if config.loss != "pointwise":
        # A request without a positive teaches a ranking loss nothing.
        positives = np.where(requests >= 0, train_set.label[requests] > 0, False).any(axis=1)
        requests = requests[positives]
    if not len(requests):
        raise ExamplesError("no training request has a positive label")
    positive_count = float(train_set.label.sum())
    positive_weight = min(
        (len(train_set) - positive_count) / max(positive_count, 1.0), config.max_positive_weight
    )
    best_ndcg, best_epoch, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    epochs = tqdm(
        range(1, config.max_epochs + 1), desc="training", unit="epoch", disable=not config.progress
    )
    for epoch in epochs:
        scorer.train()
        order = rng.permutation(len(requests))
        total, steps = 0.0, 0
        for start in range(0, len(order), config.requests_per_batch):
            block = torch.from_numpy(requests[order[start : start + config.requests_per_batch]])
            valid = block >= 0
            rows = block.clamp(min=0)
            logits = torch.zeros(block.shape).masked_scatter(valid, scorer(x[block[valid]]))
            labels = y[rows] * valid
            optimizer.zero_grad(set_to_none=True)
            loss = _batch_loss(config, logits, labels, valid, positive_weight, generator)
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
        metrics = evaluate(
            validation.label, _scores(scorer, validation.features), validation.request_id
        )
        history.append(
            {
                "epoch": epoch,
                "loss": total / max(steps, 1),
                "auc": metrics.auc,
                "ndcg_at_10": metrics.ndcg_at_10,
                "mrr": metrics.mrr,
            }
        )
        epochs.set_postfix(loss=f"{total / max(steps, 1):.4f}", ndcg=f"{metrics.ndcg_at_10:.4f}")
        if metrics.ndcg_at_10 > best_ndcg:
            best_ndcg, best_epoch = metrics.ndcg_at_10, epoch
            best_state = {k: v.clone() for k, v in scorer.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break  # no validation gain for `patience` epochs
    epochs.close()
    if best_state is not None:
        scorer.load_state_dict(best_state)
    scorer.eval()
    return scorer, best_epoch, history


def _served_ranker(registry: ModelRegistry | None, feature_names: tuple[str, ...]) -> Ranker:
    """The ranker the candidate must beat: the served model, else the heuristic."""
    heuristic = HeuristicRanker(feature_names)
    if registry is None:
        return heuristic
    try:
        return registry.served_ranker()
    except (IncompatibleModelError, ModelFileError) as exc:
        # Workers cannot serve it with these features either: they keep the heuristic.
        log.warning(
            "the served model cannot score these examples (%s); gating on the heuristic", exc
        )
        return heuristic


def _prepare(
    examples: ExampleSet | Path | str,
    registry: ModelRegistry | None,
    config: TrainingConfig,
    vectorizer: Vectorizer | None,
) -> tuple[str, tuple[str, ...], ExampleSet, ExampleSet]:
    source = str(examples) if not isinstance(examples, ExampleSet) else "in-memory examples"
    data = examples if isinstance(examples, ExampleSet) else read_examples(examples)
    vectorizer = vectorizer or (registry.vectorizer if registry else None)
    feature_names = vectorizer.feature_names if vectorizer else data.feature_names
    if feature_names is None:
        raise ExamplesError(f"{source}: no feature names in the file and no vectorizer given")
    if data.feature_names is not None and tuple(data.feature_names) != tuple(feature_names):
        raise ExamplesError(
            f"{source}: the examples' feature names do not match the vectorizer's; they were "
            "logged with another configuration"
        )
    if data.features.shape[1] != len(feature_names):
        raise ExamplesError(
            f"{source}: examples have {data.features.shape[1]} features that do not match the "
            f"vectorizer's {len(feature_names)}; they were logged with another configuration"
        )
    train_set, validation = split_by_time(data, config.validation_fraction)
    _check_labels(source, train_set, validation, config.validation_fraction)
    return source, tuple(feature_names), train_set, validation


def _check_labels(
    source: str, train_set: ExampleSet, validation: ExampleSet, validation_fraction: float
) -> None:
    """An :class:`ExamplesError` unless both splits have positive and negative labels,
    saying which split lacks which, the counts of each, and what to do about it.

    It happens when most logged requests never got an outcome, so the few positives all
    fall on one side of the time cut.
    """
    splits = {"training": train_set, "validation": validation}
    counts = {
        name: (int(part.label.sum()), len(part) - int(part.label.sum()))
        for name, part in splits.items()
    }
    lacking = [
        f"the {name} split has no {kind} labels"
        for name, (positives, negatives) in counts.items()
        for kind, count in (("positive", positives), ("negative", negatives))
        if not count
    ]
    if not lacking:
        return
    first, last = (
        f"the {name} split ({what} {part.n_requests} requests): {counts[name][0]} positive and "
        f"{counts[name][1]} negative examples"
        for (name, part), what in zip(splits.items(), ("earliest", "latest"), strict=True)
    )
    advice = "export again once more requests have an outcome"
    train_short, validation_short = (min(counts[name]) == 0 for name in splits)
    if train_short and not validation_short:
        advice += (
            f", or give a smaller --validation-fraction than {validation_fraction:g}, which "
            "moves later requests into training"
        )
    elif validation_short and not train_short:
        advice += (
            f", or give a larger --validation-fraction than {validation_fraction:g}, which "
            "moves earlier requests into validation"
        )
    raise ExamplesError(
        f"{source}: {' and '.join(lacking)}; both splits need positive and negative labels. "
        f"Split by request time, {first}; {last}. Most requests may never have had an "
        f"outcome: {advice}."
    )


def train(
    examples: ExampleSet | Path | str,
    registry: ModelRegistry | None = None,
    config: TrainingConfig | None = None,
    vectorizer: Vectorizer | None = None,
    *,
    rules: GateRules | None = None,
    force: bool = False,
    canary: float | None = None,
) -> TrainingReport:
    """Train on ``examples`` (split by time) and gate the candidate against the served
    ranker. With a ``registry`` the candidate is saved: published (served from now on) if
    the gate passed or ``force``, marked rejected otherwise.

    ``canary``: publish to that share of members only, as an experiment
    (``canary-<version>``) against the served ranker; ``nearline experiment promote``
    then serves it to everyone, on the evidence of the members' responses.
    """
    config = config or TrainingConfig()
    rules = rules or GateRules(seed=config.seed)
    if canary is not None and registry is not None:
        if not 0.0 < canary < 1.0:
            raise ExperimentError(f"the canary share {canary} must be between 0 and 1")
        running = registry.read_experiment()
        if running is not None and running.running:  # refused before training, not after
            raise ExperimentError(
                f"experiment {running.id} is running; a canary is an experiment of its own "
                "(one at a time): stop or promote it first"
            )
    source, feature_names, train_set, validation = _prepare(examples, registry, config, vectorizer)
    started = time.time()
    # Early stopping picks the best of many epochs on its own held-out requests (the latest
    # of the training part): picked on the gate's requests, a model that learned nothing
    # could look better than it is, by the luck of the pick.
    fit_part, stopping = split_by_time(train_set, config.validation_fraction)
    scorer, best_epoch, history = fit_scorer(fit_part, stopping, config)
    labels, groups = validation.label, validation.request_id
    candidate_scores = _scores(scorer, validation.features)
    heuristic_scores = HeuristicRanker(feature_names).score(validation.features)
    served = _served_ranker(registry, feature_names)
    served_scores = served.score(validation.features)
    gate = decide(
        per_request(labels, candidate_scores, groups),
        per_request(labels, served_scores, groups),
        served.version,
        rules,
    )
    train_range = train_set.time_range()
    validation_range = validation.time_range()
    assert train_range is not None and validation_range is not None
    report = TrainingReport(
        model=evaluate(labels, candidate_scores, groups),
        heuristic=evaluate(labels, heuristic_scores, groups),
        served=evaluate(labels, served_scores, groups),
        gate=gate,
        best_epoch=best_epoch,
        epochs_run=len(history),
        train_rows=len(train_set),
        validation_rows=len(validation),
        train_range=train_range,
        validation_range=validation_range,
        loss=config.loss,
        history=history,
    )
    if registry is None:
        return report
    publish = gate.passed or force
    metadata: dict[str, Any] = {
        "created_at": time.time(),
        "status": "published" if publish else "rejected",
        "forced": force and not gate.passed,
        "gate": gate.to_dict(),
        "training": {
            "source": source,
            "loss": config.loss,
            "train_range": list(train_range),
            "validation_range": list(validation_range),
            "train_rows": len(train_set),
            "validation_rows": len(validation),
            "train_requests": train_set.n_requests,
            "validation_requests": validation.n_requests,
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "seconds": round(time.time() - started, 3),
            "config": {**asdict(config), "hidden": list(config.hidden)},
        },
        "metrics": {
            "validation": report.model.to_dict(),
            "heuristic_validation": report.heuristic.to_dict(),
            "served_validation": report.served.to_dict(),
        },
    }
    served_before = registry.served()
    if publish and canary is not None:
        metadata["status"] = "canary"
        if not served_before.pinned:
            # Pin what is served: a directory without an active file serves its newest version.
            served_before = registry.activate(served_before.version)
    version = registry.save(scorer, metadata)
    if publish and canary is not None:
        registry.start_experiment(
            Experiment(
                f"canary-{version.version}",
                (
                    Arm("served", served_before.version, "fresh", 1.0 - canary),
                    Arm("canary", version.version, "fresh", canary),
                ),
            )
        )
    elif publish:
        registry.activate(version.version, served_before)
    return replace(report, version=version, published=publish, canary=canary if publish else None)


def compare_losses(
    examples: ExampleSet | Path | str,
    config: TrainingConfig | None = None,
    vectorizer: Vectorizer | None = None,
    losses: tuple[Loss, ...] = LOSSES,
) -> dict[Loss, TrainingReport]:
    """Train once per loss on the same split (nothing is saved); reports by loss."""
    config = config or TrainingConfig()
    data = examples if isinstance(examples, ExampleSet) else read_examples(examples)
    return {loss: train(data, None, replace(config, loss=loss), vectorizer) for loss in losses}
