"""The embedded attribute store: RocksDB (rocksdict) in the data dir, one column family per kind."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

from rocksdict import AccessType, Options, Rdict, WriteBatch

from nearline.attribute_store.exceptions import StoreUnavailable
from nearline.attribute_store.schema import (
    KINDS,
    AttributeRecord,
    Kind,
    decode_record,
    encode_record,
)
from nearline.attribute_store.store import AttributeStore, StoreHealth

__all__ = ["EmbeddedAttributeStore"]

log = logging.getLogger(__name__)


def _options() -> Options:
    # raw_mode: keys and values are our bytes, not pickled Python objects.
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    return options


class EmbeddedAttributeStore(AttributeStore):
    """Attributes in ``<data_dir>/attributes``: column families ``items`` and ``members``.

    Keys are the UTF-8 id, values the record's JSON (:func:`encode_record`). Calls run on
    the event loop: a 100-key ``multi_get`` takes tens of microseconds, less than a hop
    to a thread would cost.
    """

    backend = "embedded"

    def __init__(self, path: Path | str, *, secondary: Path | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.read_only = secondary is not None
        families: dict[str, Options] = {kind: Options(raw_mode=True) for kind in KINDS}
        options = _options()
        access = AccessType.read_write()
        if secondary is not None:
            secondary.mkdir(parents=True, exist_ok=True)
            options.set_max_open_files(-1)
            access = AccessType.secondary(str(secondary))
        try:
            self._db: Rdict | None = Rdict(
                str(self.path), options, column_families=families, access_type=access
            )
        except Exception as exc:  # rocksdict raises plain Exception for IO and lock errors
            raise StoreUnavailable(
                f"cannot open the embedded attribute store at {self.path}: {exc}; "
                "another process may hold it (give each worker its own NEARLINE_DATA_DIR)"
            ) from exc
        self._families = {kind: self._db.get_column_family(kind) for kind in KINDS}
        self._handles = {kind: self._db.get_column_family_handle(kind) for kind in KINDS}

    @classmethod
    def in_data_dir(cls, data_dir: Path | str) -> EmbeddedAttributeStore:
        return cls(Path(data_dir) / "attributes")

    @classmethod
    def secondary(cls, path: Path | str, secondary: Path) -> EmbeddedAttributeStore:
        """A read-only view of the store a worker writes at ``path`` (a RocksDB secondary
        instance, its own files in ``secondary``): what a serving process reads. It sees
        the worker's writes as of its last :meth:`catch_up`."""
        return cls(path, secondary=secondary)

    def catch_up(self) -> None:
        """Read what the worker wrote since the last catch-up (a secondary's only way)."""
        self._open().try_catch_up_with_primary()

    def _open(self) -> Rdict:
        if self._db is None:
            raise StoreUnavailable(f"the embedded attribute store at {self.path} is closed")
        return self._db

    def _writable(self) -> Rdict:
        if self.read_only:
            raise StoreUnavailable(
                f"{self.path} is read here through a secondary instance: its worker writes it"
            )
        return self._open()

    async def _get_many(self, ids: list[str], kind: Kind) -> dict[str, AttributeRecord]:
        self._open()
        # One multi_get for the whole batch; it answers None for a key that is absent.
        values = cast("list[bytes | None]", self._families[kind][[key.encode() for key in ids]])
        return {
            key: decode_record(kind, value)
            for key, value in zip(ids, values, strict=True)
            if value is not None
        }

    async def _put_many(self, records: Mapping[Kind, Sequence[AttributeRecord]]) -> None:
        db = self._writable()
        # Encode everything before writing anything, and write one WriteBatch: a record
        # that cannot be encoded, or a crash, leaves the store as it was.
        batch = WriteBatch(raw_mode=True)
        for kind, group in records.items():
            handle = self._handles[kind]
            for record in group:
                batch.put(record.id.encode(), encode_record(record), handle)
        db.write(batch)

    async def _delete_many(self, ids: list[str], kind: Kind) -> None:
        db = self._writable()
        batch = WriteBatch(raw_mode=True)
        handle = self._handles[kind]
        for key in ids:
            batch.delete(key.encode(), handle)
        db.write(batch)

    def compact(self) -> None:
        """Flush memtables and compact every kind: after a bulk load, or to measure size."""
        db = self._open()
        db.flush()
        for family in self._families.values():
            family.compact_range(None, None)

    def disk_bytes(self) -> int:
        """Bytes in SST files: the store's size on disk once flushed (see :meth:`compact`)."""
        return sum(path.stat().st_size for path in self.path.glob("*.sst"))

    async def health(self) -> StoreHealth:
        if self._db is None:
            return StoreHealth(False, self.backend, f"{self.path} is closed")
        counts = ", ".join(
            f"{kind}≈{family.property_int_value('rocksdb.estimate-num-keys') or 0}"
            for kind, family in self._families.items()
        )
        return StoreHealth(True, self.backend, f"rocksdb at {self.path} ({counts})")

    async def close(self) -> None:
        if self._db is None:
            return
        for family in self._families.values():
            family.close()
        self._db.close()
        # The column-family objects hold the database open (and its LOCK file) until
        # they are gone, so a reopen in the same process needs them dropped.
        self._families.clear()
        self._handles.clear()
        self._db = None
        log.info("attribute store closed", extra={"path": str(self.path)})
