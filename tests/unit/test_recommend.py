"""The recommender without a broker: same ranking and log as the per-candidate reference."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest

from nearline.agents.outcomes import label_response
from nearline.app.exporting import examples_to_set
from nearline.app.recommend import RecommendationRequest, RecommendationResponse, Recommender
from nearline.attribute_store import CachedAttributeStore, ItemAttributes, MemberAttributes
from nearline.attribute_store.schema import Geo
from nearline.foundation import codec
from nearline.model.feature_log import decode_matrix, encode_matrix, logged_rows
from nearline.model.heuristic import HeuristicRanker
from nearline.model.registry import ModelRegistry
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from tests.unit.attribute_store.conftest import RecordingStore
from tests.unit.model.reference_vectorizer import ReferenceVectorizer

NOW = 1_764_384_000.0
DIM = 16


class ListLog:
    """The recommendations log as a list of the records' bytes."""

    def __init__(self) -> None:
        self.logged: list[bytes] = []

    async def log(self, member_id: str, record: dict[str, Any]) -> None:
        self.logged.append(codec.dumps(record))


def _cache() -> CachedAttributeStore:
    return CachedAttributeStore(RecordingStore(), maxsize=10_000, ttl=60.0)


def _item(rng: random.Random, n: int) -> ItemAttributes:
    attributes: dict[str, Any] = {"category": f"c{rng.randrange(5)}"}
    if rng.random() < 0.7:
        attributes["company"] = f"co{rng.randrange(4)}"
    if rng.random() < 0.6:
        attributes["popularity"] = rng.lognormvariate(0, 1)
    geo = Geo(52 + rng.random(), 4 + rng.random(), rng.choice(["nl", "de"]))
    embedding = [rng.gauss(0, 1) for _ in range(DIM)] if rng.random() < 0.9 else None
    return ItemAttributes(f"item-{n}", embedding, geo if rng.random() < 0.8 else None, attributes)


def _features(rng: random.Random, items: list[ItemAttributes]) -> dict[str, Any]:
    actions: list[dict[str, Any]] = []
    for i, record in enumerate(rng.sample(items, 12)):
        actions.append(
            {
                "event_id": f"e{i}",
                "item_id": record.item_id,
                "action": rng.choice(["view", "click", "apply", "dismiss"]),
                "ts": NOW - rng.uniform(0, 86400),
                "attributes": record.as_flat_dict(),
            }
        )
    return {
        "member_id": "m1",
        "as_of": NOW,
        "last_event_ts": max(a["ts"] for a in actions),
        "recent_actions": actions,
        "counts": {"1h": {"click": 2}, "24h": {"click": 5, "dismiss": 1}},
    }


@pytest.fixture
def recommender(monkeypatch: pytest.MonkeyPatch) -> Recommender:
    monkeypatch.setattr("nearline.app.recommend.time.time", lambda: NOW)
    registry = ModelRegistry(None, Vectorizer(VectorizerConfig(embedding_dim=DIM)))
    return Recommender(registry, _cache(), ListLog(), memo_size=50)


REFERENCE_NAMES = ReferenceVectorizer(VectorizerConfig(embedding_dim=DIM)).feature_names


def _reference(
    vectorizer: Vectorizer,
    features: dict[str, Any],
    candidates: list[str],
    records: dict[str, ItemAttributes],
    member: dict[str, Any] | None,
) -> tuple[np.ndarray, list[tuple[str, float]]]:
    reference = ReferenceVectorizer(vectorizer.config)
    flat = {c: (records[c].as_flat_dict() if c in records else None) for c in candidates}
    matrix = reference.transform(features, flat, NOW, member)
    # The heuristic weighs only columns the reference has, so its scores carry over.
    scores = HeuristicRanker(reference.feature_names).score(matrix).astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    return matrix, [(candidates[i], round(float(scores[i]), 6)) for i in order]


def test_rankings_scores_and_log_match_the_reference(recommender: Recommender) -> None:
    rng = random.Random(3)
    sink: ListLog = recommender.recommendations_log  # type: ignore[assignment]
    store = recommender.attributes
    items = [_item(rng, n) for n in range(120)]
    home = MemberAttributes("m1", {"seniority": "senior"})
    asyncio.run(store.put_many([*items, home]))

    for round_ in range(8):
        if round_ % 3 == 2:  # items change between requests: their rows must follow
            changed = [_item(rng, n) for n in rng.sample(range(120), 20)]
            for record in changed:
                items[int(record.item_id.removeprefix("item-"))] = record
            asyncio.run(store.put_many(changed))
        records = {record.item_id: record for record in items}
        features = _features(rng, items)
        wanted = [f"item-{n}" for n in rng.sample(range(130), 80)]  # some do not exist
        request = RecommendationRequest(member_id="m1", candidates=[*wanted, wanted[0]], k=30)
        response = asyncio.run(recommender.recommend(request, features))
        RecommendationResponse.model_validate(response)  # what the OpenAPI document says

        matrix, expected = _reference(
            recommender.vectorizer, features, wanted, records, home.as_flat_dict()
        )
        got = [(entry["item_id"], entry["score"]) for entry in response["items"]]
        assert [item_id for item_id, _ in got] == [item_id for item_id, _ in expected[:30]]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected[:30]], abs=1e-5)
        unknown = {entry["item_id"] for entry in response["items"] if entry.get("unknown")}
        assert unknown == {item_id for item_id, _ in got if item_id not in records}

        # What the member was shown is logged, top first, with its rows.
        logged = codec.loads(sink.logged[-1])
        item_ids, rows = logged_rows(logged)
        assert item_ids == [item_id for item_id, _ in got] == logged["ranked"]
        assert logged["request_id"] == response["request_id"]
        columns = [recommender.vectorizer.index(name) for name in REFERENCE_NAMES]
        shown = [wanted.index(item_id) for item_id in item_ids]
        np.testing.assert_allclose(rows[:, columns], matrix[shown], rtol=1e-5, atol=1e-5)


