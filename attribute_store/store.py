"""The attribute store interface: batch get, put and delete of item and member attributes."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast, overload

from nearline.attribute_store.schema import (
    KINDS,
    AttributeRecord,
    ItemAttributes,
    Kind,
    MemberAttributes,
)

__all__ = ["AttributeStore", "StoreHealth", "group_by_kind", "unique_ids"]


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What ``/readyz`` and ``/metrics`` show about the store."""

    ok: bool
    backend: str
    detail: str


class AttributeStore(abc.ABC):
    """Item and member attributes behind one async, batch-first interface.

    Every method is one round trip however many ids it gets, because joins run once per
    batch of events or once per request, never once per action. Backends raise
    :class:`~nearline.attribute_store.exceptions.StoreUnavailable` when they cannot answer.
    """

    backend: str = "abstract"

    @overload
    async def get_many(
        self, ids: Iterable[str], kind: Literal["items"] = "items"
    ) -> dict[str, ItemAttributes]: ...

    @overload
    async def get_many(
        self, ids: Iterable[str], kind: Literal["members"]
    ) -> dict[str, MemberAttributes]: ...

    async def get_many(
        self, ids: Iterable[str], kind: Kind = "items"
    ) -> dict[str, ItemAttributes] | dict[str, MemberAttributes]:
        """The records of ``ids`` that exist, by id; an absent id is absent from the dict."""
        _check_kind(kind)
        wanted = unique_ids(ids)
        if not wanted:
            return {}
        # Backends return the record type of the kind asked; the overloads promise that.
        return cast("dict[str, ItemAttributes]", dict(await self._get_many(wanted, kind)))

    @abc.abstractmethod
    async def _get_many(self, ids: list[str], kind: Kind) -> Mapping[str, AttributeRecord]:
        """Backend read of distinct, non-empty ``ids``."""

    async def put_many(self, records: Iterable[AttributeRecord]) -> None:
        """Insert or replace whole records; items and members may be mixed in one call."""
        grouped = group_by_kind(records)
        if grouped:
            await self._put_many(grouped)

    @abc.abstractmethod
    async def _put_many(self, records: Mapping[Kind, Sequence[AttributeRecord]]) -> None:
        """Backend write of non-empty groups, one record per id within a group."""

    async def delete_many(self, ids: Iterable[str], kind: Kind = "items") -> None:
        """Delete records; ids that do not exist are ignored."""
        _check_kind(kind)
        wanted = unique_ids(ids)
        if wanted:
            await self._delete_many(wanted, kind)

    @abc.abstractmethod
    async def _delete_many(self, ids: list[str], kind: Kind) -> None:
        """Backend delete of distinct, non-empty ``ids``."""

    @abc.abstractmethod
    async def health(self) -> StoreHealth:
        """Never raises: an unreachable store is ``ok=False`` with the reason in ``detail``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release files, threads and connections; calling it twice is harmless."""


def unique_ids(ids: Iterable[str]) -> list[str]:
    """Distinct ids in first-seen order: one key per item however many actions name it."""
    return list(dict.fromkeys(ids))


def group_by_kind(records: Iterable[AttributeRecord]) -> dict[Kind, list[AttributeRecord]]:
    """Records split by the set they belong to; a later record for an id replaces an earlier."""
    grouped: dict[Kind, dict[str, AttributeRecord]] = {kind: {} for kind in KINDS}
    for record in records:
        grouped[record.kind][record.id] = record
    return {kind: list(by_id.values()) for kind, by_id in grouped.items() if by_id}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
