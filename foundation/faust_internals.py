"""Every use of faust-streaming's private internals, in one module, checked at start.

nearline builds on Faust's app, consumer, tables and recovery, and goes under its public API
in a few places where the public path costs too much (a record at a time) or offers no knob:

- the consumer's fetch loop and commit book-keeping, so records are taken off a fetch at a
  time and acknowledged once applied (:class:`ConsumerInternals`, used by
  ``agents/bulk.py``);
- the RocksDB handle of a table partition, to write a batch in one ``WriteBatch``
  (:func:`partition_db`);
- the aiokafka producer under Faust's, to send whole producer batches
  (:func:`kafka_producer`);
- recovery's state, to write changelog records in bulk while it runs (:func:`recovery_of`)
  and to tell when it has completed (:func:`recovery_completed`);
- the fetcher's wait for data, which Faust hard-codes (:func:`set_fetch_max_wait`).

Private names can change in any release, so :func:`check_faust` runs when a worker starts:
it fails with what to install when the installed Faust is not in the range nearline's
package requires (setup.cfg: the releases this module was written and tested against), or
lacks one of the names it reaches. Nothing else in nearline touches a
private attribute of Faust's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import faust
import rocksdict
from aiokafka import AIOKafkaProducer
from faust.stores.rocksdb import Store as RocksDBStore
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Producer as AIOKafkaFaustProducer
from faust.types import TP, AppT, TableT
from faust.types.tuples import ack_lock
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

__all__ = [
    "ConsumerInternals",
    "FaustVersionError",
    "acknowledging",
    "check_faust",
    "kafka_producer",
    "partition_db",
    "partition_path",
    "recovery_completed",
    "recovery_of",
    "set_fetch_max_wait",
    "supported_faust",
]


@cache
def supported_faust() -> SpecifierSet:
    """The faust-streaming releases nearline's package metadata (setup.cfg) accepts: the
    ones whose internals this module was written and tested against.

    Read when first asked (at worker start), not on import: finding the package's metadata
    takes ~40 ms, and every command imports this module.
    """
    try:
        required = metadata.requires("nearline") or []
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return SpecifierSet()
    for line in required:
        requirement = Requirement(line)
        if requirement.name == "faust-streaming":
            return requirement.specifier
    return SpecifierSet()


#: (class, attribute) pairs reached below; checked at start so a changed Faust fails early.
_REACHED: tuple[tuple[type, str], ...] = (
    (AIOKafkaConsumer, "_wait_next_records"),
    (AIOKafkaConsumer, "_commit"),
    (AIOKafkaFaustProducer, "_ensure_producer"),
    (RocksDBStore, "_db_for_partition"),
)


class FaustVersionError(RuntimeError):
    """The installed faust-streaming is not one whose internals nearline can rely on."""


def check_faust(version: str | None = None) -> None:
    """Raise :class:`FaustVersionError`, saying what to install, unless Faust fits."""
    installed = version or faust.__version__
    supported = supported_faust()
    if not supported.contains(Version(installed), prereleases=True):
        raise FaustVersionError(
            f"faust-streaming {installed} is installed; nearline reaches into Faust's "
            f"consumer, tables and recovery and supports faust-streaming{supported} "
            f"only: pip install 'faust-streaming{supported}'"
        )
    missing = [f"{owner.__name__}.{name}" for owner, name in _REACHED if not hasattr(owner, name)]
    if missing:
        raise FaustVersionError(
            f"faust-streaming {installed} lacks {', '.join(missing)}, which nearline uses: "
            f"pip install 'faust-streaming{supported}'"
        )


def kafka_producer(app: AppT) -> AIOKafkaProducer:
    """The aiokafka producer under Faust's (started with the app): sends whole batches."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined,no-any-return]


def partition_db(table: TableT[Any, Any], partition: int) -> rocksdict.Rdict:
    """The RocksDB Faust opened for ``partition`` of a RocksDB-backed ``table``."""
    return table.data._db_for_partition(partition)  # type: ignore[attr-defined,no-any-return]


