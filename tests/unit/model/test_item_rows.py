"""Per-item rows behind the attribute cache: fresh as the cache, fetched only when stale."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest

from nearline.attribute_store import CachedAttributeStore, ItemAttributes
from nearline.attribute_store.schema import Geo, Scalar
from nearline.model.item_rows import ItemRows
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from tests.unit.attribute_store.conftest import RecordingStore
from tests.unit.model.reference_vectorizer import ReferenceVectorizer

NOW = 1_764_384_000.0
DIM = 4
FEATURES: dict[str, Any] = {
    "recent_actions": [
        {
            "item_id": "x",
            "action": "click",
            "ts": NOW - 60,
            "attributes": {"embedding": [1.0, 0.5, 0.0, 0.0], "category": "eng", "company": "acme"},
        }
    ]
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(item_id: str, category: str = "eng", x: float = 1.0, shape: int = 0) -> ItemAttributes:
    """An item; ``shape`` picks which of embedding, geo and company it lacks."""
    attributes: dict[str, Scalar] = {"category": category}
    if not shape & 4:
        attributes["company"] = "acme"
    embedding = None if shape & 1 else [x, 0.0, 1.0, 0.0]
    return ItemAttributes(item_id, embedding, None if shape & 2 else Geo(52.0, 4.0), attributes)


class Setup:
    def __init__(self, capacity: int = 100) -> None:
        self.backend = RecordingStore()
        self.clock = FakeClock()
        self.cache = CachedAttributeStore(self.backend, maxsize=1000, ttl=60.0, clock=self.clock)
        self.vectorizer = Vectorizer(VectorizerConfig(embedding_dim=DIM))
        self.rows = ItemRows(self.vectorizer, capacity=capacity)
        self.cache.watch(lambda kind, ids: self.rows.forget(ids) if kind == "items" else None)
        self.fetched: list[list[str]] = []

    async def fetch(self, ids: list[str]) -> Any:
        self.fetched.append(list(ids))
        return await self.cache.get_many_until(ids)

    def matrix(self, item_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        rows, absent = asyncio.run(self.rows.fetch_rows(item_ids, self.fetch, self.clock()))
        return self.vectorizer.transform_rows(FEATURES, rows, NOW), absent

    def expected(self, item_ids: list[str]) -> np.ndarray:
        """The matrix of attribute dicts from what the backend holds now; its columns the
        frozen reference has are checked against the reference first."""
        flat = {}
        for item_id in item_ids:
            stored = self.backend.data.get(("items", item_id))
            flat[item_id] = stored.as_flat_dict() if stored is not None else None
        matrix = self.vectorizer.transform(FEATURES, flat, NOW)
        reference = ReferenceVectorizer(self.vectorizer.config)
        columns = [self.vectorizer.index(name) for name in reference.feature_names]
        np.testing.assert_allclose(
            matrix[:, columns], reference.transform(FEATURES, flat, NOW), rtol=1e-5, atol=1e-5
        )
        return matrix


def column(setup: Setup, matrix: np.ndarray, name: str) -> list[float]:
    return matrix[:, setup.vectorizer.index(name)].tolist()  # type: ignore[no-any-return]


def test_only_stale_rows_are_fetched_and_writes_through_the_cache_show_at_once() -> None:
    setup = Setup()
    asyncio.run(setup.cache.put_many([record("a"), record("b", "sales")]))
    matrix, absent = setup.matrix(["a", "b", "nope"])
    assert absent == ["nope"] and setup.fetched == [["a", "b", "nope"]]
    assert column(setup, matrix, "category_engaged") == [1.0, 0.0, 0.0]
    setup.matrix(["a", "b", "nope"])
    assert len(setup.fetched) == 1  # everything trusted: no fetch at all
    asyncio.run(setup.cache.put_many([record("b", "eng"), record("nope")]))
    matrix, absent = setup.matrix(["a", "b", "nope"])
    assert absent == [] and setup.fetched[-1] == ["b", "nope"]
    assert column(setup, matrix, "category_engaged") == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(matrix, setup.expected(["a", "b", "nope"]), atol=1e-6)
    asyncio.run(setup.cache.delete_many(["a"]))
    matrix, absent = setup.matrix(["a", "b"])
    assert absent == ["a"] and column(setup, matrix, "candidate_unknown") == [1.0, 0.0]


def test_changes_made_elsewhere_show_when_the_cache_entry_expires() -> None:
    setup = Setup()
    asyncio.run(setup.backend.put_many([record("a")]))
    setup.matrix(["a"])
    asyncio.run(setup.backend.put_many([record("a", "sales")]))  # another worker's write
    setup.clock.now += 59
    matrix, _ = setup.matrix(["a"])
    assert column(setup, matrix, "category_engaged") == [1.0] and len(setup.fetched) == 1
    setup.clock.now += 2
    matrix, _ = setup.matrix(["a"])
    assert column(setup, matrix, "category_engaged") == [0.0] and len(setup.fetched) == 2
    assert setup.rows.compiled == 2
    # Re-read after expiry but unchanged: an equal record keeps its row, nothing recomputed.
    setup.clock.now += 61
    setup.matrix(["a"])
    assert len(setup.fetched) == 3 and setup.rows.compiled == 2


def test_an_unavailable_store_leaves_known_rows_in_use_and_remembers_nothing() -> None:
    setup = Setup()
    asyncio.run(setup.cache.put_many([record("a")]))
    setup.matrix(["a"])
    setup.backend.fail = True

    async def failing(ids: list[str]) -> Any:
        return {}

    rows, absent = asyncio.run(setup.rows.fetch_rows(["a", "b"], failing, setup.clock()))
    assert absent == ["b"] and rows.unknown.tolist() == [False, True]
    setup.backend.fail = False
    asyncio.run(setup.backend.put_many([record("b")]))
    _, absent = setup.matrix(["a", "b"])
    assert absent == []


@pytest.mark.parametrize("seed", range(5))
def test_interleaved_requests_with_evictions_still_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    setup = Setup(capacity=8)
    ids = [f"i{n}" for n in range(30)]
    shapes = {i: n % 8 for n, i in enumerate(ids)}  # fixed per item: what a mix-up shows

    def changed(item_id: str) -> ItemAttributes:
        return record(item_id, rng.choice(["eng", "ops"]), rng.random(), shapes[item_id])

    asyncio.run(setup.cache.put_many([changed(i) for i in ids]))

    async def slow_fetch(ids: list[str]) -> Any:
        await asyncio.sleep(rng.random() / 1000)
        return await setup.cache.get_many_until(ids)

    async def one(item_ids: list[str]) -> tuple[list[str], np.ndarray]:
        await asyncio.sleep(rng.random() / 1000)
        if rng.random() < 0.3:  # items change while requests are in flight
            await setup.cache.put_many([changed(rng.choice(ids))])
        rows, _ = await setup.rows.fetch_rows(item_ids, slow_fetch, setup.clock())
        return item_ids, setup.vectorizer.transform_rows(FEATURES, rows, NOW)

    async def many() -> list[tuple[list[str], np.ndarray]]:
        return await asyncio.gather(*(one(rng.sample(ids, 6)) for _ in range(40)))

    for item_ids, matrix in asyncio.run(many()):
        # Only the embedding and category change, and a request may legitimately see either
        # side of a concurrent write; which attributes an item has must never be wrong.
        expected = setup.expected(item_ids)
        for name in ("embedding_missing", "geo_missing", "company_missing", "company_engaged"):
            assert column(setup, matrix, name) == column(setup, expected, name)
    assert len(setup.rows) <= 8
    # Once quiet, every row agrees with the store.
    matrix, _ = setup.matrix(ids)
    np.testing.assert_allclose(matrix, setup.expected(ids), rtol=1e-5, atol=1e-5)
