"""Numbers read from attribute and feature values as a JSON decoder leaves them.

Anything absent, non-numeric or non-finite counts as missing, so a malformed record costs
a feature, never a request.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["number", "numbers"]


def number(value: Any) -> float | None:
    """``value`` as a float; ``None`` unless it is a finite int or float (not a bool)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def numbers(values: list[Any]) -> np.ndarray:
    """Floats with NaN for anything absent, non-numeric or non-finite."""
    try:
        # None becomes NaN here; the fast path for well-formed input.
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.array([number(v) for v in values], dtype=np.float64)
    if array.ndim != 1:  # e.g. a list given where a number belongs
        array = np.array([number(v) for v in values], dtype=np.float64)
    array[~np.isfinite(array)] = np.nan
    return array