def partition_path(table: TableT[Any, Any], partition: int) -> Path:
    """The directory of the RocksDB that holds ``partition`` of a RocksDB-backed ``table``."""
    return Path(table.data.partition_path(partition))  # type: ignore[attr-defined]


def recovery_of(app: AppT) -> Any:
    """Faust's table recovery service (``active_tps``, ``active_offsets``, ``tp_to_table``)."""
    return app.tables.recovery  # type: ignore[attr-defined]


def recovery_completed(app: AppT) -> bool:
    """Whether the tables have been recovered since the last assignment."""
    return bool(recovery_of(app).completed.is_set())


async def set_fetch_max_wait(app: AppT, seconds: float, *, within: float = 60.0) -> bool:
    """Set how long the consumer's fetcher waits for data (Faust hard-codes 1.5 s).

    The fetcher exists once Faust's consumer thread has started its aiokafka consumer, so
    this waits for it; returns False if it did not appear ``within`` seconds.
    """
    for _ in range(int(within * 10)):
        thread = getattr(app.consumer, "_thread", None)
        fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = int(seconds * 1000)
            return True
        await asyncio.sleep(0.1)
    return False


class ConsumerInternals(AIOKafkaConsumer):
    """Faust's aiokafka consumer with its private fetch loop and book-keeping named.

    Subclasses override :meth:`before_fetch`, :meth:`take_records` and
    :meth:`on_committed` instead of Faust's private methods, and read or move the
    book-keeping through the accessors below.
    """

    # -- hooks -------------------------------------------------------------------------

    def before_fetch(self) -> None:
        """Called before each wait for records."""

    def take_records(self, records: Any, active: Any) -> tuple[Any, Any]:
        """Given each fetch's records by partition; returns what Faust delivers itself."""
        return records, active

    def on_committed(self, offsets: Mapping[TP, int]) -> None:
        """Called with offsets the group coordinator accepted."""

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        self.before_fetch()
        records, active = await super()._wait_next_records(timeout)
        return self.take_records(records, active)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        committed = await super()._commit(offsets)
        if committed:
            self.on_committed(offsets)
        return committed

    # -- book-keeping ------------------------------------------------------------------

    def read_offset(self, tp: TP) -> int | None:
        """The offset of the last record of ``tp`` Faust has handed on (or seeked to)."""
        return self._read_offset[tp]  # type: ignore[no-any-return]

    def set_read_offset(self, tp: TP, offset: int) -> None:
        self._read_offset[tp] = offset

    def committed_offset(self, tp: TP) -> int | None:
        """What Faust believes committed for ``tp`` (including commits that failed)."""
        return self._committed_offset[tp]  # type: ignore[no-any-return]

    def committed_offsets(self) -> dict[TP, int | None]:
        return dict(self._committed_offset)

    def note_processed(self, tp: TP, now: float) -> None:
        """Tell Faust's monitor that records of ``tp`` were processed at ``now`` (monotonic).

        Faust's stall watchdog reads this, set per event by its own streams. Records
        delivered past its streams must set it too, or the watchdog logs an error about every
        such partition every few seconds from five minutes after the start, however well
        they are being processed; set, it stays silent until processing really stops.
        """
        monitor = self.app.monitor
        if monitor is not None:
            monitor.stream_inbound_time[tp] = now

    def is_buffered(self, tp: TP) -> bool:
        """Whether Faust's drain loop would hand on records of ``tp`` (a buffered partition)."""
        return tp in self._buffered_partitions

    def acknowledge_offsets(self, tp: TP, low: int, last: int) -> int:
        """Put offsets ``low..last`` of ``tp`` into Faust's commit book-keeping, as its drain
        loop does for records processed; returns how many were not acknowledged before.

        Call with :data:`acknowledging` held.
        """
        index = self._acked_index[tp]
        new = [offset for offset in range(low, last + 1) if offset not in index]
        index.update(new)
        self._acked[tp].extend(new)
        self._n_acked += len(new)
        return len(new)


#: Faust's lock around its acknowledgement book-keeping (its commit reads it under it).
acknowledging = ack_lock
