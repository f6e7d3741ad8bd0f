"""Offline ranking metrics: ROC AUC over all rows and NDCG@k averaged over requests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Metrics", "evaluate", "ndcg_at_k", "roc_auc"]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (what Mann-Whitney U needs)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    starts = ends - counts
    return ((starts + 1 + ends) / 2.0)[inverse]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half).

    NaN when there are no positives or no negatives: AUC is undefined there, and a made-up
    0.5 would hide an empty validation split.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def ndcg_at_k(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean over groups (requests) of DCG@k / ideal DCG@k with gain = label.

    Requests without any positive label are skipped (their NDCG is undefined); ties in
    score keep the input order, so the result is deterministic. NaN if no request counts.
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    if len(labels) == 0:
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    # Sort by group, then by descending score, stable for ties.
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    sorted_groups = groups[order]
    boundaries = np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(order)]))
    values = []
    for start, end in zip(starts, ends, strict=True):
        gains = labels[order[start:end]]
        if gains.sum() <= 0:
            continue
        top = gains[:k]
        ideal = np.sort(gains)[::-1][:k]
        values.append(float(top @ discounts[: len(top)] / (ideal @ discounts[: len(ideal)])))
    return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class Metrics:
    """The offline metrics nearline reports for a ranker on one example set."""

    auc: float
    ndcg_at_10: float
    rows: int
    requests: int
    positive_rate: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "auc": self.auc,
            "ndcg_at_10": self.ndcg_at_10,
            "rows": self.rows,
            "requests": self.requests,
            "positive_rate": self.positive_rate,
        }


def evaluate(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> Metrics:
    """AUC and NDCG@10 of ``scores`` against ``labels``, requests given by ``groups``."""
    labels = np.asarray(labels)
    return Metrics(
        auc=roc_auc(labels, scores),
        ndcg_at_10=ndcg_at_k(labels, scores, groups, k=10),
        rows=len(labels),
        requests=len(np.unique(groups)) if len(labels) else 0,
        positive_rate=float(labels.mean()) if len(labels) else float("nan"),
    )
