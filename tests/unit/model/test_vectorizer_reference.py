"""The array vectorizer and the per-item rows give the matrix the per-candidate one gave.

``reference_vectorizer.py`` is the vectorizer as it was before candidates became arrays;
on random, partly malformed inputs both must agree to float32 rounding on every column the
reference has. Columns added since (the freshness features) are tested on their own in
``test_freshness.py``; here they must only be finite.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest

from nearline.attribute_store import ItemAttributes
from nearline.attribute_store.schema import Geo
from nearline.model.item_rows import ItemRows
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from tests.unit.model.reference_vectorizer import ReferenceVectorizer

NOW = 1_764_384_000.0
DIM = 6
CATEGORIES = ("eng", "sales", "ops", "design")
COMPANIES = ("acme", "globex", "initech")
REGIONS = ("nl", "de", "fr")


def _embedding(rng: random.Random) -> Any:
    vector = [rng.gauss(0, 1) for _ in range(DIM)]
    return rng.choice(
        [
            vector,
            vector,
            tuple(vector),
            np.asarray(vector, dtype=np.float32),
            np.asarray(vector, dtype=np.float32).astype("<f4").tobytes(),
            None,
            vector[:-1],  # wrong dimension
            [0.0] * DIM,  # zero norm
            [float("nan")] * DIM,
            ["x"] * DIM,
            "not an embedding",
        ]
    )


def _geo(rng: random.Random) -> Any:
    return rng.choice(
        [
            {
                "lat": rng.uniform(-89, 89),
                "lon": rng.uniform(-179, 179),
                "region": rng.choice(REGIONS),
            },
            {"lat": rng.uniform(40, 60), "lon": rng.uniform(-5, 20)},
            {"region": rng.choice(REGIONS)},
            {"lat": 95.0, "lon": 4.0, "region": "nl"},  # out of range
            {"lat": "52", "lon": 4.0},
            {"lat": float("nan"), "lon": 4.0},
            {"lat": 52, "lon": 400.0, "region": 7},
            None,
            "somewhere",
        ]
    )


def _attributes(rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.08:
        return rng.choice([None, {}])
    attrs: dict[str, Any] = {}
    for name, make in (
        ("embedding", _embedding),
        ("geo", _geo),
        ("category", lambda r: r.choice([*CATEGORIES, 3, None, "other"])),
        ("company", lambda r: r.choice([*COMPANIES, True, "x-corp"])),
        (
            "popularity",
            lambda r: r.choice(
                [r.lognormvariate(0, 1), 0, -3.0, "lots", float("nan"), float("inf"), True, [1]]
            ),
        ),
    ):
        if rng.random() < 0.85:
            attrs[name] = make(rng)
    return attrs


def _features(rng: random.Random, n_items: int) -> dict[str, Any]:
    if rng.random() < 0.1:
        return {}
    actions = []
    for i in range(rng.randrange(0, 30)):
        attrs = _attributes(rng) or {}
        actions.append(
            {
                "event_id": f"e{i}",
                "item_id": rng.choice([f"i{rng.randrange(n_items)}", 17]),
                "action": rng.choice(["view", "click", "apply", "save", "dismiss", "share"]),
                "ts": rng.choice([NOW - rng.uniform(0, 4 * 86400), NOW + 5.0, None, "x"]),
                "attributes": attrs,
            }
        )
    counts = {
        w: {a: rng.choice([rng.randrange(50), -1, "x", None]) for a in ("view", "click")}
        for w in ("1h", "24h")
    }
    return {
        "member_id": "m",
        "last_event_ts": rng.choice([None, NOW - 30.0]),
        "recent_actions": actions,
        "counts": counts,
    }


def _member_attributes(rng: random.Random) -> dict[str, Any] | None:
    return rng.choice([None, {}, {"geo": _geo(rng)}])


@pytest.fixture
def config() -> VectorizerConfig:
    return VectorizerConfig(embedding_dim=DIM, half_life_s=7200.0, max_geo_points=5)


def assert_same(actual: np.ndarray, expected: np.ndarray, config: VectorizerConfig) -> None:
    """The reference's columns of ``actual`` (found by name) equal ``expected``."""
    names = Vectorizer(config).feature_names
    reference = ReferenceVectorizer(config).feature_names
    assert set(reference) < set(names) and names[: len(reference)] == reference
    assert actual.dtype == expected.dtype == np.float32
    assert actual.shape == (expected.shape[0], len(names))
    assert np.isfinite(actual).all()
    columns = [names.index(name) for name in reference]
    np.testing.assert_allclose(actual[:, columns], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(40))
