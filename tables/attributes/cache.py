"""A bounded TTL cache in front of any attribute store, for the joins made at ingest."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

from cachetools import TTLCache

from tables.attributes.schema import AttributeRecord, Kind
from tables.attributes.store import AttributeStore, StoreHealth

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = ["CachedAttributeStore"]

# Remembered for ids the backend does not have, so a stream of actions on an unknown item
# costs one backend read per TTL instead of one per batch.
_ABSENT = object()


class CachedAttributeStore(AttributeStore):
    """Reads through a bounded, expiring cache; writes and deletes go through to the backend.

    ``get_many`` serves what it can from the cache and asks the backend for the misses in a
    single call. Absent ids are cached too. Writes made through this object update the
    cache at once; writes made elsewhere (another worker) show up within ``ttl`` seconds.
    A backend failure is not cached: the next call asks again.
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
        self.maxsize = maxsize
        self._cache: TTLCache[tuple[Kind, str], object] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl, timer=clock) if maxsize > 0 else None
        )
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_settings(cls, backend: AttributeStore, settings: Settings) -> CachedAttributeStore:
        return cls(backend, maxsize=settings.attribute_cache_size, ttl=settings.attribute_cache_ttl)

    def __len__(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    async def _get_many(self, ids: list[str], kind: Kind) -> dict[str, AttributeRecord]:
        cache = self._cache
        if cache is None:
            self.misses += len(ids)
            return dict(await self.inner.get_many(ids, kind))
        found: dict[str, AttributeRecord] = {}
        missing: list[str] = []
        for record_id in ids:
            cached = cache.get((kind, record_id))
            if cached is None:
                missing.append(record_id)
            elif cached is not _ABSENT:
                found[record_id] = cast(AttributeRecord, cached)
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        if missing:
            fetched: Mapping[str, AttributeRecord] = await self.inner.get_many(missing, kind)
            for record_id in missing:
                record = fetched.get(record_id)
                cache[(kind, record_id)] = _ABSENT if record is None else record
                if record is not None:
                    found[record_id] = record
        return found

    async def _put_many(self, records: Mapping[Kind, Sequence[AttributeRecord]]) -> None:
        await self.inner.put_many([record for group in records.values() for record in group])
        if self._cache is not None:
            for kind, group in records.items():
                for record in group:
                    self._cache[(kind, record.id)] = record

    async def _delete_many(self, ids: list[str], kind: Kind) -> None:
        try:
            await self.inner.delete_many(ids, kind)
        finally:
            # Even when the delete failed part way, some ids may be gone: forget them all.
            self._forget(ids, kind)

    def _forget(self, ids: Iterable[str], kind: Kind) -> None:
        if self._cache is not None:
            for record_id in ids:
                self._cache.pop((kind, record_id), None)

    def clear(self) -> None:
        """Forget everything, e.g. after the backend was reloaded from a file."""
        if self._cache is not None:
            self._cache.clear()

    async def health(self) -> StoreHealth:
        inner = await self.inner.health()
        cache = f"cache {len(self)}/{self.maxsize}, hits {self.hits}, misses {self.misses}"
        detail = f"{inner.detail}; {cache}"
        return StoreHealth(inner.ok, inner.backend, detail)

    async def close(self) -> None:
        await self.inner.close()
