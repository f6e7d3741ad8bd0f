"""The recommendations-log record: what one response ranked, with its exact feature rows.

The feature matrix is logged as float32 bytes in base64 (``"features"``, see
:func:`encode_matrix`) next to the candidate ids, not as a list of numbers per candidate:
500 x 40 rows as JSON numbers were ~110 KB and took ~0.7 ms to encode and as long to
decode, on the event loop of the worker serving the request and again in the outcomes
agent; as bytes, with the columns that are the same for every candidate sent once, a
record is ~30-60 KB, ~0.05 ms to encode, and bit-exact. Records of the older shape
(``"candidates": [{"item_id", "features": [...]}]``) are still read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["decode_matrix", "encode_matrix", "log_record", "logged_rows"]

_DTYPE = "<f4"


def encode_matrix(matrix: np.ndarray) -> dict[str, Any]:
    """A JSON-ready form of a 2-D float32 matrix that decodes to the same bits.

    Columns whose every row holds the same bits (the member-level features, flags no
    candidate has) are sent once, in ``"row"``, the first row; ``"base64"`` holds only the
    other ``"columns"``, row by row. That roughly halves a typical record, and more for a
    member with little history.
    """
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {matrix.shape}")
    matrix = np.ascontiguousarray(matrix, dtype=_DTYPE)
    rows, width = matrix.shape
    if rows:
        bits = matrix.view(np.uint32)
        varying = np.flatnonzero(~(bits == bits[0]).all(axis=0))
        first = matrix[0]
    else:
        varying = np.arange(width)
        first = np.zeros(width, dtype=_DTYPE)
    data = (matrix if len(varying) == width else matrix[:, varying]).tobytes()
    return {
        "dtype": _DTYPE,
        "shape": [rows, width],
        "row": _b64(first.tobytes()),
        "columns": varying.tolist(),
        "base64": _b64(data),
    }


def decode_matrix(body: Mapping[str, Any]) -> np.ndarray:
    """The matrix of :func:`encode_matrix`; ``ValueError`` if the body is not one."""
    try:
        if body["dtype"] != _DTYPE:
            raise ValueError(f"unsupported feature dtype {body['dtype']!r}")
        rows, width = (int(n) for n in body["shape"])
        first = np.frombuffer(base64.b64decode(body["row"], validate=True), dtype=_DTYPE)
        columns = np.asarray(body["columns"], dtype=np.intp)
        data = base64.b64decode(body["base64"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not an encoded feature matrix: {exc}") from None
    if rows < 0 or len(first) != width or columns.ndim != 1:
        raise ValueError(f"a {rows} x {width} matrix cannot have a first row of {len(first)}")
    if len(columns) and (columns.min() < 0 or columns.max() >= width):
        raise ValueError(f"column index out of range for {width} columns")
    if len(data) != 4 * rows * len(columns):
        raise ValueError(f"{len(data)} bytes cannot be {rows} rows of {len(columns)} float32")
    matrix = np.tile(first, (rows, 1))
    matrix[:, columns] = np.frombuffer(data, dtype=_DTYPE).reshape(rows, len(columns))
    return matrix


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def log_record(
    *,
    request_id: str,
    member_id: str,
    ts: float,
    features_as_of: Any,
    model_version: str,
    feature_names: Sequence[str],
    item_ids: Sequence[str],
    matrix: np.ndarray,
    ranked: Sequence[str],
    context: Mapping[str, Any],
    experiment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The record logged for one response; ``matrix`` row ``i`` belongs to ``item_ids[i]``.

    ``experiment``: the experiment id and arm the response was served by, if any.
    """
    if matrix.shape != (len(item_ids), len(feature_names)):
        raise ValueError(
            f"a {matrix.shape} matrix for {len(item_ids)} items x {len(feature_names)} features"
        )
    record = {
        "request_id": request_id,
        "member_id": member_id,
        "ts": ts,
        "features_as_of": features_as_of,
        "model_version": model_version,
        "feature_names": feature_names,
        "item_ids": item_ids,
        "features": encode_matrix(matrix),
        "ranked": ranked,
        "context": context,
    }
    if experiment is not None:
        record["experiment"] = experiment
    return record


def logged_rows(record: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    """The candidate ids and their feature rows (float32) of a logged record.

    Raises ``ValueError`` (or ``KeyError``/``TypeError`` for a record of neither shape).
    """
    names = record["feature_names"]
    if "features" in record:
        item_ids = [str(item_id) for item_id in record["item_ids"]]
        matrix = decode_matrix(record["features"])
    else:  # written before the compact form
        candidates = record["candidates"]
        item_ids = [str(c["item_id"]) for c in candidates]
        matrix = np.array([c["features"] for c in candidates], dtype=np.float32)
        matrix = matrix.reshape(len(item_ids), len(names))
    if matrix.shape != (len(item_ids), len(names)):
        raise ValueError(
            f"{matrix.shape} features for {len(item_ids)} items x {len(names)} feature names"
        )
    return item_ids, matrix
