"""Embeddings as they arrive (JSON lists, numpy arrays, little-endian float32 ``bytes``)
made into unit-length float32 matrices for the vectorizer's cosine similarities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from nearline.foundation.memo import IdentityMemo

__all__ = ["EmbeddingBytes", "embedding_matrix", "sized"]

_SEQUENCES = (list, tuple, np.ndarray)
_FLOAT32 = np.dtype("<f4")


def sized(value: Any, dim: int) -> bool:
    """Whether ``value`` is an embedding of ``dim`` values (a sequence, or float32 bytes)."""
    if value.__class__ is bytes:
        return len(value) == 4 * dim
    return value.__class__ in _SEQUENCES and len(value) == dim


def embedding_matrix(values: Sequence[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length float32 rows (zero where unusable) and which rows were usable.

    Accepts lists/tuples (JSON), numpy arrays, or raw little-endian float32 ``bytes``; a
    batch made only of bytes is joined in one copy, by far the cheapest form to serve.
    """
    zero_row = np.zeros(dim, dtype=np.float32)
    width = 4 * dim
    rows = [
        v
        if (v.__class__ in _SEQUENCES and len(v) == dim)
        or (v.__class__ is bytes and len(v) == width)
        else zero_row
        for v in values
    ]
    if rows and all(row.__class__ is bytes for row in rows):
        matrix = np.frombuffer(b"".join(cast(list[bytes], rows)), dtype="<f4").reshape(
            len(rows), dim
        )
    else:
        rows = [np.frombuffer(r, dtype="<f4") if r.__class__ is bytes else r for r in rows]
        matrix = _float_rows(rows, dim)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    ok = np.isfinite(norms) & (norms > 0)
    if ok.all():
        return (matrix / norms[:, None]).astype(np.float32, copy=False), ok
    with np.errstate(invalid="ignore"):
        unit = np.where(ok[:, None], matrix / np.where(ok, norms, 1.0)[:, None], 0.0)
    return unit.astype(np.float32, copy=False), ok


def _float_rows(rows: list[Any], dim: int) -> np.ndarray:
    try:
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)
    except (TypeError, ValueError):
        matrix = np.zeros((len(rows), dim), dtype=np.float32)
        for i, row in enumerate(rows):
            try:
                matrix[i] = np.asarray(row, dtype=np.float32)
            except (TypeError, ValueError):
                continue  # a malformed embedding counts as missing
        return matrix


class EmbeddingBytes:
    """The float32 bytes of embedding lists, each list converted once while remembered.

    A recent action's embedding list, joined at read, is the attribute record's own, shared
    by every request until the record changes; converting its 64 Python floats cost more
    than the rest of the member's half of the vectorizer, and rows all in bytes are joined
    in one copy (see :func:`embedding_matrix`).
    """

    __slots__ = ("_memo", "dim")

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._memo = IdentityMemo(self._row)

    def rows(self, rows: list[Any]) -> list[Any]:
        """``rows`` with every list or tuple as its memoized float32 bytes."""
        if all(row.__class__ is list for row in rows):  # joined at read: the usual case
            return self._memo.many(rows)
        memo = self._memo
        return [memo(row) if row.__class__ in (list, tuple) else row for row in rows]

    def _row(self, value: Any) -> bytes:
        """One embedding list as float32 bytes: the values :func:`_float_rows` makes of it
        in a batch, or zeros (so counted as missing) if it does not convert."""
        dim = self.dim
        try:
            return np.asarray(value, dtype=_FLOAT32).reshape(dim).tobytes()
        except (TypeError, ValueError):
            return bytes(4 * dim)
