"""Errors of the attribute store: a record that cannot be stored, a store that cannot be reached."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attribute_store.loader import LoadSummary

__all__ = ["AttributeStoreError", "InvalidRecord", "LoadFailed", "StoreUnavailable"]


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


class LoadFailed(AttributeStoreError):
    """The sink failed part way through a load; ``summary`` counts what was loaded before.

    Batches before the failing one are loaded; the failing batch is written as a whole or
    not at all (the sink's own guarantee), so the load can simply be run again.
    """

    def __init__(self, message: str, summary: LoadSummary) -> None:
        super().__init__(message)
        self.summary = summary
