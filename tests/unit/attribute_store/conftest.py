"""Fixtures of the attribute store tests: record factories and a recording in-memory store."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from nearline.attribute_store import (
    AttributeRecord,
    AttributeStore,
    ItemAttributes,
    Kind,
    MemberAttributes,
    StoreHealth,
    StoreUnavailable,
    validate_item,
)

DIM = 4


def item(item_id: str, dim: int = DIM, **attributes: Any) -> ItemAttributes:
    """A valid item whose embedding encodes its id, so mix-ups show."""
    seed = sum(map(ord, item_id)) % 97
    return validate_item(
        {
            "item_id": item_id,
            "embedding": [seed + i / 10 for i in range(dim)],
            "geo": {"lat": 52.52, "lon": 13.405, "region": "Berlin"},
            "category": "engineering",
            **attributes,
        },
        dim,
    )


class RecordingStore(AttributeStore):
    """An in-memory store that records every backend call, to count round trips."""

    backend = "memory"

    def __init__(self) -> None:
        self.data: dict[tuple[Kind, str], AttributeRecord] = {}
        self.reads: list[list[str]] = []
        self.fail = False

    async def _get_many(self, ids: list[str], kind: Kind) -> dict[str, AttributeRecord]:
        self.reads.append(list(ids))
        if self.fail:
            raise StoreUnavailable("memory store switched off by the test")
        return {i: self.data[(kind, i)] for i in ids if (kind, i) in self.data}

    async def _put_many(self, records: Mapping[Kind, Sequence[AttributeRecord]]) -> None:
        for kind, group in records.items():
            for record in group:
                self.data[(kind, record.id)] = record

    async def _delete_many(self, ids: list[str], kind: Kind) -> None:
        for record_id in ids:
            self.data.pop((kind, record_id), None)

    async def health(self) -> StoreHealth:
        return StoreHealth(not self.fail, self.backend, "in memory")

    async def close(self) -> None:
        pass


@pytest.fixture
def recording_store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: bound to learn a free number, then closed."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel accepts connections that nobody ever answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield int(listener.getsockname()[1])
    listener.close()


def member(member_id: str, **attributes: Any) -> MemberAttributes:
    return MemberAttributes(member_id, {"seniority": "senior", **attributes})
