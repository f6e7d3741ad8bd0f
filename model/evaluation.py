"""Offline ranking metrics: ROC AUC over all rows; NDCG@k, MRR and HR@k per request."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Metrics", "RequestMetrics", "evaluate", "ndcg_at_k", "per_request", "roc_auc"]


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


def _rank_within_groups(
    scores: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: its request's index (into the sorted unique groups) and its 0-based rank in
    that request by descending score (ties keep the input order); plus the unique groups."""
    unique, group_index = np.unique(groups, return_inverse=True)
    order = np.lexsort((np.arange(len(scores)), -scores, group_index))
    sorted_groups = group_index[order]
    starts = np.searchsorted(sorted_groups, np.arange(len(unique)))
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores)) - starts[sorted_groups]
    return group_index, rank, unique


@dataclass(frozen=True)
class RequestMetrics:
    """NDCG@k, reciprocal rank and hit@k of each request that has a positive.

    Arrays are aligned with ``requests`` (sorted request ids); a request without any
    positive label is left out, since none of the three is defined for it.
    """

    requests: np.ndarray
    ndcg: np.ndarray
    reciprocal_rank: np.ndarray
    hit: np.ndarray
    k: int

    def __len__(self) -> int:
        return len(self.requests)

    def means(self) -> dict[str, float]:
        """``ndcg_at_k``, ``mrr``, ``hr_at_k`` (k in the name), NaN with no request."""

        def mean(values: np.ndarray) -> float:
            return float(values.mean()) if len(values) else float("nan")

        return {
            f"ndcg_at_{self.k}": mean(self.ndcg),
            "mrr": mean(self.reciprocal_rank),
            f"hr_at_{self.k}": mean(self.hit),
        }


def per_request(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10
) -> RequestMetrics:
    """The ranking metrics of every request (``groups``) with a positive, all at once."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    if not len(labels):
        empty = np.zeros(0)
        return RequestMetrics(np.asarray([], dtype=groups.dtype), empty, empty, empty, k)
    group_index, rank, unique = _rank_within_groups(scores, groups)
    n = len(unique)
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    dcg = np.bincount(group_index, weights=labels * discount, minlength=n)
    # The ideal DCG ranks each request's labels in descending order.
    _, ideal_rank, _ = _rank_within_groups(labels, groups)
    ideal_discount = np.where(ideal_rank < k, 1.0 / np.log2(ideal_rank + 2.0), 0.0)
    ideal = np.bincount(group_index, weights=labels * ideal_discount, minlength=n)
    positive = labels > 0
    first_hit = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_hit, group_index[positive], rank[positive])
    keep = ideal > 0
    first = first_hit[keep].astype(np.float64)
    return RequestMetrics(
        requests=unique[keep],
        ndcg=dcg[keep] / ideal[keep],
        reciprocal_rank=1.0 / (first + 1.0),
        hit=(first < k).astype(np.float64),
        k=k,
    )


def ndcg_at_k(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean over groups (requests) of DCG@k / ideal DCG@k with gain = label.

    Requests without any positive label are skipped (their NDCG is undefined); ties in
    score keep the input order, so the result is deterministic. NaN if no request counts.
    """
    return per_request(labels, scores, groups, k).means()[f"ndcg_at_{k}"]


@dataclass(frozen=True)
class Metrics:
    """The offline metrics nearline reports for a ranker on one example set."""

    auc: float
    ndcg_at_10: float
    rows: int
    requests: int
    positive_rate: float
    mrr: float = float("nan")
    hr_at_10: float = float("nan")
    ranked_requests: int = 0  # requests with a positive: what the ranking metrics average

    def to_dict(self) -> dict[str, float | int]:
        return {
            "auc": self.auc,
            "ndcg_at_10": self.ndcg_at_10,
            "mrr": self.mrr,
            "hr_at_10": self.hr_at_10,
            "rows": self.rows,
            "requests": self.requests,
            "ranked_requests": self.ranked_requests,
            "positive_rate": self.positive_rate,
        }

    def fmt(self) -> str:
        return (
            f"NDCG@10 {self.ndcg_at_10:.4f} MRR {self.mrr:.4f} HR@10 {self.hr_at_10:.4f} "
            f"AUC {self.auc:.4f}"
        )


def evaluate(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> Metrics:
    """AUC, NDCG@10, MRR and HR@10 of ``scores`` against ``labels``, requests by ``groups``."""
    labels = np.asarray(labels)
    ranking = per_request(labels, scores, groups, k=10)
    means = ranking.means()
    return Metrics(
        auc=roc_auc(labels, scores),
        ndcg_at_10=means["ndcg_at_10"],
        rows=len(labels),
        requests=len(np.unique(groups)) if len(labels) else 0,
        positive_rate=float(labels.mean()) if len(labels) else float("nan"),
        mrr=means["mrr"],
        hr_at_10=means["hr_at_10"],
        ranked_requests=len(ranking),
    )
