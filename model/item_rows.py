"""Per-item vectorizer inputs, computed once per attribute record and gathered per request."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from model.vectorizer import CandidateRows, Vectorizer, Vocabulary

__all__ = ["Fetch", "ItemRows"]

_FIRST_SIZE = 1024


class _Record(Protocol):
    @property
    def item_id(self) -> str: ...

    def as_flat_dict(self) -> dict[str, Any]: ...


#: Reads item records: for each id asked, ``(record or None if there is none, valid until)``
#: on the clock the caller passes as ``now``; an id left out is unknown for this request
#: only (the store could not answer).
Fetch = Callable[[list[str]], Awaitable[Mapping[str, "tuple[_Record | None, float]"]]]


class _Entry:
    __slots__ = ("record", "slot", "until")

    def __init__(self, record: _Record | None, slot: int, until: float) -> None:
        self.record = record
        self.slot = slot  # 0 for an item the store does not have
        self.until = until


class ItemRows:
    """The candidate half of the vectorizer for recently requested items, one slot each.

    A request for 500 candidates would otherwise read 500 attribute dicts in Python and
    normalize 500 embeddings; here each item's :class:`~model.vectorizer.CandidateRows` row
    is computed when its record is first seen, and a request gathers its candidates' slots
    with numpy indexing. A row is trusted until the time its record came with (the
    attribute cache's expiry) or until :meth:`forget` names the item (a write through the
    cache); then the record is read again and the row recomputed only if the record is
    different. Slot 0 is an unknown item's row. At most ``capacity`` items are kept, the
    ones stored longest ago dropped first; dropped items are computed again when asked.
    """

    def __init__(self, vectorizer: Vectorizer, capacity: int = 100_000) -> None:
        self.vectorizer = vectorizer
        self.capacity = max(1, capacity)
        #: Codes of categories, companies and regions; reset with every slot when it holds
        #: many more strings than the slots can use (the catalogue churned).
        self.max_vocabulary = 4 * self.capacity
        self.compiled = 0
        self._start_over()

    def _start_over(self) -> None:
        self.vocabulary = Vocabulary()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._free: list[int] = []
        self._rows = self.vectorizer.candidate_rows([], [], self.vocabulary).resized(
            min(self.capacity, _FIRST_SIZE) + 1
        )
        self._used = 1  # slot 0: the unknown item

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self, item_ids: Sequence[str] | None = None) -> None:
        """Stop trusting the rows of ``item_ids`` (all rows if ``None``) until read again."""
        entries = self._entries
        chosen = entries.values() if item_ids is None else map(entries.get, item_ids)
        for entry in chosen:
            if entry is not None:
                entry.until = -math.inf

    async def fetch_rows(
        self, item_ids: Sequence[str], fetch: Fetch, now: float
    ) -> tuple[CandidateRows, list[str]]:
        """Rows for the distinct ``item_ids``, in order, and the ids the store does not have.

        Only ids without a trusted row are fetched, in one call.
        """
        if len(self.vocabulary) > self.max_vocabulary:
            self._start_over()
        entries = self._entries
        slots: list[int] = []
        stale: list[int] = []
        for position, item_id in enumerate(item_ids):
            entry = entries.get(item_id)
            if entry is not None and entry.until > now:
                slots.append(entry.slot)
            else:
                slots.append(0)
                stale.append(position)
        # Copied before awaiting: another request may reuse slots meanwhile.
        rows = self._rows.take(np.array(slots, dtype=np.intp), item_ids)
        absent = [item_id for item_id, slot in zip(item_ids, slots, strict=True) if not slot]
        if not stale:
            return rows, absent
        fetched = await fetch([item_ids[p] for p in stale])
        found: dict[int, tuple[_Record, float]] = {}
        for position in stale:
            record, until = fetched.get(item_ids[position], (None, -math.inf))
            if record is not None:
                found[position] = (record, until)
            elif item_ids[position] in fetched:
                self._remember_absent(item_ids[position], until)
        self._complete(rows, found)
        known = {item_ids[p] for p in found}
        return rows, [item_id for item_id in absent if item_id not in known]

    def gather(self, item_ids: Sequence[str], records: Mapping[str, _Record]) -> CandidateRows:
        """Rows for the distinct ``item_ids`` given their current ``records`` (absent: unknown)."""
        if len(self.vocabulary) > self.max_vocabulary:
            self._start_over()
        rows = self._rows.take(np.zeros(len(item_ids), dtype=np.intp), item_ids)
        found: dict[int, tuple[_Record, float]] = {}
        for position, item_id in enumerate(item_ids):
            record = records.get(item_id)
            if record is not None:
                found[position] = (record, math.inf)
        self._complete(rows, found)
        return rows

    def _complete(self, rows: CandidateRows, found: dict[int, tuple[_Record, float]]) -> None:
        """Fill ``rows`` at the positions of ``found`` from their records: a stored row if
        the record is the same (or equal), else computed now and stored."""
        if rows.vocabulary is not self.vocabulary:
            # The vocabulary started over while this request awaited its records: code
            # them with the request's own vocabulary and keep nothing.
            self._compute(rows, found, store=False)
            return
        reused_at: list[int] = []
        reused_slots: list[int] = []
        new: dict[int, tuple[_Record, float]] = {}
        for position, (record, until) in found.items():
            entry = self._entries.get(record.item_id)
            if (
                entry is not None
                and entry.slot
                and (entry.record is record or entry.record == record)
            ):
                entry.record, entry.until = record, until
                reused_at.append(position)
                reused_slots.append(entry.slot)
            else:
                new[position] = (record, until)
        if reused_at:
            rows.put(reused_at, self._rows.take(np.array(reused_slots, dtype=np.intp), ()))
        if new:
            self._compute(rows, new, store=True)

    def _compute(
        self, rows: CandidateRows, found: dict[int, tuple[_Record, float]], *, store: bool
    ) -> None:
        records = [record for record, _ in found.values()]
        computed = self.vectorizer.candidate_rows(
            [record.item_id for record in records],
            [record.as_flat_dict() for record in records],
            rows.vocabulary,
        )
        rows.put(list(found), computed)
        if not store:
            return
        # Never more than the capacity at once, so no slot is handed out twice in one call.
        keep = min(len(records), self.capacity)
        kept = list(found.values())[len(records) - keep :]
        slots = [self._store(record, until) for record, until in kept]
        index = np.arange(len(records) - keep, len(records))
        self._rows.put(slots, computed.take(index, ()))
        self.compiled += keep

    def _remember_absent(self, item_id: str, until: float) -> None:
        self._insert(item_id, _Entry(None, 0, until))

    def _store(self, record: _Record, until: float) -> int:
        """A slot for ``record``'s item (its old one if it had one), entered as newest."""
        old = self._entries.get(record.item_id)
        slot = old.slot if old is not None else 0
        entry = _Entry(record, slot, until)
        self._insert(record.item_id, entry)
        if not entry.slot:
            entry.slot = self._new_slot()
        return entry.slot

    def _insert(self, item_id: str, entry: _Entry) -> None:
        entries = self._entries
        old = entries.pop(item_id, None)
        if old is not None and old.slot and not entry.slot and entry.record is None:
            self._free.append(old.slot)  # the item is gone from the store
        while len(entries) >= self.capacity:
            _, dropped = entries.popitem(last=False)
            if dropped.slot:
                self._free.append(dropped.slot)
        entries[item_id] = entry

    def _new_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == len(self._rows):
            self._rows = self._rows.resized(min(2 * len(self._rows), self.capacity + 1))
        self._used += 1
        return self._used - 1
