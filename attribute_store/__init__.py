"""The attribute store: item and member attributes, two backends, a cache, the joins, a loader.

The Aerospike backend is not imported here: importing it imports the aerospike client,
which a worker on the embedded store neither needs nor may have (``nearline[aerospike]``).
Import it from :mod:`nearline.attribute_store.aerospike`.
"""

from __future__ import annotations

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

__all__ = [
    "KINDS",
    "Action",
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
