"""The one JSON codec: orjson, bytes in and out."""

from __future__ import annotations

from typing import Any

import orjson

from nearline.foundation.memo import IdentityMemo

__all__ = ["DecodeError", "dumps", "loads", "shared_json"]

DecodeError = orjson.JSONDecodeError

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """Serialize to compact JSON bytes (numpy arrays and dataclasses included)."""
    return orjson.dumps(value, option=_OPTIONS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises :data:`DecodeError` (a ``ValueError``) on bad input."""
    return orjson.loads(data)


def _fragment(value: Any) -> orjson.Fragment:
    return orjson.Fragment(orjson.dumps(value, option=_OPTIONS))


#: ``shared_json(value)``: ``value``'s JSON, for :func:`dumps` to copy as it is, encoded
#: once per object (the bytes :func:`dumps` would write). For read-only values many
#: responses repeat, such as an item's embedding joined at read (the attribute record's own
#: list): 64 floats cost ~2 µs to encode each time, and a member's 100 actions as many times.
shared_json: IdentityMemo[Any, orjson.Fragment] = IdentityMemo(_fragment, capacity=16_384)
