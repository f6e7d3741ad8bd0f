"""AUC and NDCG against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nearline.model.evaluation import evaluate, ndcg_at_k, roc_auc


def test_auc_by_hand() -> None:
    # Positives 0.9 and 0.3, negatives 0.8 and 0.1: 0.9 beats both, 0.3 beats one -> 3/4.
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 1, 0]), np.array([3.0, 2.0, 1.0])) == 1.0
    assert roc_auc(np.array([1, 1, 0]), np.array([1.0, 2.0, 3.0])) == 0.0


def test_auc_counts_ties_half_and_is_nan_without_both_classes() -> None:
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    # pos 0.5 ties neg 0.5 (1/2) and beats neg 0.1 (1) -> 1.5 / 2
    assert roc_auc(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.1])) == pytest.approx(0.75)
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_ndcg_by_hand() -> None:
    labels = np.array([0, 1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.5, 0.4, 0.9, 0.1])
    groups = np.array(["a", "a", "a", "b", "b", "c", "c"])
    # a: gains in ranked order 0,1,1 -> DCG 1/log2(3) + 1/log2(4); ideal 1 + 1/log2(3)
    a = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    # b has no positive and is skipped; c is ranked perfectly.
    assert ndcg_at_k(labels, scores, groups, k=10) == pytest.approx((a + 1.0) / 2)
    # k=1 only looks at the top item: a gets 0, c gets 1.
    assert ndcg_at_k(labels, scores, groups, k=1) == pytest.approx(0.5)


def test_evaluate_bundles_metrics() -> None:
    metrics = evaluate(
        np.array([1, 0, 0, 1]), np.array([0.9, 0.1, 0.8, 0.2]), np.array([1, 1, 2, 2])
    )
    assert metrics.rows == 4 and metrics.requests == 2 and metrics.positive_rate == 0.5
    assert metrics.auc == pytest.approx(0.75)  # 0.9 beats both negatives, 0.2 beats 0.1
    assert metrics.ndcg_at_10 == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
