"""One contract for every attribute store backend: the embedded RocksDB one and Aerospike."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nearline.attribute_store import (
    AttributeStore,
    EmbeddedAttributeStore,
    ItemAttributes,
    MemberAttributes,
    StoreUnavailable,
    validate_item,
)
from nearline.attribute_store.aerospike import AerospikeAttributeStore
from nearline.foundation.settings import load_settings
from tests.unit.attribute_store.conftest import DIM, item, member

NO_AEROSPIKE = (
    "NEARLINE_AEROSPIKE_HOSTS is not set: no Aerospike server can be installed in this "
    "environment or in CI; set it (and NEARLINE_AEROSPIKE_NAMESPACE) to run this variant"
)


@pytest.fixture(
    params=[
        "embedded",
        pytest.param(
            "aerospike",
            marks=pytest.mark.skipif(
                not os.environ.get("NEARLINE_AEROSPIKE_HOSTS"), reason=NO_AEROSPIKE
            ),
        ),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AttributeStore]:
    backend: AttributeStore
    if request.param == "embedded":
        backend = EmbeddedAttributeStore.in_data_dir(tmp_path)
    else:
        settings = load_settings()
        # Sets of their own, so a run never sees (or clobbers) another run's records.
        run = uuid.uuid4().hex[:8]
        backend = AerospikeAttributeStore(
            settings.aerospike_hosts,
            namespace=settings.aerospike_namespace,
            sets={"items": f"t_items_{run}", "members": f"t_members_{run}"},
            user=settings.aerospike_user,
            password=settings.aerospike_password,
            tls_name=settings.aerospike_tls_name,
            tls_cafile=settings.aerospike_tls_cafile,
            connect_timeout=settings.aerospike_connect_timeout,
            total_timeout=max(settings.aerospike_total_timeout, 1.0),
            max_retries=settings.aerospike_retries,
        )
    yield backend
    asyncio.run(_cleanup(backend))


async def _cleanup(store: AttributeStore) -> None:
    try:
        # Everything the tests below write uses ids of these shapes.
        await store.delete_many([f"i{n}" for n in range(200)] + ["shared"], "items")
        await store.delete_many([f"m{n}" for n in range(10)] + ["shared"], "members")
    except StoreUnavailable:
        pass  # a test that closed the store already
    await store.close()


def test_put_then_get_returns_the_same_records(store: AttributeStore) -> None:
    bare = ItemAttributes("i2")  # no embedding, no geo, no attributes

    async def scenario() -> dict[str, ItemAttributes]:
        await store.put_many([item("i1"), bare])
        return await store.get_many(["i1", "i2"])

    assert asyncio.run(scenario()) == {"i1": item("i1"), "i2": bare}


def test_missing_ids_are_absent_and_duplicates_are_read_once(store: AttributeStore) -> None:
    async def scenario() -> tuple[dict[str, ItemAttributes], dict[str, ItemAttributes]]:
        await store.put_many([item("i1")])
        return await store.get_many(["i1", "nope", "i1"]), await store.get_many([])

    found, empty = asyncio.run(scenario())
    assert found == {"i1": item("i1")}
    assert empty == {}


def test_a_batch_of_150_ids_is_answered_in_one_call(store: AttributeStore) -> None:
    records = [item(f"i{n}") for n in range(150)]

    async def scenario() -> dict[str, ItemAttributes]:
        await store.put_many(records)
        return await store.get_many([f"i{n}" for n in range(150)] + ["i999"])

    found = asyncio.run(scenario())
    assert len(found) == 150
    assert found["i149"].embedding == records[149].embedding


def test_put_replaces_the_whole_record(store: AttributeStore) -> None:
    newer = validate_item({"item_id": "i1", "company": "acme"}, DIM)

    async def scenario() -> dict[str, ItemAttributes]:
        await store.put_many([item("i1")])
        await store.put_many([newer])
        return await store.get_many(["i1"])

    found = asyncio.run(scenario())["i1"]
    # The embedding, geo and category of the first version are gone, not merged.
    assert found == newer
    assert found.as_flat_dict() == {"company": "acme"}


def test_the_last_record_for_an_id_in_one_batch_wins(store: AttributeStore) -> None:
    async def scenario() -> dict[str, ItemAttributes]:
        await store.put_many([item("i1", category="first"), item("i1", category="second")])
        return await store.get_many(["i1"])

    assert asyncio.run(scenario())["i1"].attributes["category"] == "second"


def test_delete_removes_only_the_named_ids(store: AttributeStore) -> None:
    async def scenario() -> dict[str, ItemAttributes]:
        await store.put_many([item("i1"), item("i2"), item("i3")])
        await store.delete_many(["i1", "i3", "never-written"])
        return await store.get_many(["i1", "i2", "i3"])

    assert list(asyncio.run(scenario())) == ["i2"]


def test_attribute_types_survive_the_round_trip(store: AttributeStore) -> None:
    typed = item("i1", remote=True, years=5, salary_band=3.5, seniority="senior")

    async def scenario() -> ItemAttributes:
        await store.put_many([typed])
        return (await store.get_many(["i1"]))["i1"]

    attributes = asyncio.run(scenario()).attributes
    assert attributes == typed.attributes
    assert type(attributes["remote"]) is bool and type(attributes["years"]) is int


def test_members_are_a_kind_of_their_own(store: AttributeStore) -> None:
    async def scenario() -> tuple[dict[str, MemberAttributes], dict[str, ItemAttributes]]:
        # Items and members in one call, and one id in both kinds.
        await store.put_many([item("shared"), member("shared"), member("m1", industry="it")])
        await store.delete_many(["shared"], "items")
        return await store.get_many(["shared", "m1"], "members"), await store.get_many(["shared"])

    members, items = asyncio.run(scenario())
    assert members == {"shared": member("shared"), "m1": member("m1", industry="it")}
    assert items == {}


def test_health_is_ok_and_names_the_backend(store: AttributeStore) -> None:
    health = asyncio.run(store.health())
    assert health.ok, health.detail
    assert health.backend == store.backend


def test_a_closed_store_is_unavailable_and_says_so(store: AttributeStore) -> None:
    async def scenario() -> None:
        await store.close()
        await store.close()  # twice is harmless
        assert not (await store.health()).ok
        await store.get_many(["i1"])

    with pytest.raises(StoreUnavailable, match="closed"):
        asyncio.run(scenario())


def test_an_unknown_kind_is_refused(store: AttributeStore) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        asyncio.run(store.get_many(["i1"], "jobs"))  # type: ignore[call-overload]
