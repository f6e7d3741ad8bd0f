"""Per-item vectorizer inputs, computed once per attribute record and gathered per request."""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from nearline.model.candidate_rows import CandidateRows
from nearline.model.vectorizer import Vectorizer
from nearline.model.vocabulary import Vocabulary

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


class ItemRows:
    """The candidate half of the vectorizer for recently requested items, one slot each.

    A request for 500 candidates would otherwise read 500 attribute dicts in Python and
    normalize 500 embeddings; here each item's
    :class:`~nearline.model.candidate_rows.CandidateRows` row is computed when its record is
    first seen, and a request finds its candidates' slots (one dict lookup each, in C) and
    gathers their rows with numpy indexing. A row is
    trusted until the time its record came with (the attribute cache's expiry) or until
    :meth:`forget` names the item (a write through the cache); then the record is read
    again and the row recomputed only if the record is different. Items the store does not
    have get a slot too, holding an unknown item's row. At most ``capacity`` items are
    kept, the ones stored longest ago dropped first; they are simply read again when asked.
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
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # oldest stored first
        self._free: list[int] = []
        size = min(self.capacity, _FIRST_SIZE) + 1
        # Slot 0 is never any item's: an unknown item's row, never trusted.
        self._rows = self.vectorizer.candidate_rows([], [], self.vocabulary).resized(size)
        self._until = np.full(size, -math.inf)
        self._found = np.zeros(size, dtype=bool)
        self._records: list[_Record | None] = [None] * size
        self._used = 1

    def __len__(self) -> int:
        return len(self._slot_of)

    def forget(self, item_ids: Sequence[str] | None = None) -> None:
        """Stop trusting the rows of ``item_ids`` (all rows if ``None``) until read again."""
        if item_ids is None:
            self._until[:] = -math.inf
            return
        slots = [slot for slot in map(self._slot_of.get, item_ids) if slot is not None]
        self._until[slots] = -math.inf

    async def fetch_rows(
        self, item_ids: Sequence[str], fetch: Fetch, now: float
    ) -> tuple[CandidateRows, list[str]]:
        """Rows for the distinct ``item_ids``, in order, and the ids the store does not have.

        Only ids without a trusted row are fetched, in one call.
        """
        if len(self.vocabulary) > self.max_vocabulary:
            self._start_over()
        n = len(item_ids)
        slots = np.fromiter(map(self._slot_of.get, item_ids, itertools.repeat(0)), np.intp, n)
        trusted = self._until[slots] > now
        # Copied before awaiting: another request may reuse slots meanwhile.
        rows = self._rows.take(slots, item_ids)
        if trusted.all():
            found = self._found[slots]
            return rows, [] if found.all() else _ids_at(item_ids, ~found)
        known = self._found[slots] & trusted
        stale = np.flatnonzero(~trusted).tolist()
        fetched = await fetch([item_ids[p] for p in stale])
        records: dict[int, tuple[_Record, float]] = {}
        gone: dict[str, float] = {}
        for position in stale:
            answer = fetched.get(item_ids[position])
            if answer is None:
                continue
            record, until = answer
            if record is not None:
                records[position] = (record, until)
                known[position] = True
            else:
                gone[item_ids[position]] = until
        unknown = [p for p in stale if p not in records]
        if unknown:  # the store has no such item, or could not answer
            blank = self.vectorizer.candidate_rows(
                [item_ids[p] for p in unknown], [None] * len(unknown), rows.vocabulary
            )
            rows.put(unknown, blank)
        self._complete(rows, records, gone)
        return rows, _ids_at(item_ids, ~known)

    def _complete(
        self,
        rows: CandidateRows,
        records: dict[int, tuple[_Record, float]],
        gone: dict[str, float],
    ) -> None:
        """Fill ``rows`` at the positions of ``records``: a stored row if the record is the
        same (or equal), else computed now and stored; remember the ids that are ``gone``."""
        if rows.vocabulary is not self.vocabulary:
            # The vocabulary started over while this request awaited its records: code
            # them with the request's own vocabulary and keep nothing.
            self._compute(rows, records, store=False)
            return
        reused_at: list[int] = []
        reused_slots: list[int] = []
        new: dict[int, tuple[_Record, float]] = {}
        for position, (record, until) in records.items():
            slot = self._slot_of.get(record.item_id, 0)
            old = self._records[slot]
            if old is not None and (old is record or old == record):
                self._records[slot] = record
                self._until[slot] = until
                reused_at.append(position)
                reused_slots.append(slot)
            else:
                new[position] = (record, until)
        if reused_at:
            rows.put(reused_at, self._rows.take(np.array(reused_slots, dtype=np.intp), ()))
        for item_id, until in gone.items():
            slot = self._store(item_id, None, until)
            self._rows.put([slot], self._rows.take(np.zeros(1, dtype=np.intp), ()))
        if new:
            self._compute(rows, new, store=True)

    def _compute(
        self, rows: CandidateRows, records: dict[int, tuple[_Record, float]], *, store: bool
    ) -> None:
        fresh = [record for record, _ in records.values()]
        computed = self.vectorizer.candidate_rows(
            [record.item_id for record in fresh],
            [record.as_flat_dict() for record in fresh],
            rows.vocabulary,
        )
        rows.put(list(records), computed)
        if not store:
            return
        assigned = [
            self._store(record.item_id, record, until) for record, until in records.values()
        ]
        # More new items than the capacity: later ones took the slots of earlier ones;
        # write only the rows whose item still owns its slot.
        owned = [
            i
            for i, (record, slot) in enumerate(zip(fresh, assigned, strict=True))
            if self._slot_of.get(record.item_id) == slot
        ]
        self._rows.put([assigned[i] for i in owned], computed.take(np.array(owned, np.intp), ()))
        self.compiled += len(owned)

    def _store(self, item_id: str, record: _Record | None, until: float) -> int:
        """``item_id``'s slot (its old one if it had one), entered as the newest."""
        slot_of = self._slot_of
        slot = slot_of.pop(item_id, 0)
        while len(slot_of) >= self.capacity:
            _, dropped = slot_of.popitem(last=False)
            self._records[dropped] = None
            self._until[dropped] = -math.inf
            self._free.append(dropped)
        if not slot:
            slot = self._new_slot()
        slot_of[item_id] = slot
        self._records[slot] = record
        self._found[slot] = record is not None
        self._until[slot] = until
        return slot

    def _new_slot(self) -> int:
        if self._free:
            return self._free.pop()
        size = len(self._until)
        if self._used == size:
            grown = min(2 * size, self.capacity + 1)
            self._rows = self._rows.resized(grown)
            self._until = np.concatenate([self._until, np.full(grown - size, -math.inf)])
            self._found = np.concatenate([self._found, np.zeros(grown - size, dtype=bool)])
            self._records.extend([None] * (grown - size))
        self._used += 1
        return self._used - 1


def _ids_at(item_ids: Sequence[str], mask: np.ndarray) -> list[str]:
    return [item_ids[p] for p in np.flatnonzero(mask).tolist()]
