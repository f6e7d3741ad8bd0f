"""Values of the online store's older one-key layout, built as that layout wrote them, for
tests of reading and migrating them."""

from __future__ import annotations

import struct
from binascii import b2a_base64
from typing import Any

from nearline.foundation import codec
from nearline.tables.member_state import event_id_hash

__all__ = ["legacy_value"]


def legacy_value(
    offsets: list[int],
    last_event_ts: float,
    last_applied_at: float,
    buckets: list[list[Any]],
    seen: dict[int, list[str]],
    rows: list[list[Any]],
) -> bytes:
    """One member's value: ``\\x02``, the header's length, the header (offsets, times,
    counts per bucket, event-id hashes per arrival bucket), then the rows of its actions.

    ``seen``: event ids by arrival bucket; ``rows``: ``[event_id, item_id, action, ts,
    attributes | None, joined]`` each.
    """
    header = codec.dumps(
        {
            "o": offsets,
            "t": last_event_ts,
            "p": last_applied_at,
            "b": buckets,
            "d": [
                [k, b2a_base64(b"".join(map(event_id_hash, ids)), newline=False).decode()]
                for k, ids in sorted(seen.items())
            ],
            "n": len(rows),
            "m": min((row[3] for row in rows), default=None),
        }
    )
    return b"\x02" + struct.pack(">I", len(header)) + header + codec.dumps(rows)[1:-1]
