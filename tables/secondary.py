"""A read-only view of the worker's table partitions, through RocksDB secondary instances.

A serving process reads the members table of the partitions its worker owns without
talking to the worker: each partition's RocksDB is opened as a *secondary* instance, which
reads the primary's files and replays its write-ahead log on
``try_catch_up_with_primary()``. A catch-up costs ~0.5 ms of CPU even when nothing changed,
so it is made only when the worker's write counter for that partition moved (see
:mod:`nearline.foundation.serving_link`), and at most once per ``max_staleness``: an answer is
never older than that while the worker runs.

What the worker publishes decides what is read:

- a partition the worker no longer owns is closed, and its members are forwarded to the new
  owner (:meth:`owner_url`), as the worker itself would;
- a database whose IDENTITY changed (the worker discarded its local state after a crash and
  restores it from the changelog) is reopened once the restore has finished; until then the
  old instance keeps answering, from the state as it was, and says how stale it is
  (:meth:`stale_ms`);
- while the worker is down, every partition answers from what it had, flagged stale.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from nearline.foundation.serving_link import PublishedState, WorkerFollower
from nearline.tables.changelog import scan

__all__ = ["SecondarySizes", "SecondaryTable", "open_secondary"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecondarySizes:
    """Memory of one secondary instance: sized for reading, not as the primary is."""

    #: Its block cache (shared by nothing else).
    block_cache_bytes: int = 8 << 20
    #: Its memtable, which holds the primary's write-ahead log replayed by catch-ups.
    write_buffer_bytes: int = 16 << 20


def open_secondary(
    primary: str | Path, secondary: Path, sizes: SecondarySizes = SecondarySizes()
) -> rocksdict.Rdict:
    """A RocksDB secondary instance of ``primary``; its own info log and state in
    ``secondary`` (a directory of its own per process)."""
    secondary.mkdir(parents=True, exist_ok=True)
    options = rocksdict.Options(raw_mode=True)
    # Every file open from the start: a catch-up never has to open a table file the
    # primary has since compacted away.
    options.set_max_open_files(-1)
    options.set_write_buffer_size(sizes.write_buffer_bytes)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(sizes.block_cache_bytes))
    options.set_block_based_table_factory(table)
    return rocksdict.Rdict(
        str(primary),
        options,
        access_type=rocksdict.AccessType.secondary(str(secondary)),
    )


@dataclass
class _Partition:
    db: rocksdict.Rdict
    path: str
    identity: str
    secondary: Path  # the instance's own directory
    #: The worker's write counter when this instance last caught up.
    caught_count: int
    caught_at: float  # monotonic
    #: Wall time of the last catch-up made while the worker was running with this database.
    fresh_at: float


class SecondaryTable:
    """``get``/``scan`` over the worker's partitions of one table, kept within
    ``max_staleness`` of the primary; the read API of
    :class:`~nearline.tables.changelog.ChangelogTable`."""

    def __init__(
        self,
        follower: WorkerFollower,
        changelog_topic: str,
        secondary_root: Path,
        *,
        own_url: str,
        max_staleness: float,
        sizes: SecondarySizes = SecondarySizes(),
        on_catch_up: Callable[[float], None] | None = None,
    ) -> None:
        self.sizes = sizes
        self.follower = follower
        self.changelog_topic = changelog_topic
        self.secondary_root = secondary_root
        self.own_url = own_url
        self.max_staleness = max_staleness
        #: Told the seconds each catch-up took.
        self.on_catch_up = on_catch_up
        self._partitions: dict[int, _Partition] = {}
        self._state: PublishedState | None = None
        self._opened = 0

    # -- following the worker ------------------------------------------------------------

    def _sync(self) -> PublishedState | None:
        state = self.follower.poll()
        if state is not self._state:
            self._state = state
            if state is not None:
                self._follow(state)
        return state

    def _follow(self, state: PublishedState) -> None:
        if state.assigning:
            # Starting again or rebalancing: what the worker owns is not known yet, and
            # what was open here goes on answering meanwhile, flagged stale.
            return
        for partition in [p for p in self._partitions if p not in state.owned]:
            log.info("partition %d moved away: no longer read here", partition)
            self._close(partition)
        for partition, path in state.owned.items():
            identity = state.identities.get(partition, "")
            current = self._partitions.get(partition)
            if current is not None and (current.path, current.identity) == (path, identity):
                continue
            if state.recovering:
                # Being restored: the old instance (if any) answers meanwhile, flagged stale.
                continue
            if current is not None:
                log.info("partition %d: a new database (%s); reopening", partition, identity)
                self._close(partition)
            self._open(partition, path, identity)

    def _open(self, partition: int, path: str, identity: str) -> None:
        self._opened += 1
        secondary = self.secondary_root / f"{partition}-{self._opened}"
        count = self.follower.writes(partition)  # before opening: later writes catch up later
        try:
            db = open_secondary(path, secondary, self.sizes)
        except Exception as exc:  # rocksdict raises plain Exception for IO errors
            log.warning("partition %d: cannot open %s yet: %s", partition, path, exc)
            return
        now = time.time()
        self._partitions[partition] = _Partition(
            db, path, identity, secondary, count, time.monotonic(), now
        )

    def _close(self, partition: int) -> None:
        handle = self._partitions.pop(partition)
        handle.db.close()
        shutil.rmtree(handle.secondary, ignore_errors=True)

    def close(self) -> None:
        for partition in list(self._partitions):
            self._close(partition)

    # -- ownership (as ChangelogTable answers it) ----------------------------------------

    def restoring(self) -> bool:
        """Never: while the worker restores, the old instance answers, flagged stale."""
        return False

    def owns(self, partition: int) -> bool:
        """Whether this process answers for ``partition``: its worker owns it (or, while
        partitions are being assigned, owned it), and it is open here."""
        state = self._sync()
        return (
            state is not None
            and partition in self._partitions
            and (partition in state.owned or state.assigning)
        )

    def owned_partitions(self) -> list[int]:
        self._sync()
        return [p for p in sorted(self._partitions) if self.owns(p)]

    def owner_url(self, partition: int) -> str | None:
        """The owner's URL; this pod's own URL for a partition its worker owns but that
        cannot be read yet (being restored): the API then answers 503, retry shortly."""
        state = self._sync()
        if state is None:
            return None
        if partition in state.owned or state.assigning:
            return self.own_url
        return state.owners.get(partition)

    # -- reads ---------------------------------------------------------------------------

    def _db(self, partition: int) -> rocksdict.Rdict:
        state = self._sync()
        handle = self._partitions.get(partition)
        if handle is None:  # callers ask owns() first; this is a race with a rebalance
            raise LookupError(f"partition {partition} is not open in this serving process")
        if self._following(state, partition, handle):
            count = self.follower.writes(partition)
            now = time.monotonic()
            if count != handle.caught_count and now - handle.caught_at >= self.max_staleness:
                self._catch_up(handle, count, now)
            elif count == handle.caught_count:
                handle.fresh_at = time.time()  # nothing written since: as fresh as it gets
        return handle.db

    def _catch_up(self, handle: _Partition, count: int, now: float) -> None:
        try:
            handle.db.try_catch_up_with_primary()
        except Exception as exc:  # rocksdict raises plain Exception; keep what we have
            log.warning("catching up with %s failed: %s; answering from before", handle.path, exc)
            handle.caught_at = time.monotonic()  # not again before max_staleness
            return
        handle.caught_count = count  # read before the catch-up: later writes catch up later
        handle.caught_at = time.monotonic()
        handle.fresh_at = time.time()
        if self.on_catch_up is not None:
            self.on_catch_up(handle.caught_at - now)

    def catch_up_all(self) -> None:
        """Catch up every partition the worker wrote to (a timer calls it), so a read after
        a quiet spell does not pay for the whole backlog."""
        self._sync()
        for partition in list(self._partitions):
            self._db(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self._db(partition).get(key)
        assert value is None or isinstance(value, bytes)  # raw-mode RocksDB
        return value

    def scan(self, partition: int, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys in ``[start, stop)`` in key order, with their values."""
        return scan(self._db(partition), start, stop)

    def stale_ms(self, partition: int) -> int | None:
        """How old an answer from ``partition`` may be, when it may be older than
        ``max_staleness`` (the worker is down, or restoring the partition); else None."""
        handle = self._partitions.get(partition)
        if handle is None or self._following(self._state, partition, handle):
            return None
        return int((time.time() - handle.fresh_at) * 1000)

    def _following(self, state: PublishedState | None, partition: int, handle: _Partition) -> bool:
        """Whether the worker runs with ``partition``'s database as ``handle`` opened it, so
        catching up brings the handle up to date."""
        return (
            state is not None
            and not state.recovering
            and not state.assigning
            and state.identities.get(partition) == handle.identity
            and self.follower.worker_alive()
        )
