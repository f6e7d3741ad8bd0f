"""Errors of the attribute store: a record that cannot be stored, a store that cannot be reached."""

from __future__ import annotations

__all__ = ["AttributeStoreError", "InvalidRecord", "StoreUnavailable"]


class AttributeStoreError(Exception):
    """Base class of everything the attribute store raises on purpose."""


class InvalidRecord(AttributeStoreError, ValueError):
    """A record failed validation; ``reason`` says which field and why, in one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreUnavailable(AttributeStoreError):
    """The backend cannot answer now; the message names the host or path and how to fix it.

    Callers on the hot path treat this as "no attributes" (an action is stored unjoined,
    a read reports the attribute as missing) rather than as a crash.
    """
