"""The vectorizer: shapes, names, determinism and feature values on hand-made inputs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from nearline.app.compose import vectorizer_from_settings
from nearline.foundation.settings import load_settings
from nearline.model.geo import haversine_km, nearest_km
from nearline.model.vectorizer import Vectorizer, VectorizerConfig

NOW = 1_764_384_000.0
DIM = 8


def unit(i: int) -> list[float]:
    vector = [0.0] * DIM
    vector[i] = 1.0
    return vector


def action(item: str, kind: str, age: float, **attributes: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{item}-{kind}",
        "item_id": item,
        "action": kind,
        "ts": NOW - age,
        "attributes": attributes,
        "joined": True,
    }


def member(*actions: dict[str, Any], counts: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "member_id": "m1",
        "as_of": NOW,
        "last_event_ts": max((a["ts"] for a in actions), default=None),
        "last_applied_at": None,
        "recent_actions": list(actions),
        "counts": counts or {},
    }


@pytest.fixture
def vectorizer() -> Vectorizer:
    return Vectorizer(VectorizerConfig(embedding_dim=DIM, half_life_s=3600.0))


def column(v: Vectorizer, matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, v.index(name)]


def test_names_are_stable_and_shape_follows_candidates(vectorizer: Vectorizer) -> None:
    names = vectorizer.feature_names
    assert len(names) == len(set(names)) == vectorizer.dim
    assert (
        names == Vectorizer(VectorizerConfig(embedding_dim=DIM, half_life_s=3600.0)).feature_names
    )
    assert "count_24h_dismiss" in names and "sim_engaged_wmean" in names
    matrix = vectorizer.transform(member(), {"a": {}, "b": {"category": "eng"}}, NOW)
    assert matrix.shape == (2, vectorizer.dim) and matrix.dtype == np.float32
    empty = vectorizer.transform(member(), {}, NOW)
    assert empty.shape == (0, vectorizer.dim)


def test_names_follow_settings_windows() -> None:
    settings = load_settings(windows="15m,2h,96h", embedding_dim=16)
    v = vectorizer_from_settings(settings)
    assert v.config.windows == ("15m", "2h", "96h") and v.config.embedding_dim == 16
    assert "count_15m_click" in v.feature_names and "count_1h_click" not in v.feature_names


def test_deterministic(vectorizer: Vectorizer) -> None:
    features = member(
        action("i1", "click", 60, embedding=unit(0), category="eng", geo={"lat": 52.0, "lon": 4.0}),
        action("i2", "dismiss", 120, embedding=unit(1), company="acme"),
    )
    candidates = {f"c{i}": {"embedding": unit(i % DIM), "popularity": i} for i in range(20)}
    first = vectorizer.transform(features, candidates, NOW)
    again = vectorizer.transform(features, candidates, NOW)
    assert np.array_equal(first, again)
    assert np.isfinite(first).all()


def test_similarity_to_clicked_and_dismissed_items(vectorizer: Vectorizer) -> None:
    features = member(
        action("i1", "click", 30, embedding=unit(0)), action("i2", "dismiss", 30, embedding=unit(1))
    )
    candidates = {
        "same-as-click": {"embedding": unit(0)},
        "same-as-dismiss": {"embedding": unit(1)},
    }
    m = vectorizer.transform(features, candidates, NOW)
    assert column(vectorizer, m, "sim_engaged_max") == pytest.approx([1.0, 0.0], abs=1e-6)
    assert column(vectorizer, m, "sim_engaged_wmean") == pytest.approx([1.0, 0.0], abs=1e-6)
    assert column(vectorizer, m, "sim_dismissed_max") == pytest.approx([0.0, 1.0], abs=1e-6)
    assert column(vectorizer, m, "has_engaged_embedding").tolist() == [1.0, 1.0]


def test_recency_weighting_uses_half_life(vectorizer: Vectorizer) -> None:
    # Two clicks one half-life apart: weights 1 and 0.5 -> mean similarity 1/1.5 and 0.5/1.5.
    features = member(
        action("new", "click", 0, embedding=unit(0)),
        action("old", "click", 3600, embedding=unit(1)),
    )
    m = vectorizer.transform(
        features, {"a": {"embedding": unit(0)}, "b": {"embedding": unit(1)}}, NOW
    )
    assert column(vectorizer, m, "sim_engaged_wmean") == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


def test_history_flags_for_item_category_company(vectorizer: Vectorizer) -> None:
    features = member(
        action("i1", "apply", 10, category="eng", company="acme"),
        action("i2", "dismiss", 20, category="sales", company="globex"),
        action("i3", "view", 30),
    )
    candidates = {
        "i1": {"category": "eng", "company": "acme"},
        "i2": {"category": "sales", "company": "globex"},
        "i3": {"category": "ops", "company": "initech"},
        "i4": {},
    }
    m = vectorizer.transform(features, candidates, NOW)
    assert column(vectorizer, m, "item_engaged").tolist() == [1, 0, 0, 0]
    assert column(vectorizer, m, "item_dismissed").tolist() == [0, 1, 0, 0]
    assert column(vectorizer, m, "item_viewed").tolist() == [0, 0, 1, 0]
    assert column(vectorizer, m, "category_engaged").tolist() == [1, 0, 0, 0]
    assert column(vectorizer, m, "category_dismissed").tolist() == [0, 1, 0, 0]
    assert column(vectorizer, m, "company_dismissed").tolist() == [0, 1, 0, 0]
    assert column(vectorizer, m, "candidate_unknown").tolist() == [0, 0, 0, 1]
    assert column(vectorizer, m, "category_missing").tolist() == [0, 0, 0, 1]


def test_counts_and_time_since_last_action(vectorizer: Vectorizer) -> None:
    features = member(
        action("i1", "click", 100), counts={"1h": {"click": 3, "dismiss": 1}, "24h": {"click": 7}}
    )
    m = vectorizer.transform(features, {"c": {}}, NOW)
    assert column(vectorizer, m, "count_1h_click")[0] == pytest.approx(math.log1p(3))
    assert column(vectorizer, m, "count_1h_dismiss")[0] == pytest.approx(math.log1p(1))
    assert column(vectorizer, m, "count_24h_click")[0] == pytest.approx(math.log1p(7))
    assert column(vectorizer, m, "count_96h_click")[0] == 0.0
    assert column(vectorizer, m, "has_history")[0] == 1.0
    assert column(vectorizer, m, "log_seconds_since_last_action")[0] == pytest.approx(
        math.log1p(100)
    )


def test_unknown_member_has_no_history(vectorizer: Vectorizer) -> None:
    m = vectorizer.transform(member(), {"c": {"embedding": unit(0)}}, NOW)
    assert column(vectorizer, m, "has_history")[0] == 0.0
    assert column(vectorizer, m, "log_seconds_since_last_action")[0] == pytest.approx(
        math.log1p(96 * 3600)
    )
    assert column(vectorizer, m, "sim_engaged_max")[0] == 0.0
    assert column(vectorizer, m, "geo_missing")[0] == 1.0


def test_geo_distance_from_engaged_items_or_static_geo(vectorizer: Vectorizer) -> None:
    amsterdam = {"lat": 52.37, "lon": 4.90, "region": "nl"}
    berlin = {"lat": 52.52, "lon": 13.40, "region": "de"}
    features = member(action("i1", "click", 10, geo=amsterdam))
    m = vectorizer.transform(
        features, {"ber": {"geo": berlin}, "ams": {"geo": amsterdam}, "x": {}}, NOW
    )
    km = np.expm1(column(vectorizer, m, "log_geo_km"))
    assert km[0] == pytest.approx(577, abs=5)  # Amsterdam - Berlin
    assert km[1] == pytest.approx(0, abs=0.01)
    assert column(vectorizer, m, "geo_missing").tolist() == [0, 0, 1]
    assert column(vectorizer, m, "same_region").tolist() == [0, 1, 0]
    # No engaged location: the member's static geo is used instead.
    m = vectorizer.transform(member(), {"ber": {"geo": berlin}}, NOW, {"geo": amsterdam})
    assert np.expm1(column(vectorizer, m, "log_geo_km"))[0] == pytest.approx(577, abs=5)


def test_nearest_km_agrees_with_haversine() -> None:
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-80, 80, 50), rng.uniform(-180, 180, 50)
    plat, plon = rng.uniform(-80, 80, 7), rng.uniform(-180, 180, 7)
    expected = haversine_km(lat[:, None], lon[:, None], plat[None, :], plon[None, :]).min(axis=1)
    assert nearest_km(lat, lon, plat, plon) == pytest.approx(expected, rel=1e-6, abs=1e-3)


def test_popularity_and_missing_flags(vectorizer: Vectorizer) -> None:
    candidates: dict[str, dict[str, Any]] = {
        "a": {"popularity": 9.0, "embedding": unit(0)},
        "b": {"popularity": "lots", "embedding": [1.0] * (DIM - 1)},  # wrong type, wrong dim
        "c": {"popularity": float("nan"), "embedding": [float("nan")] * DIM},
        "d": {"embedding": ["x"] * DIM},
        "e": {"embedding": [0.0] * DIM},
    }
    m = vectorizer.transform(member(), candidates, NOW)
    assert column(vectorizer, m, "log_popularity")[0] == pytest.approx(math.log1p(9.0))
    assert column(vectorizer, m, "popularity_missing").tolist() == [0, 1, 1, 1, 1]
    assert column(vectorizer, m, "embedding_missing").tolist() == [0, 1, 1, 1, 1]
    assert np.isfinite(m).all()


def test_embeddings_as_lists_arrays_or_bytes_give_the_same_rows(vectorizer: Vectorizer) -> None:
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((5, DIM)).astype(np.float32)
    features = member(action("i1", "click", 10, embedding=raw[0].tolist()))
    as_list = {f"c{i}": {"embedding": raw[i].tolist()} for i in range(5)}
    as_array = {f"c{i}": {"embedding": raw[i]} for i in range(5)}
    as_bytes = {f"c{i}": {"embedding": raw[i].astype("<f4").tobytes()} for i in range(5)}
    expected = vectorizer.transform(features, as_list, NOW)
    assert np.array_equal(expected, vectorizer.transform(features, as_array, NOW))
    assert np.array_equal(expected, vectorizer.transform(features, as_bytes, NOW))


def test_config_round_trip() -> None:
    config = VectorizerConfig(windows=("1h", "4d"), half_life_s=120.0, embedding_dim=3)
    assert VectorizerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        VectorizerConfig(half_life_s=0)
