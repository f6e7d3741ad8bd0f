"""The TTL cache in front of a store: one backend call for the misses, expiry, write-through."""

from __future__ import annotations

import asyncio

import pytest

from nearline.attribute_store import CachedAttributeStore, StoreUnavailable
from tests.unit.attribute_store.conftest import RecordingStore, item, member


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cached(backend: RecordingStore, clock: FakeClock, maxsize: int = 100) -> CachedAttributeStore:
    return CachedAttributeStore(backend, maxsize=maxsize, ttl=60.0, clock=clock)


def seeded() -> RecordingStore:
    backend = RecordingStore()
    asyncio.run(backend.put_many([item("j1"), item("j2"), item("j3"), member("j1")]))
    return backend


def test_hits_are_served_from_the_cache_and_misses_in_one_backend_call() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)

    async def scenario() -> None:
        assert list(await store.get_many(["j1", "j2"])) == ["j1", "j2"]
        assert list(await store.get_many(["j1", "j2"])) == ["j1", "j2"]
        assert list(await store.get_many(["j2", "j3", "nope"])) == ["j2", "j3"]

    asyncio.run(scenario())
    assert backend.reads == [["j1", "j2"], ["j3", "nope"]]
    assert (store.hits, store.misses) == (3, 4)


def test_absent_ids_are_remembered_until_the_ttl() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)
    asyncio.run(store.get_many(["nope"]))
    asyncio.run(store.get_many(["nope"]))
    assert backend.reads == [["nope"]]
    clock.now += 61
    asyncio.run(store.get_many(["nope"]))
    assert backend.reads == [["nope"], ["nope"]]


def test_entries_expire_after_the_ttl_and_show_newer_backend_data() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)
    asyncio.run(store.get_many(["j1"]))
    # Another writer (another worker) changes the item behind the cache's back.
    asyncio.run(backend.put_many([item("j1", category="sales")]))
    clock.now += 59
    assert asyncio.run(store.get_many(["j1"]))["j1"].attributes["category"] == "engineering"
    clock.now += 2
    assert asyncio.run(store.get_many(["j1"]))["j1"].attributes["category"] == "sales"
    assert len(backend.reads) == 2


def test_writes_through_the_cache_are_visible_at_once() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)

    async def scenario() -> None:
        await store.get_many(["j1", "new"])
        await store.put_many([item("j1", category="sales"), item("new")])
        found = await store.get_many(["j1", "new"])
        assert found["j1"].attributes["category"] == "sales" and "new" in found
        await store.delete_many(["j1"])
        assert await store.get_many(["j1"]) == {}

    asyncio.run(scenario())
    assert backend.reads == [["j1", "new"], ["j1"]]
    assert ("items", "new") in backend.data


def test_kinds_are_cached_apart() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)
    asyncio.run(store.get_many(["j1"]))
    assert asyncio.run(store.get_many(["j1"], "members")) == {"j1": member("j1")}
    assert len(backend.reads) == 2


def test_the_cache_is_bounded() -> None:
    backend, clock = RecordingStore(), FakeClock()
    store = cached(backend, clock, maxsize=10)
    asyncio.run(store.get_many([f"x{n}" for n in range(50)]))
    assert len(store) == 10


def test_size_zero_turns_the_cache_off() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock, maxsize=0)
    asyncio.run(store.get_many(["j1"]))
    asyncio.run(store.get_many(["j1"]))
    assert len(backend.reads) == 2


def test_a_failing_backend_is_not_cached() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)
    backend.fail = True
    with pytest.raises(StoreUnavailable):
        asyncio.run(store.get_many(["j1"]))
    backend.fail = False
    assert "j1" in asyncio.run(store.get_many(["j1"]))


def test_health_passes_the_backend_state_through() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)
    backend.fail = True
    health = asyncio.run(store.health())
    assert not health.ok and health.backend == "memory" and "cache 0/100" in health.detail


def test_when_full_the_oldest_written_entry_goes_first_and_expired_ones_are_dropped() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock, maxsize=2)

    async def scenario() -> None:
        await store.get_many(["j1"])
        clock.now += 1
        await store.get_many(["j2"])
        await store.get_many(["j1"])  # a hit does not make j1 younger
        await store.get_many(["j3"])  # evicts j1, the oldest written
        assert len(backend.reads) == 3
        await store.get_many(["j2", "j3"])
        assert len(backend.reads) == 3
        await store.get_many(["j1"])
        assert backend.reads[-1] == ["j1"]
        clock.now += 61
        await store.put_many([item("new")])  # everything else has expired by now
        assert len(store) == 1

    asyncio.run(scenario())


def test_a_hit_is_the_same_record_object_until_the_item_changes() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)
    first = asyncio.run(store.get_many(["j1"]))["j1"]
    assert asyncio.run(store.get_many(["j1"]))["j1"] is first
    asyncio.run(store.put_many([item("j1", category="sales")]))
    assert asyncio.run(store.get_many(["j1"]))["j1"] is not first


def test_peek_many_answers_from_the_cache_alone() -> None:
    backend, clock = seeded(), FakeClock()
    store = cached(backend, clock)

    async def scenario() -> None:
        await store.get_many(["j1", "nope"])  # j1 cached, nope cached as absent
        found, missing = store.peek_many(["j1", "nope", "j2"])
        assert list(found) == ["j1"] and found["j1"] is (await store.get_many(["j1"]))["j1"]
        assert missing == ["j2"]
        clock.now = 61.0  # expired: asked of the backend again
        assert store.peek_many(["j1", "nope"]) == ({}, ["j1", "nope"])

    asyncio.run(scenario())
    assert backend.reads == [["j1", "nope"]]  # peeking never reads the backend
    off = cached(backend, clock, maxsize=0)
    assert off.peek_many(["j1"]) == ({}, ["j1"])
