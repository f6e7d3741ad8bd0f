"""The attribute store: item and member attributes, two backends, a cache, the joins, a loader."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nearline.attribute_store.cache import CachedAttributeStore
from nearline.attribute_store.embedded import EmbeddedAttributeStore
from nearline.attribute_store.exceptions import AttributeStoreError, InvalidRecord, StoreUnavailable
from nearline.attribute_store.join import (
    Action,
    JoinFields,
    ingest_fields,
    item_ids,
    join_at_read,
    split_fields,
)
from nearline.attribute_store.loader import LoadFailed, LoadSummary, Sink, detect_format, load_file
from nearline.attribute_store.schema import (
    KINDS,
    AttributeRecord,
    Geo,
    ItemAttributes,
    Kind,
    MemberAttributes,
    decode_record,
    encode_record,
    validate_item,
    validate_member,
    validate_record,
)
from nearline.attribute_store.store import AttributeStore, StoreHealth

if TYPE_CHECKING:
    from nearline.attribute_store.aerospike import AerospikeAttributeStore

__all__ = [
    "KINDS",
    "Action",
    "AerospikeAttributeStore",
    "AttributeRecord",
    "AttributeStore",
    "AttributeStoreError",
    "CachedAttributeStore",
    "EmbeddedAttributeStore",
    "Geo",
    "InvalidRecord",
    "ItemAttributes",
    "JoinFields",
    "Kind",
    "LoadFailed",
    "LoadSummary",
    "MemberAttributes",
    "Sink",
    "StoreHealth",
    "StoreUnavailable",
    "decode_record",
    "detect_format",
    "encode_record",
    "ingest_fields",
    "item_ids",
    "join_at_read",
    "load_file",
    "split_fields",
    "validate_item",
    "validate_member",
    "validate_record",
]


def __getattr__(name: str) -> Any:
    """``AerospikeAttributeStore`` on first use: importing it imports the aerospike client,
    which a worker on the embedded store neither needs nor may have (``nearline[aerospike]``).
    """
    if name == "AerospikeAttributeStore":
        from nearline.attribute_store.aerospike import AerospikeAttributeStore

        return AerospikeAttributeStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
