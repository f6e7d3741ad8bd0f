"""Integer codes for string attribute values, and lookups of many codes at once.

With codes, "is this candidate's category one the member engaged with" is an integer
comparison over all candidates at once, not a string comparison per candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["Vocabulary", "gather", "member_of"]

#: A code lookup goes through a table of the whole vocabulary while the vocabulary has at
#: most this many codes per code looked up (plus the minimum): cheaper than sorting then.
_DENSE_PER_CODE, _DENSE_MIN = 8, 1024


class Vocabulary:
    """Integer codes for string attribute values (category, company, region).

    Anything but a ``str`` has code -1 (absent).
    """

    __slots__ = ("_codes",)

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._codes)

    def encode(self, values: Iterable[Any]) -> np.ndarray:
        """Codes of ``values``, new strings added."""
        codes = self._codes
        out = []
        for value in values:
            if value.__class__ is str:
                code = codes.get(value)
                if code is None:
                    code = codes[value] = len(codes)
                out.append(code)
            else:
                out.append(-1)
        return np.array(out, dtype=np.int32)

    def known(self, values: Iterable[str]) -> np.ndarray:
        """Codes of those ``values`` that have one; a string never coded matches nothing."""
        codes = self._codes
        return np.array([codes[v] for v in values if v in codes], dtype=np.int32)

    def known_items(self, mapping: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Codes and values of those keys of ``mapping`` that have a code."""
        codes = self._codes
        pairs = [(codes[k], v) for k, v in mapping.items() if k in codes]
        return (
            np.array([c for c, _ in pairs], dtype=np.int32),
            np.array([v for _, v in pairs], dtype=np.float64),
        )


def _dense(size: int, codes: np.ndarray) -> bool:
    """Whether a table indexed by every code of a vocabulary of ``size`` is the cheaper way
    to look ``codes`` up: one gather, where a binary search costs a sort and a search."""
    return size <= _DENSE_PER_CODE * len(codes) + _DENSE_MIN


def gather(
    codes: np.ndarray, keys: np.ndarray, values: np.ndarray, default: float, size: int
) -> np.ndarray:
    """``values`` of the ``keys`` equal to each code; ``default`` where none is (or -1).

    ``size`` is the vocabulary's: every code and key is below it.
    """
    if not len(keys):
        return np.full(len(codes), default, dtype=np.float64)
    if _dense(size, codes):
        # The last entry stays ``default``: code -1 (no value) reads it.
        table = np.full(size + 1, default, dtype=np.float64)
        table[keys] = values
        return table[codes]  # type: ignore[no-any-return]
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    at = np.minimum(np.searchsorted(keys, codes), len(keys) - 1)
    return np.where(keys[at] == codes, values[at], default)


def member_of(codes: np.ndarray, wanted: np.ndarray, size: int) -> np.ndarray:
    """Which ``codes`` are among ``wanted`` (codes of a vocabulary of ``size``): a compare
    per code for very few, else a table of every code or a binary search in the sorted
    wanted codes (all beat np.isin at these sizes)."""
    if len(wanted) <= 3:
        found = np.zeros(len(codes), dtype=bool)
        for code in wanted.tolist():
            found |= codes == code
        return found
    if _dense(size, codes):
        table = np.zeros(size + 1, dtype=bool)  # the last entry, code -1's, stays False
        table[wanted] = True
        return table[codes]  # type: ignore[no-any-return]
    wanted = np.sort(wanted)
    at = np.minimum(np.searchsorted(wanted, codes), len(wanted) - 1)
    return wanted[at] == codes  # type: ignore[no-any-return]
