"""The percentile bootstrap the promotion gate and the simulator's report share.

Units (requests for the gate, members for the simulator) are resampled with replacement,
the statistic is recomputed on every draw, and the interval is the draws' central
``level`` share. One implementation, so the same seed gives the same interval wherever a
statistic is bootstrapped.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["percentile_interval", "resample"]


def resample(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``[draws, n]`` indices of ``n`` units drawn with replacement, one row per draw.

    With no units, an empty ``[draws, 0]`` array, and ``rng`` is left as it was.
    """
    if not n:
        return np.zeros((draws, 0), dtype=np.int64)
    return rng.integers(0, n, (draws, n))


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of the finite ``samples``; NaN if none is.

    A draw can have no value (a ratio whose resampled units have no denominator); it is
    left out rather than voiding the interval.
    """
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)
