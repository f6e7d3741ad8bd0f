"""The limits of what a request or an event may carry, in one place.

An action event, an attribute record and an HTTP request all name members and items by
id: one length bounds them all, so an id accepted anywhere can be asked for everywhere.
"""

from __future__ import annotations

__all__ = ["MAX_BODY_BYTES", "MAX_ID_LENGTH"]

#: The longest member, item or event id, in characters.
MAX_ID_LENGTH = 256
#: The largest HTTP request body, in bytes (a request of 1,000 candidates is ~30 KB).
MAX_BODY_BYTES = 1 << 20
