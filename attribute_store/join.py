"""The two joins of item attributes onto actions: copied in at ingest, or fetched at read.

At ingest, :func:`ingest_fields` picks what each item of a batch's one store read gives
its actions; ingest (:mod:`nearline.agents.ingest`) copies those into each action as it applies it,
inline on its hot path, and records ``joined``. At read, :func:`join_at_read` adds the
read-time fields, and catches up actions stored unjoined.

An action as read is a dict ``{"event_id", "item_id", "action", "ts", "attributes": {...},
"joined": bool}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from nearline.foundation.memo import IdentityMemo

__all__ = [
    "Action",
    "JoinFields",
    "ingest_fields",
    "item_ids",
    "join_at_read",
    "split_fields",
]

Action = dict[str, Any]


class _Attributes(Protocol):
    def as_flat_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class JoinFields:
    """Which attributes are copied at ingest and which are fetched at read."""

    ingest: tuple[str, ...]
    read: tuple[str, ...]


def split_fields(join_at_ingest: Iterable[str], join_at_read: Iterable[str]) -> JoinFields:
    """The two field lists from settings, cleaned; an attribute may be in only one of them."""
    ingest = _clean(join_at_ingest)
    read = _clean(join_at_read)
    both = [name for name in ingest if name in read]
    if both:
        raise ValueError(
            f"attribute {both[0]!r} is listed in both NEARLINE_JOIN_AT_INGEST and "
            "NEARLINE_JOIN_AT_READ; name each attribute in one of them"
        )
    return JoinFields(ingest, read)


def _clean(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name.strip() for name in names if name.strip()))


def item_ids(actions: Iterable[Mapping[str, Any]]) -> list[str]:
    """The distinct item ids of a batch of actions: the keys of its one store read."""
    return list(dict.fromkeys(str(action["item_id"]) for action in actions))


def ingest_fields(
    attrs_by_item: Mapping[str, _Attributes], fields: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The ``fields`` each found item has, by item id: what an ingest-time join copies.

    A found item that lacks some of the fields (no geo, say) still has its entry, perhaps
    empty: its actions are joined, there being nothing more to copy later. An item not
    found has none: its actions are stored unjoined and caught up at read.
    """
    copied: dict[str, dict[str, Any]] = {}
    for item_id, record in attrs_by_item.items():
        flat = record.as_flat_dict()
        copied[item_id] = {name: flat[name] for name in fields if name in flat}
    return copied


def join_at_read(
    actions: Iterable[Mapping[str, Any]],
    attrs_by_item: Mapping[str, _Attributes] | None,
    fields: Sequence[str],
    *,
    catch_up: Sequence[str] = (),
    in_place: bool = False,
) -> list[Action]:
    """Add read-time ``fields`` to each action's ``attributes``; list the ones not found.

    Every returned action has ``missing``: the names it should have and does not (its
    item is unknown, the store was unavailable, or the item lacks that attribute), so a
    reader can tell "no embedding" from "zero embedding". Actions stored with
    ``joined: false`` also get the ``catch_up`` fields (the ingest-time ones) when the
    store has them now; ``joined`` keeps recording what happened at ingest.

    ``in_place=True`` joins into the given action dicts and returns them: for a reader
    whose actions (and their ``attributes`` dicts) were just made for it, where copying
    each was half the join's cost. The values joined are the records' own: read-only.
    """
    fields = tuple(fields)
    with_catch_up = fields + tuple(name for name in catch_up if name not in fields)
    flat_by_item: dict[str, dict[str, Any] | None] = {}
    out: list[Action] = []
    for action in actions:
        flat = _flat(action["item_id"], attrs_by_item, flat_by_item) or _NOTHING
        wanted = with_catch_up if action.get("joined") is False else fields
        if in_place:
            read = cast(Action, action)
            attributes = action.get("attributes") or {}
        else:
            read = dict(action)
            attributes = dict(action.get("attributes") or {})
        missing = []
        for name in wanted:
            if name in flat:
                attributes[name] = flat[name]
            else:
                missing.append(name)
        read["attributes"] = attributes
        read["missing"] = missing
        out.append(read)
    return out


def _flat(
    item_id: Any,
    attrs_by_item: Mapping[str, _Attributes] | None,
    seen: dict[str, dict[str, Any] | None],
) -> dict[str, Any] | None:
    # A batch often holds many actions on the same item: flatten each record once.
    key = str(item_id)
    if key not in seen:
        record = attrs_by_item.get(key) if attrs_by_item is not None else None
        seen[key] = _flat_records(record) if record is not None else None
    return seen[key]


#: Each record's flat dict, made once while the cache hands the same record out (records
#: are read-only). Only read from: never handed to a caller, who might change it.
_flat_records: IdentityMemo[_Attributes, dict[str, Any]] = IdentityMemo(
    lambda record: record.as_flat_dict(), capacity=16_384
)
_NOTHING: dict[str, Any] = {}
