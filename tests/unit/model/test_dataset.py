"""Training-example files: round trip, validation, and the point-in-time split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nearline.model.dataset import ExampleSet, read_examples, split_by_time, write_examples
from nearline.model.exceptions import ExamplesError


def examples(requests: int = 10, per: int = 4, d: int = 3) -> ExampleSet:
    n = requests * per
    rng = np.random.default_rng(0)
    return ExampleSet(
        request_id=np.repeat([f"r{i}" for i in range(requests)], per).astype(object),
        member_id=np.repeat([f"m{i % 3}" for i in range(requests)], per).astype(object),
        ts=np.repeat(1000.0 + 10 * rng.permutation(requests), per),
        model_version=np.full(n, "heuristic-v1", dtype=object),
        item_id=np.array([f"i{i}" for i in range(n)], dtype=object),
        features=rng.standard_normal((n, d)).astype(np.float32),
        label=(rng.random(n) < 0.3).astype(np.int8),
        feature_names=tuple(f"f{i}" for i in range(d)),
    )


def test_round_trip(tmp_path: Path) -> None:
    original = examples()
    write_examples(tmp_path / "x.parquet", original)
    schema = pq.read_schema(tmp_path / "x.parquet")
    assert schema.field("features").type == pa.list_(pa.float32())
    loaded = read_examples(tmp_path / "x.parquet")
    assert np.array_equal(loaded.features, original.features)
    assert np.array_equal(loaded.label, original.label)
    assert list(loaded.request_id) == list(original.request_id)
    assert loaded.feature_names == original.feature_names


def test_bad_files_are_refused_with_a_message(tmp_path: Path) -> None:
    pq.write_table(pa.table({"request_id": ["r"]}), tmp_path / "a.parquet")
    with pytest.raises(ExamplesError, match="missing columns"):
        read_examples(tmp_path / "a.parquet")
    ragged = examples(2, 1).take(np.arange(2))
    write_examples(tmp_path / "b.parquet", ragged)
    table = pq.read_table(tmp_path / "b.parquet")
    features = pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32()))
    pq.write_table(table.set_column(5, "features", features), tmp_path / "b.parquet")
    with pytest.raises(ExamplesError, match="same length"):
        read_examples(tmp_path / "b.parquet")
    with pytest.raises(ExamplesError, match="cannot read"):
        read_examples(tmp_path / "missing.parquet")


def test_split_by_time_puts_later_requests_in_validation() -> None:
    data = examples(requests=20)
    train, validation = split_by_time(data, 0.25)
    assert train.ts.max() < validation.ts.min()
    assert len(train) + len(validation) == len(data)
    assert validation.n_requests == 5
    assert not set(train.request_id) & set(validation.request_id)
    same_time = ExampleSet(**{**data.__dict__, "ts": np.zeros(len(data))})
    with pytest.raises(ExamplesError):
        split_by_time(same_time, 0.25)
