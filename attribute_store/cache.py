"""A bounded TTL cache in front of any attribute store, for the joins made at ingest."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from nearline.attribute_store.schema import KINDS, AttributeRecord, Kind
from nearline.attribute_store.store import AttributeStore, StoreHealth

__all__ = ["CachedAttributeStore", "Watcher"]

#: Told which ids of a kind were written or deleted through the cache (``None``: all).
Watcher = Callable[[Kind, "list[str] | None"], None]

# Remembered for ids the backend does not have, so a stream of actions on an unknown item
# costs one backend read per TTL instead of one per batch.
_ABSENT = object()


class CachedAttributeStore(AttributeStore):
    """Reads through a bounded, expiring cache; writes and deletes go through to the backend.

    ``get_many`` serves what it can from the cache and asks the backend for the misses in a
    single call. Absent ids are cached too. Writes made through this object update the
    cache at once; writes made elsewhere (another worker) show up within ``ttl`` seconds.
    A backend failure is not cached: the next call asks again. A cache hit hands out the
    same record object as the previous one, so callers can memoize work per record.

    Every entry lives ``ttl`` seconds from when it was written, so the entries in write
    order are also in expiry order: when full, the oldest written (expired or not) goes
    first, and a lookup costs one dict read and one comparison (a recommendation looks up
    hundreds of candidates; cachetools' TTLCache cost ~2 µs each).
    """

    def __init__(
        self,
        backend: AttributeStore,
        *,
        maxsize: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = backend
        self.backend = f"{backend.backend}+cache"
        self.maxsize = max(0, maxsize)
        self.ttl = ttl
        #: The clock of the times :meth:`get_many_until` gives.
        self.clock = clock
        self._watchers: list[Watcher] = []
        # (kind, id) -> (expires at, record or _ABSENT), oldest written first.
        self._cache: OrderedDict[tuple[Kind, str], tuple[float, object]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    async def _get_many(self, ids: list[str], kind: Kind) -> dict[str, AttributeRecord]:
        entries = await self.get_many_until(ids, kind)
        return {key: record for key, (record, _) in entries.items() if record is not None}

    async def get_many_until(
        self, ids: Sequence[str], kind: Kind = "items"
    ) -> dict[str, tuple[AttributeRecord | None, float]]:
        """Each of the distinct ``ids`` with its record (``None``: the store has none) and
        the :attr:`clock` time until which this cache gives that answer.

        For callers that keep something derived from a record: it stays good until then,
        or until a write through this cache names the id (see :meth:`watch`).
        """
        now = self.clock()
        if not self.maxsize:
            self.misses += len(ids)
            fetched = await self.inner.get_many(ids, kind)
            return {record_id: (fetched.get(record_id), now) for record_id in ids}
        cache = self._cache
        found: dict[str, tuple[AttributeRecord | None, float]] = {}
        missing: list[str] = []
        for record_id in ids:
            entry = cache.get((kind, record_id))
            if entry is None or entry[0] <= now:
                missing.append(record_id)
            else:
                value = entry[1]
                found[record_id] = (
                    None if value is _ABSENT else cast(AttributeRecord, value),
                    entry[0],
                )
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        if missing:
            fetched = await self.inner.get_many(missing, kind)
            for record_id in missing:
                record = fetched.get(record_id)
                until = self._remember(kind, record_id, _ABSENT if record is None else record)
                found[record_id] = (record, until)
        return found

    def peek_many(
        self, ids: Sequence[str], kind: Kind = "items"
    ) -> tuple[dict[str, AttributeRecord], list[str]]:
        """What the cache alone answers now: the records of the distinct ``ids`` it holds
        (an id it knows is absent is left out, as :meth:`get_many` leaves it out), and the
        ids it cannot answer, to ask :meth:`get_many` for.

        No await: a read whose records are all cached skips the event loop's round trip
        and the timeout around the backend.
        """
        now = self.clock()
        found: dict[str, AttributeRecord] = {}
        missing: list[str] = []
        if not self.maxsize:
            return found, list(ids)
        cache = self._cache
        for record_id in ids:
            entry = cache.get((kind, record_id))
            if entry is None or entry[0] <= now:
                missing.append(record_id)
            elif entry[1] is not _ABSENT:
                found[record_id] = cast(AttributeRecord, entry[1])
        self.hits += len(ids) - len(missing)  # the misses are counted when asked for
        return found, missing

    def watch(self, watcher: Watcher) -> None:
        """Call ``watcher(kind, ids)`` after every write or delete through this cache, with
        the ids it changed (``None``: all of them, on :meth:`clear`)."""
        self._watchers.append(watcher)

    def _changed(self, kind: Kind, ids: list[str] | None) -> None:
        for watcher in self._watchers:
            watcher(kind, ids)

    def _remember(self, kind: Kind, record_id: str, value: object) -> float:
        cache = self._cache
        key = (kind, record_id)
        cache.pop(key, None)  # re-inserted at the end: write order stays expiry order
        now = self.clock()
        until = now + self.ttl
        cache[key] = (until, value)
        while cache and (len(cache) > self.maxsize or next(iter(cache.values()))[0] <= now):
            cache.popitem(last=False)
        return until

    async def _put_many(self, records: Mapping[Kind, Sequence[AttributeRecord]]) -> None:
        await self.inner.put_many([record for group in records.values() for record in group])
        for kind, group in records.items():
            if self.maxsize:
                for record in group:
                    self._remember(kind, record.id, record)
            self._changed(kind, [record.id for record in group])

    async def _delete_many(self, ids: list[str], kind: Kind) -> None:
        try:
            await self.inner.delete_many(ids, kind)
        finally:
            # Even when the delete failed part way, some ids may be gone: forget them all.
            for record_id in ids:
                self._cache.pop((kind, record_id), None)
            self._changed(kind, ids)

    def clear(self) -> None:
        """Forget everything, e.g. after the backend was reloaded from a file."""
        self._cache.clear()
        for kind in KINDS:
            self._changed(kind, None)

    async def health(self) -> StoreHealth:
        inner = await self.inner.health()
        cache = f"cache {len(self)}/{self.maxsize}, hits {self.hits}, misses {self.misses}"
        detail = f"{inner.detail}; {cache}"
        return StoreHealth(inner.ok, inner.backend, detail)

    async def close(self) -> None:
        await self.inner.close()
