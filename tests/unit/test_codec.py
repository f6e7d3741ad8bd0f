"""The JSON codec's shared fragments, and the identity memo behind them."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from nearline.foundation import codec
from nearline.foundation.memo import IdentityMemo


def test_shared_json_writes_the_bytes_dumps_writes() -> None:
    rng = random.Random(3)
    embedding = [rng.gauss(0, 1) for _ in range(64)] + [1e-310, -0.0, 12345678.9]
    body = {"a": [{"embedding": embedding, "geo": {"lat": 52.1}}], "n": np.float32(0.5)}
    shared: dict[str, Any] = {
        "a": [{"embedding": codec.shared_json(embedding), "geo": {"lat": 52.1}}],
        "n": np.float32(0.5),
    }
    assert codec.dumps(shared) == codec.dumps(body)
    assert codec.shared_json(embedding) is codec.shared_json(embedding)  # encoded once


def test_the_memo_is_keyed_by_identity_and_bounded() -> None:
    derived: list[list[int]] = []

    def derive(value: list[int]) -> int:
        derived.append(value)
        return sum(value)

    memo: IdentityMemo[list[int], int] = IdentityMemo(derive, capacity=2)
    first, equal = [1, 2], [1, 2]
    assert memo(first) == memo(first) == 3 and derived == [first]
    assert memo(equal) == 3 and len(derived) == 2  # equal is not the same object
    third = [4]
    assert memo(third) == 4 and len(memo) == 1  # full: started over
    assert memo(first) == 3 and len(derived) == 4
