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
    from nearline.foundation.settings import Settings

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
    "from_settings",
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


def from_settings(settings: Settings) -> AttributeStore:
    """The backend ``NEARLINE_ATTRIBUTE_STORE`` names, configured from ``settings``.

    Uncached: wrap it in :meth:`CachedAttributeStore.from_settings` for ingest-time joins.
    The embedded store opens its RocksDB now; the Aerospike store connects on first use.
    """
    if settings.attribute_store == "aerospike":
        from nearline.attribute_store.aerospike import AerospikeAttributeStore

        return AerospikeAttributeStore.from_settings(settings)
    if settings.attribute_store == "embedded":
        return EmbeddedAttributeStore.in_data_dir(settings.data_dir)
    raise ValueError(
        f"NEARLINE_ATTRIBUTE_STORE={settings.attribute_store!r}: use embedded or aerospike"
    )
