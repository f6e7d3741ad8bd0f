"""The read-time join: attributes fetched after a read, and caught up for actions stored
unjoined. The ingest-time join is tested through ingest (tests/unit/test_ingest_processor.py).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nearline.attribute_store import (
    ItemAttributes,
    item_ids,
    join_at_read,
    split_fields,
)
from tests.unit.attribute_store.conftest import item


def action(n: int, item_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{n}",
        "item_id": item_id,
        "action": "click",
        "ts": 1_800_000_000.0 + n,
        "attributes": {"source": "feed"},
        **extra,
    }


ATTRS = {"j1": item("j1", company="acme"), "j2": ItemAttributes("j2", attributes={"company": "b"})}


def test_split_fields_cleans_and_keeps_order() -> None:
    fields = split_fields([" geo", "category", "", "geo"], ["embedding"])
    assert fields.ingest == ("geo", "category")
    assert fields.read == ("embedding",)


def test_an_attribute_cannot_join_both_ways() -> None:
    with pytest.raises(ValueError, match="'geo' is listed in both NEARLINE_JOIN_AT_INGEST"):
        split_fields(["geo", "category"], ["embedding", "geo"])


def test_item_ids_are_distinct_in_first_seen_order() -> None:
    assert item_ids([action(1, "j2"), action(2, "j1"), action(3, "j2")]) == ["j2", "j1"]


def test_join_at_read_does_not_touch_its_inputs() -> None:
    actions = [action(1, "j1", joined=False), action(2, "nope", joined=True)]
    before = copy.deepcopy(actions)
    join_at_read(actions, ATTRS, ["embedding"], catch_up=["geo"])
    assert actions == before


def test_join_at_read_adds_fields_and_reports_what_is_missing() -> None:
    geo = ATTRS["j1"].as_flat_dict()["geo"]
    stored = [  # as ingest stores them, geo joined where the item has it
        action(1, "j1", joined=True, attributes={"source": "feed", "geo": geo}),
        action(2, "j2", joined=True),
    ]
    full, partial = join_at_read(stored, ATTRS, ["embedding", "company"])
    assert full["attributes"]["embedding"] == ATTRS["j1"].embedding
    assert full["attributes"]["company"] == "acme"
    assert full["attributes"]["geo"]["region"] == "Berlin"  # the ingest join is kept
    assert full["missing"] == []
    assert partial["missing"] == ["embedding"]
    assert partial["attributes"]["company"] == "b"


def test_join_at_read_with_nothing_found_flags_every_field() -> None:
    [read] = join_at_read([action(1, "j1", joined=True)], {}, ["embedding"])
    assert read["missing"] == ["embedding"]
    assert "embedding" not in read["attributes"]


def test_actions_stored_unjoined_catch_up_at_read() -> None:
    stored = [action(1, "j1", joined=False), action(2, "j2", joined=False)]  # store was down
    caught_up, still_short = join_at_read(
        stored, ATTRS, ["embedding"], catch_up=["geo", "category"]
    )
    assert caught_up["attributes"]["geo"]["region"] == "Berlin"
    assert caught_up["attributes"]["category"] == "engineering"
    assert caught_up["missing"] == []
    assert caught_up["joined"] is False  # still records what happened at ingest
    assert still_short["missing"] == ["embedding", "geo", "category"]


def test_joined_actions_do_not_catch_up() -> None:
    [read] = join_at_read([action(1, "j1", joined=True)], ATTRS, [], catch_up=["category"])
    assert "category" not in read["attributes"] and read["missing"] == []


@pytest.mark.parametrize("joined", [True, False, None])
def test_join_at_read_in_place_gives_what_the_copying_join_gives(joined: bool | None) -> None:
    extra = {} if joined is None else {"joined": joined}
    actions = [action(1, "j1", **extra), action(2, "j2", **extra), action(3, "nope", **extra)]
    actions.append({**action(4, "j1", **extra), "attributes": None})
    copied = join_at_read(actions, ATTRS, ["embedding"], catch_up=["geo"])
    own = copy.deepcopy(actions)
    in_place = join_at_read(own, ATTRS, ["embedding"], catch_up=["geo"], in_place=True)
    assert in_place == copied
    assert [list(a) for a in in_place] == [list(a) for a in copied]  # key order: same JSON
    assert all(read is given for read, given in zip(in_place, own, strict=True))
    # A record's values are shared, as the copying join shares them, and never changed.
    assert in_place[0]["attributes"]["embedding"] is ATTRS["j1"].embedding
    assert ATTRS["j1"].as_flat_dict()["embedding"] == [
        sum(map(ord, "j1")) % 97 + i / 10 for i in range(4)
    ]
