"""Validation of item and member records, their flat view and their bytes."""

from __future__ import annotations

import math
from typing import Any

import pytest

from nearline.attribute_store import (
    Geo,
    InvalidRecord,
    ItemAttributes,
    MemberAttributes,
    decode_record,
    encode_record,
    validate_item,
    validate_member,
)

GOOD: dict[str, Any] = {
    "item_id": "j1",
    "embedding": [0.5, -1, 2.25],
    "geo": {"lat": 52.52, "lon": 13.405, "region": "Berlin"},
    "category": "engineering",
    "attributes": {"company": "acme", "remote": True, "years": 3},
}


def test_a_good_item_keeps_every_part() -> None:
    record = validate_item(GOOD, 3)
    assert record == ItemAttributes(
        "j1",
        [0.5, -1.0, 2.25],
        Geo(52.52, 13.405, "Berlin"),
        {"category": "engineering", "company": "acme", "remote": True, "years": 3},
    )
    assert all(type(x) is float for x in record.embedding or [])


def test_the_flat_view_names_every_attribute() -> None:
    assert validate_item(GOOD, 3).as_flat_dict() == {
        "embedding": [0.5, -1.0, 2.25],
        "geo": {"lat": 52.52, "lon": 13.405, "region": "Berlin"},
        "category": "engineering",
        "company": "acme",
        "remote": True,
        "years": 3,
    }


def test_absent_parts_are_absent_from_the_flat_view() -> None:
    record = validate_item({"item_id": "j2", "geo": {"region": "Remote"}}, 3)
    assert record.as_flat_dict() == {"geo": {"region": "Remote"}}


def test_numeric_ids_are_strings_and_whitespace_is_trimmed() -> None:
    assert validate_item({"item_id": 42}, 3).item_id == "42"
    assert validate_member({"member_id": " m1 "}).member_id == "m1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"item_id": None}, "item_id is missing"),
        ({"item_id": "  "}, "item_id is empty"),
        ({"item_id": 1.5}, "item_id must be a string"),
        ({"embedding": [1.0, 2.0]}, "embedding has dimension 2, expected 3"),
        ({"embedding": [1.0, math.nan, 2.0]}, "embedding[1] is nan"),
        ({"embedding": [1.0, 2.0, math.inf]}, "embedding[2] is inf"),
        ({"embedding": [1.0, "2", 3.0]}, "embedding[1] is not a number"),
        ({"embedding": [True, 0.0, 1.0]}, "embedding[0] is not a number"),
        ({"embedding": "1 2 3"}, "embedding must be a list"),
        ({"geo": {"lat": 91, "lon": 0}}, "geo.lat is 91, outside [-90, 90]"),
        ({"geo": {"lat": 0, "lon": -181}}, "geo.lon is -181, outside [-180, 180]"),
        ({"geo": {"lat": 1.0}}, "geo needs both lat and lon"),
        ({"geo": {"lat": 1, "lon": 2, "alt": 3}}, "geo has unknown field 'alt'"),
        ({"geo": {}}, "geo needs lat and lon, a region, or both"),
        ({"geo": [1, 2]}, "geo must be an object"),
        ({"category": {"nested": 1}}, "attribute 'category' must be a string, number or"),
        ({"score": math.nan}, "attribute 'score' is nan"),
        ({"attributes": {"embedding": "x"}}, "attribute name 'embedding' is reserved"),
        ({"attributes": {"category": "again"}}, "attribute 'category' is given twice"),
        ({"attributes": ["a"]}, "attributes must be an object"),
    ],
)
def test_a_bad_item_names_its_problem(change: dict[str, Any], reason: str) -> None:
    raw = {**GOOD, "attributes": {}, **change}
    with pytest.raises(InvalidRecord) as caught:
        validate_item(raw, 3)
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_a_record_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRecord, match="must be a JSON object, got list"):
        validate_item([1, 2], 3)  # type: ignore[arg-type]


def test_null_attributes_mean_not_set() -> None:
    assert validate_item({"item_id": "j", "category": None}, 3).attributes == {}


def test_members_have_free_form_attributes_only() -> None:
    assert validate_member({"member_id": "m1", "seniority": "senior"}) == MemberAttributes(
        "m1", {"seniority": "senior"}
    )
    with pytest.raises(InvalidRecord, match="member_id is missing"):
        validate_member({"seniority": "senior"})


@pytest.mark.parametrize(
    "record",
    [
        validate_item(GOOD, 3),
        ItemAttributes("bare"),
        ItemAttributes("r", geo=Geo(region="Remote")),
        MemberAttributes("m1", {"seniority": "senior", "active": False}),
    ],
)
def test_encoding_round_trips(record: ItemAttributes | MemberAttributes) -> None:
    data = encode_record(record)
    assert isinstance(data, bytes)
    assert decode_record(record.kind, data) == record


def test_the_stored_form_validates_back_to_the_same_record() -> None:
    record = validate_item(GOOD, 3)
    assert validate_item(record.to_dict(), 3) == record
