"""Training examples: the Parquet schema, reading and writing it, and the time split.

An :class:`ExampleSet` is numpy arrays; only reading or writing Parquet imports pyarrow
(``nearline[train]``), so a worker that builds example sets never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from nearline.foundation.extras import requires_extra
from nearline.model.exceptions import ExamplesError

__all__ = ["ExampleSet", "example_schema", "read_examples", "split_by_time", "write_examples"]

_FEATURE_NAMES_KEY = b"nearline.feature_names"


def _arrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, imported by the first read or write of a Parquet file."""
    with requires_extra("Reading or writing training examples"):
        import pyarrow as pa
        import pyarrow.parquet as pq
    return pa, pq


def example_schema() -> Any:
    """The Parquet schema of training examples (a ``pyarrow.Schema``)."""
    pa, _ = _arrow()
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("member_id", pa.string()),
            ("ts", pa.float64()),
            ("model_version", pa.string()),
            ("item_id", pa.string()),
            ("features", pa.list_(pa.float32())),
            ("label", pa.int8()),
        ]
    )


@dataclass(frozen=True)
class ExampleSet:
    """One row per (request, candidate): the logged feature row and whether it converted."""

    request_id: np.ndarray  # object array of str
    member_id: np.ndarray
    ts: np.ndarray  # float64, the request time
    model_version: np.ndarray
    item_id: np.ndarray
    features: np.ndarray  # float32 [n, d]
    label: np.ndarray  # int8 0/1
    feature_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_requests(self) -> int:
        return len(np.unique(self.request_id)) if len(self) else 0

    def take(self, mask: np.ndarray) -> ExampleSet:
        """The rows selected by a boolean mask or index array."""
        return ExampleSet(
            request_id=self.request_id[mask],
            member_id=self.member_id[mask],
            ts=self.ts[mask],
            model_version=self.model_version[mask],
            item_id=self.item_id[mask],
            features=self.features[mask],
            label=self.label[mask],
            feature_names=self.feature_names,
        )

    def time_range(self) -> tuple[float, float] | None:
        return (float(self.ts.min()), float(self.ts.max())) if len(self) else None


def write_examples(path: Path | str, examples: ExampleSet) -> None:
    """Write examples as Parquet with :func:`example_schema` (feature names in metadata)."""
    pa, pq = _arrow()
    n, d = examples.features.shape if examples.features.ndim == 2 else (0, 0)
    flat = pa.array(np.ascontiguousarray(examples.features, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32) if n else [0], pa.int32())
    features = pa.ListArray.from_arrays(offsets, flat)
    metadata = None
    if examples.feature_names is not None:
        metadata = {_FEATURE_NAMES_KEY: orjson.dumps(list(examples.feature_names))}
    table = pa.Table.from_arrays(
        [
            pa.array(examples.request_id.astype(str), pa.string()),
            pa.array(examples.member_id.astype(str), pa.string()),
            pa.array(examples.ts, pa.float64()),
            pa.array(examples.model_version.astype(str), pa.string()),
            pa.array(examples.item_id.astype(str), pa.string()),
            features,
            pa.array(examples.label.astype(np.int8), pa.int8()),
        ],
        schema=example_schema().with_metadata(metadata),
    )
    pq.write_table(table, str(path))


def read_examples(path: Path | str) -> ExampleSet:
    """Read and validate a training-examples Parquet file."""
    pa, pq = _arrow()
    try:
        table = pq.read_table(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise ExamplesError(f"cannot read training examples {path}: {exc}") from exc
    expected = example_schema().names
    missing = [name for name in expected if name not in table.column_names]
    if missing:
        raise ExamplesError(f"{path}: missing columns {missing}; expected {expected}")
    column = table.column("features").combine_chunks()
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise ExamplesError(f"{path}: 'features' must be a list of floats, not {column.type}")
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or column.null_count):
        raise ExamplesError(
            f"{path}: every 'features' row must have the same length "
            f"(found {int(lengths.min())}..{int(lengths.max())}, {column.null_count} nulls)"
        )
    width = int(lengths[0]) if len(lengths) else 0
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    features = flat.reshape(len(lengths), width)
    if not np.isfinite(features).all():
        raise ExamplesError(f"{path}: 'features' holds NaN or infinite values")
    label = table.column("label").to_numpy(zero_copy_only=False)
    if table.column("label").null_count or not np.isin(label, (0, 1)).all():
        raise ExamplesError(f"{path}: 'label' must be 0 or 1 on every row")
    names = None
    metadata = table.schema.metadata or {}
    if _FEATURE_NAMES_KEY in metadata:
        names = tuple(orjson.loads(metadata[_FEATURE_NAMES_KEY]))

    def strings(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_pylist(), dtype=object)

    return ExampleSet(
        request_id=strings("request_id"),
        member_id=strings("member_id"),
        ts=table.column("ts").to_numpy(zero_copy_only=False).astype(np.float64),
        model_version=strings("model_version"),
        item_id=strings("item_id"),
        features=features,
        label=label.astype(np.int8),
        feature_names=names,
    )


def split_by_time(
    examples: ExampleSet, validation_fraction: float = 0.2
) -> tuple[ExampleSet, ExampleSet]:
    """Train on earlier requests, validate on later ones: no validation request predates
    any training request, as it would be when the model serves.

    The cut is placed at the request-time quantile; requests at the cut go to validation.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError("validation_fraction must be between 0 and 1")
    if not len(examples):
        raise ExamplesError("no training examples")
    # One time per request, its earliest row, so a request is never split across the cut.
    requests, first = np.unique(examples.request_id, return_inverse=True)
    request_ts = np.full(len(requests), np.inf)
    np.minimum.at(request_ts, first, examples.ts)
    cut = float(np.quantile(request_ts, 1.0 - validation_fraction, method="higher"))
    in_validation = request_ts[first] >= cut
    train, validation = examples.take(~in_validation), examples.take(in_validation)
    if not len(train) or not len(validation):
        raise ExamplesError(
            f"cannot split {examples.n_requests} requests by time at {validation_fraction:.0%}: "
            "all requests share one timestamp or there are too few"
        )
    return train, validation
