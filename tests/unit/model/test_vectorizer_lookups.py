"""The vectorizer's shortcuts give the very bits of the ways they replace.

Code lookups go through a table of the whole vocabulary when it is small and through a
binary search when it is large; history embeddings given as lists are converted once per
list object. Whichever way a matrix was made, it must be bit for bit the same, so scores
and rankings cannot change with the size of the catalogue or with what was served before.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from nearline.model.vocabulary import Vocabulary, gather, member_of
from tests.unit.model.test_vectorizer_reference import NOW, _attributes, _features


@pytest.mark.parametrize("seed", range(20))
def test_table_and_binary_search_lookups_agree(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 300))
    codes = rng.integers(-1, size, size=int(rng.integers(0, 400))).astype(np.int32)
    keys = rng.choice(size, size=int(rng.integers(0, size + 1)), replace=False).astype(np.int32)
    values = rng.normal(size=len(keys))
    huge = 10**9  # no table of this size: the binary search
    assert np.array_equal(
        gather(codes, keys, values, -7.5, size), gather(codes, keys, values, -7.5, huge)
    )
    assert np.array_equal(member_of(codes, keys, size), member_of(codes, keys, huge))


@pytest.mark.parametrize("seed", range(20))
def test_matrices_are_the_same_bits_whatever_the_vocabulary_size(seed: int) -> None:
    rng = random.Random(seed)
    config = VectorizerConfig(embedding_dim=6, half_life_s=7200.0, max_geo_points=5)
    vectorizer = Vectorizer(config)
    n_items = rng.choice([1, 5, 60])
    ids = [f"i{i}" for i in range(n_items)]
    attributes = [_attributes(rng) for _ in ids]
    features = _features(rng, n_items)
    small = vectorizer.candidate_rows(ids, attributes, Vocabulary())
    crowded = Vocabulary()
    crowded.encode(f"filler-{n}" for n in range(50_000))  # past the table's limit
    large = vectorizer.candidate_rows(ids, attributes, crowded)
    assert np.array_equal(
        vectorizer.transform_rows(features, small, NOW).view(np.uint32),
        vectorizer.transform_rows(features, large, NOW).view(np.uint32),
    )


@pytest.mark.parametrize("seed", range(20))
def test_history_embeddings_converted_once_give_the_same_bits(seed: int) -> None:
    rng = random.Random(seed)
    config = VectorizerConfig(embedding_dim=6, half_life_s=7200.0, max_geo_points=5)
    candidates = {f"i{i}": _attributes(rng) for i in range(rng.choice([1, 5, 60]))}
    features = _features(rng, len(candidates))
    served = Vectorizer(config)
    first = served.transform(features, candidates, NOW)
    again = served.transform(features, candidates, NOW)  # the same lists: converted before
    fresh = Vectorizer(config).transform(copy.deepcopy(features), candidates, NOW)
    assert np.array_equal(first.view(np.uint32), again.view(np.uint32))
    assert np.array_equal(first.view(np.uint32), fresh.view(np.uint32))
