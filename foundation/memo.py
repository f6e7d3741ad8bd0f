"""A memo of values derived from shared read-only objects, keyed by the object itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["IdentityMemo"]

_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


class IdentityMemo(Generic[_Key, _Value]):
    """``derive(obj)`` computed once per object while the object is remembered.

    For objects many requests share and nobody mutates, such as the embedding list of an
    attribute record the attribute cache hands out again and again: hashing 64 floats per
    lookup would cost about what deriving does, so the key is the object's identity. Each
    entry holds its object, so the id cannot be reused by another object while the entry
    lives. At ``capacity`` entries the memo starts over; what requests still use comes
    back at the next request.
    """

    __slots__ = ("_derive", "_entries", "capacity")

    def __init__(self, derive: Callable[[_Key], _Value], capacity: int = 8192) -> None:
        self._derive = derive
        self.capacity = max(1, capacity)
        self._entries: dict[int, tuple[_Key, _Value]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def many(self, objs: list[_Key]) -> list[_Value]:
        """``[self(obj) for obj in objs]``, without a call per object."""
        entries = self._entries
        out: list[_Value] = []
        for obj in objs:
            entry = entries.get(id(obj))
            if entry is not None and entry[0] is obj:
                out.append(entry[1])
            else:
                out.append(self(obj))
        return out

    def __call__(self, obj: _Key) -> _Value:
        entry = self._entries.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        value = self._derive(obj)
        if len(self._entries) >= self.capacity:
            self._entries.clear()
        self._entries[id(obj)] = (obj, value)
        return value
