"""The percentile bootstrap shared by the promotion gate and the simulator's report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nearline.model.bootstrap import percentile_interval, resample


def test_the_interval_is_the_central_share_of_the_finite_draws() -> None:
    draws = np.arange(1001, dtype=np.float64)
    assert percentile_interval(draws, 0.9) == pytest.approx((50.0, 950.0))
    spoiled = np.concatenate([draws, [np.nan, np.inf, -np.inf]])
    assert percentile_interval(spoiled, 0.9) == percentile_interval(draws, 0.9)
    low, high = percentile_interval(np.array([np.nan, np.inf]), 0.95)
    assert math.isnan(low) and math.isnan(high)


def test_resampling_draws_units_with_replacement_and_none_from_nothing() -> None:
    picks = resample(7, 500, np.random.default_rng(0))
    assert picks.shape == (500, 7) and picks.min() == 0 and picks.max() == 6
    assert any(len(set(row)) < 7 for row in picks.tolist())  # with replacement
    rng = np.random.default_rng(1)
    assert resample(0, 500, rng).shape == (500, 0)
    assert rng.integers(0, 1000) == np.random.default_rng(1).integers(0, 1000)  # untouched