def test_transform_matches_the_reference_on_random_inputs(
    config: VectorizerConfig, seed: int
) -> None:
    rng = random.Random(seed)
    fast, reference = Vectorizer(config), ReferenceVectorizer(config)
    n_items = rng.choice([0, 1, 5, 60])
    candidates = {f"i{i}": _attributes(rng) for i in range(n_items)}
    features = _features(rng, max(n_items, 1))
    member = _member_attributes(rng)
    assert_same(
        fast.transform(features, candidates, NOW, member),
        reference.transform(features, candidates, NOW, member),
        config,
    )


def _record(rng: random.Random, item_id: str) -> ItemAttributes:
    attributes: dict[str, Any] = {}
    if rng.random() < 0.8:
        attributes["category"] = rng.choice(CATEGORIES)
    if rng.random() < 0.8:
        attributes["company"] = rng.choice(COMPANIES)
    if rng.random() < 0.7:
        attributes["popularity"] = rng.choice([rng.lognormvariate(0, 1), 3])
    geo = None
    if rng.random() < 0.8:
        geo = Geo(rng.uniform(-80, 80), rng.uniform(-170, 170), rng.choice([*REGIONS, None]))
    embedding = [rng.gauss(0, 1) for _ in range(DIM)] if rng.random() < 0.9 else None
    return ItemAttributes(item_id, embedding, geo, attributes)


def gather(rows: ItemRows, item_ids: list[str], records: dict[str, ItemAttributes]) -> Any:
    """Rows given the current records; each answer is stale at once, so every call checks."""

    async def fetch(ids: list[str]) -> dict[str, tuple[ItemAttributes | None, float]]:
        return {item_id: (records.get(item_id), 0.0) for item_id in ids}

    return asyncio.run(rows.fetch_rows(item_ids, fetch, now=1.0))[0]


def test_item_rows_give_the_reference_matrix_across_changes_and_evictions(
    config: VectorizerConfig,
) -> None:
    rng = random.Random(7)
    fast, reference = Vectorizer(config), ReferenceVectorizer(config)
    rows = ItemRows(fast, capacity=40)
    store = {f"i{i}": _record(rng, f"i{i}") for i in range(100)}
    for _ in range(60):
        # Some items change (a new record object), some are re-read unchanged (an equal one).
        for item_id in rng.sample(sorted(store), 5):
            record = store[item_id]
            store[item_id] = (
                _record(rng, item_id)
                if rng.random() < 0.5
                else ItemAttributes(record.item_id, record.embedding, record.geo, record.attributes)
            )
        item_ids = rng.sample([*store, "unknown-1", "unknown-2"], rng.randrange(0, 30))
        records = {i: store[i] for i in item_ids if i in store}
        features = _features(rng, 100)
        member = _member_attributes(rng)
        flat = {i: (records[i].as_flat_dict() if i in records else None) for i in item_ids}
        expected = reference.transform(features, flat, NOW, member)
        gathered = gather(rows, item_ids, records)
        assert list(gathered.item_ids) == item_ids
        assert_same(fast.transform_rows(features, gathered, NOW, member), expected, config)
    assert len(rows) <= 40


def test_item_rows_compile_an_item_once_per_record(config: VectorizerConfig) -> None:
    vectorizer = Vectorizer(config)
    rows = ItemRows(vectorizer, capacity=10)
    rng = random.Random(1)
    records = {f"i{i}": _record(rng, f"i{i}") for i in range(3)}
    gather(rows, list(records), records)
    assert rows.compiled == 3
    gather(rows, list(records), records)
    assert rows.compiled == 3
    changed = dict(records, i1=_record(random.Random(99), "i1"))
    gather(rows, list(changed), changed)
    assert rows.compiled == 4


def test_item_rows_start_over_when_the_vocabulary_outgrows_them(config: VectorizerConfig) -> None:
    vectorizer = Vectorizer(config)
    rows = ItemRows(vectorizer, capacity=4)
    reference = ReferenceVectorizer(config)
    features = {
        "recent_actions": [
            {"item_id": "x", "action": "click", "ts": NOW - 1, "attributes": {"category": "c-3"}}
        ]
    }
    for n in range(60):
        record = ItemAttributes(f"i{n}", None, None, {"category": f"c-{n}", "company": f"co-{n}"})
        expected = reference.transform(features, {record.item_id: record.as_flat_dict()}, NOW)
        gathered = gather(rows, [record.item_id], {record.item_id: record})
        got = vectorizer.transform_rows(features, gathered, NOW)
        assert_same(got, expected, config)
    assert len(rows.vocabulary) <= rows.max_vocabulary + 2 * 4