def test_every_candidate_is_logged_when_configured() -> None:
    registry = ModelRegistry(None, Vectorizer(VectorizerConfig(embedding_dim=DIM)))
    sink = ListLog()
    recommender = Recommender(registry, _cache(), sink, log_candidates="all")
    request = RecommendationRequest(member_id="m1", candidates=["a", "b", "c", "d"], k=2)
    response = asyncio.run(recommender.recommend(request, {}))
    assert len(response["items"]) == 2
    item_ids, rows = logged_rows(codec.loads(sink.logged[-1]))
    assert item_ids == ["a", "b", "c", "d"] and rows.shape[0] == 4


def test_logged_features_become_examples_bit_for_bit(recommender: Recommender) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((4, 3)).astype(np.float32)
    record = codec.loads(
        codec.dumps(
            {
                "request_id": "r1",
                "member_id": "m1",
                "ts": NOW,
                "model_version": "v",
                "feature_names": ["a", "b", "c"],
                "item_ids": ["w", "x", "y", "z"],
                "features": encode_matrix(matrix),
            }
        )
    )
    assert decode_matrix(record["features"]).tobytes() == matrix.tobytes()
    actions = [("x", "apply", NOW + 5), ("y", "dismiss", NOW + 6), ("z", "click", NOW + 61)]
    example_set = label_response(record, actions, horizon=60.0, unlabeled_as="skip")
    assert example_set is not None
    assert example_set["item_ids"] == ["x", "y"] and example_set["labels"] == [1, 0]
    # Through the examples topic's JSON and the export: the same bits as served.
    examples = examples_to_set([codec.loads(codec.dumps(example_set))], ["a", "b", "c"])
    assert list(examples.item_id) == ["x", "y"] and list(examples.label) == [1, 0]
    assert examples.features.tobytes() == matrix[1:3].tobytes()


def test_records_of_the_older_shape_are_still_read() -> None:
    record = {
        "feature_names": ["a", "b"],
        "candidates": [
            {"item_id": "x", "features": [1.0, 2.0]},
            {"item_id": "y", "features": [3, 4]},
        ],
    }
    item_ids, matrix = logged_rows(record)
    assert item_ids == ["x", "y"] and matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("rows", [0, 1, 7])
def test_feature_matrices_round_trip_bit_for_bit(rows: int) -> None:
    rng = np.random.default_rng(rows)
    matrix = rng.standard_normal((rows, 6)).astype(np.float32)
    matrix[:, 1] = 2.5  # the same for every candidate: sent once
    matrix[:, 2] = 0.0
    if rows > 1:
        matrix[1, 2] = -0.0  # equal to 0.0 but other bits: must not be folded
        matrix[0, 3] = np.nan
        matrix[-1, 4] = np.inf
    body = codec.loads(codec.dumps(encode_matrix(matrix)))
    assert body["columns"] == ([] if rows == 1 else [0, 2, 3, 4, 5] if rows > 1 else list(range(6)))
    decoded = decode_matrix(body)
    assert decoded.shape == matrix.shape and decoded.tobytes() == matrix.tobytes()


def _corrupt(change: dict[str, Any]) -> dict[str, Any]:
    body = encode_matrix(np.arange(6, dtype=np.float32).reshape(2, 3))
    return {**body, **change}


@pytest.mark.parametrize(
    "features",
    [
        _corrupt({"dtype": "<f8"}),
        _corrupt({"shape": [3, 3]}),
        _corrupt({"shape": [2, 4]}),
        _corrupt({"columns": [0, 1, 7]}),
        _corrupt({"base64": "not base64!"}),
        _corrupt({"row": None}),
        {"shape": [2, 3]},
    ],
)
def test_a_malformed_matrix_is_a_value_error(features: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        logged_rows(
            {"feature_names": ["a", "b", "c"], "item_ids": ["x", "y"], "features": features}
        )
