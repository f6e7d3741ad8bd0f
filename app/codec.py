"""The one JSON codec: orjson, bytes in and out."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["DecodeError", "dumps", "loads"]

DecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """Serialize to compact JSON bytes (numpy arrays and dataclasses included)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises :data:`DecodeError` (a ``ValueError``) on bad input."""
    return orjson.loads(data)
