"""Train the scorer on logged examples, compare it with the heuristic, write a new version.

``python -m model.training EXAMPLES.parquet --model-dir DIR`` trains on the earlier
requests, early-stops on the AUC of the later ones, prints both rankers' validation
metrics and writes ``nearline-model-<version>.{pt,json}`` to DIR.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from app.settings import load_settings
from model.dataset import ExampleSet, read_examples, split_by_time
from model.evaluation import Metrics, evaluate
from model.exceptions import ExamplesError
from model.heuristic import HeuristicRanker
from model.registry import ModelRegistry, ModelVersion
from model.scorer import Scorer, ScorerConfig
from model.vectorizer import Vectorizer

__all__ = ["TrainingConfig", "TrainingReport", "fit_scorer", "main", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation knobs; recorded in the model's metadata."""

    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 3
    validation_fraction: float = 0.2
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TrainingReport:
    """What a training run produced and how the model compares with the heuristic."""

    model: Metrics
    heuristic: Metrics
    best_epoch: int
    epochs_run: int
    train_rows: int
    validation_rows: int
    train_range: tuple[float, float]
    validation_range: tuple[float, float]
    version: ModelVersion | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"validation ({self.validation_rows} rows): "
            f"model AUC {self.model.auc:.4f} NDCG@10 {self.model.ndcg_at_10:.4f} | "
            f"heuristic AUC {self.heuristic.auc:.4f} NDCG@10 {self.heuristic.ndcg_at_10:.4f} | "
            f"best epoch {self.best_epoch}/{self.epochs_run}"
            + (f" | version {self.version.version}" if self.version else "")
        )


def _scores(scorer: Scorer, features: np.ndarray, batch: int = 8192) -> np.ndarray:
    scorer.eval()
    with torch.inference_mode():
        parts = [
            scorer(torch.from_numpy(features[i : i + batch])).numpy()
            for i in range(0, len(features), batch)
        ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def fit_scorer(
    train_set: ExampleSet, validation: ExampleSet, config: TrainingConfig
) -> tuple[Scorer, int, list[dict[str, float]]]:
    """Fit an MLP with BCE loss; keep the weights of the epoch with the best validation AUC.

    Returns the scorer, the best epoch (1-based) and per-epoch history.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scorer = Scorer(
        ScorerConfig(train_set.features.shape[1], hidden=config.hidden, dropout=config.dropout)
    )
    scorer.fit_normalization(train_set.features)
    optimizer = torch.optim.AdamW(
        scorer.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    x = torch.from_numpy(np.ascontiguousarray(train_set.features, dtype=np.float32))
    y = torch.from_numpy(train_set.label.astype(np.float32))
    best_auc, best_epoch, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    epochs = tqdm(
        range(1, config.max_epochs + 1), desc="training", unit="epoch", disable=not config.progress
    )
    for epoch in epochs:
        scorer.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(scorer(x[index]), y[index])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        metrics = evaluate(
            validation.label, _scores(scorer, validation.features), validation.request_id
        )
        history.append(
            {
                "epoch": epoch,
                "loss": total / len(x),
                "auc": metrics.auc,
                "ndcg_at_10": metrics.ndcg_at_10,
            }
        )
        epochs.set_postfix(loss=f"{total / len(x):.4f}", val_auc=f"{metrics.auc:.4f}")
        if metrics.auc > best_auc:
            best_auc, best_epoch = metrics.auc, epoch
            best_state = {k: v.clone() for k, v in scorer.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break  # no validation gain for `patience` epochs
    epochs.close()
    if best_state is not None:
        scorer.load_state_dict(best_state)
    scorer.eval()
    return scorer, best_epoch, history


def train(
    examples: ExampleSet | Path | str,
    registry: ModelRegistry | None = None,
    config: TrainingConfig | None = None,
    vectorizer: Vectorizer | None = None,
) -> TrainingReport:
    """Train on ``examples`` (split by time), evaluate against the heuristic, and save a
    new version through ``registry`` when one is given."""
    config = config or TrainingConfig()
    source = str(examples) if not isinstance(examples, ExampleSet) else "in-memory examples"
    data = examples if isinstance(examples, ExampleSet) else read_examples(examples)
    vectorizer = vectorizer or (registry.vectorizer if registry else None)
    feature_names = vectorizer.feature_names if vectorizer else data.feature_names
    if feature_names is None:
        raise ExamplesError(f"{source}: no feature names in the file and no vectorizer given")
    if data.features.shape[1] != len(feature_names) or (
        data.feature_names is not None and tuple(data.feature_names) != tuple(feature_names)
    ):
        raise ExamplesError(
            f"{source}: examples have {data.features.shape[1]} features that do not match the "
            f"vectorizer's {len(feature_names)}; they were logged with another configuration"
        )
    train_set, validation = split_by_time(data, config.validation_fraction)
    if len(np.unique(train_set.label)) < 2 or len(np.unique(validation.label)) < 2:
        raise ExamplesError(f"{source}: both splits need positive and negative labels")
    started = time.time()
    scorer, best_epoch, history = fit_scorer(train_set, validation, config)
    model_metrics = evaluate(
        validation.label, _scores(scorer, validation.features), validation.request_id
    )
    heuristic = HeuristicRanker(feature_names)
    heuristic_metrics = evaluate(
        validation.label, heuristic.score(validation.features), validation.request_id
    )
    train_range = train_set.time_range()
    validation_range = validation.time_range()
    assert train_range is not None and validation_range is not None
    report = TrainingReport(
        model=model_metrics,
        heuristic=heuristic_metrics,
        best_epoch=best_epoch,
        epochs_run=len(history),
        train_rows=len(train_set),
        validation_rows=len(validation),
        train_range=train_range,
        validation_range=validation_range,
        history=history,
    )
    if registry is None:
        return report
    metadata: dict[str, Any] = {
        "created_at": time.time(),
        "training": {
            "source": source,
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
            "validation": model_metrics.to_dict(),
            "heuristic_validation": heuristic_metrics.to_dict(),
        },
    }
    version = registry.save(scorer, metadata)
    return TrainingReport(**{**report.__dict__, "version": version})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the nearline scorer.")
    parser.add_argument("examples", type=Path, help="training examples (Parquet)")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--max-epochs", type=int, default=TrainingConfig.max_epochs)
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    vectorizer = Vectorizer.from_settings(load_settings())
    registry = ModelRegistry(args.model_dir, vectorizer, backend="default")
    config = TrainingConfig(
        max_epochs=args.max_epochs, validation_fraction=args.validation_fraction, seed=args.seed
    )
    report = train(args.examples, registry, config)
    print(report.summary())


if __name__ == "__main__":
    main()
