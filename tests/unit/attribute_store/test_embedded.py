"""What the embedded store promises beyond the contract: durability, atomic batches, locking."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nearline.attribute_store import EmbeddedAttributeStore, ItemAttributes, StoreUnavailable
from tests.unit.attribute_store.conftest import item, member


def test_records_survive_a_reopen(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = EmbeddedAttributeStore.in_data_dir(tmp_path)
        await store.put_many([item("j1"), member("m1")])
        await store.close()
        reopened = EmbeddedAttributeStore.in_data_dir(tmp_path)
        assert await reopened.get_many(["j1"]) == {"j1": item("j1")}
        assert await reopened.get_many(["m1"], "members") == {"m1": member("m1")}
        await reopened.close()

    asyncio.run(scenario())
    assert (tmp_path / "attributes" / "CURRENT").exists()


def test_a_batch_with_one_unencodable_record_writes_nothing(tmp_path: Path) -> None:
    store = EmbeddedAttributeStore.in_data_dir(tmp_path)
    # Validation would refuse this; bypassing it models a bug or a corrupt upstream object.
    broken = ItemAttributes("j2", attributes={"bad": object()})  # type: ignore[dict-item]

    async def scenario() -> dict[str, ItemAttributes]:
        with pytest.raises(TypeError):
            await store.put_many([item("j1"), broken, item("j3")])
        found = await store.get_many(["j1", "j2", "j3"])
        await store.close()
        return found

    assert asyncio.run(scenario()) == {}


def test_a_second_opener_of_the_same_dir_gets_a_clear_error(tmp_path: Path) -> None:
    store = EmbeddedAttributeStore.in_data_dir(tmp_path)
    try:
        with pytest.raises(StoreUnavailable, match="NEARLINE_DATA_DIR") as caught:
            EmbeddedAttributeStore.in_data_dir(tmp_path)
        assert str(tmp_path / "attributes") in str(caught.value)
    finally:
        asyncio.run(store.close())


def test_health_counts_records_per_kind(tmp_path: Path) -> None:
    async def scenario() -> str:
        store = EmbeddedAttributeStore.in_data_dir(tmp_path)
        await store.put_many([item("j1"), item("j2"), member("m1")])
        health = await store.health()
        await store.close()
        return health.detail

    detail = asyncio.run(scenario())
    assert "items≈2" in detail and "members≈1" in detail


def test_compact_moves_records_into_sst_files_that_are_counted(tmp_path: Path) -> None:
    store = EmbeddedAttributeStore.in_data_dir(tmp_path)

    async def scenario() -> tuple[int, int, dict[str, ItemAttributes]]:
        await store.put_many([item(f"j{n}", dim=64) for n in range(100)])
        before = store.disk_bytes()
        store.compact()
        after = store.disk_bytes()
        found = await store.get_many(["j7"])
        await store.close()
        return before, after, found

    before, after, found = asyncio.run(scenario())
    assert before == 0  # still in the memtable and the write-ahead log
    assert after > 1000  # flushed: the records are in SST files now
    assert found == {"j7": item("j7", dim=64)}
