"""The limits of what a request or an event may carry, in one place.

An action event, an attribute record and an HTTP request all name members and items by
id: one length bounds them all, so an id accepted anywhere can be asked for everywhere.
"""

from __future__ import annotations

__all__ = ["MAX_AS_OF", "MAX_BODY_BYTES", "MAX_ID_LENGTH"]

#: The longest member, item or event id, in characters.
MAX_ID_LENGTH = 256
#: The largest HTTP request body, in bytes (a request of 1,000 candidates is ~30 KB).
MAX_BODY_BYTES = 1 << 20
#: The latest Unix time (seconds) a request may ask features as of: 1e11 s is the year 5138,
#: the boundary an event's ts is read as milliseconds from.
MAX_AS_OF = 1e11
