"""What a worker tells the serving processes of its pod: its state file and its write counters.

A worker with ``NEARLINE_SERVE_PROCESSES`` above 0 leaves the public API to ``nearline
serve`` and publishes, in ``<NEARLINE_DATA_DIR>/serving/``:

- ``state.json`` (:class:`PublishedState`): the partitions it owns and where their RocksDB
  lives, each database's identity, whether state is still being recovered, who owns the
  other partitions, and what its probes say. Rewritten whole (write, then rename) when any
  of that changes, and every second for its lag figures.
- ``counters`` (:class:`WriteCounters`): a few bytes in shared memory: the worker's heartbeat,
  the state file's generation, and one counter per partition that every local write of the
  members table bumps. A serving process catches its RocksDB secondary up with the primary
  only when a partition's counter moved, so an idle partition costs nothing to follow.

Both are plain files on the pod's local volume, read without locks: the state file is
replaced atomically, and each counter is one aligned 8-byte word.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nearline.foundation import codec

__all__ = ["PublishedState", "WorkerFollower", "WriteCounters", "serving_dir"]

log = logging.getLogger(__name__)

_MAGIC = 0x4E4C5331  # "NLS1"
#: magic, partitions, heartbeat (Unix time), generation; then one u64 per partition.
_HEADER = struct.Struct("<IIdQ")
_COUNTER = struct.Struct("<Q")
_HEARTBEAT_AT = 8
_GENERATION_AT = 16


def serving_dir(data_dir: Path) -> Path:
    """Where a worker and its serving processes meet: beside the worker's tables."""
    return Path(data_dir) / "serving"


def heartbeat_path(directory: Path, index: int) -> Path:
    """The file serving process ``index`` touches once a second from its event loop: its
    modification time is when the loop last ran (see ``nearline.app.supervisor``)."""
    return directory / "heartbeats" / str(index)


class WriteCounters:
    """The worker's heartbeat, state generation and per-partition write counters, mmapped.

    The worker opens it with ``create=True`` (and owns its values); serving processes open
    it read-only, once it exists.
    """

    def __init__(self, path: Path, partitions: int, *, create: bool = False) -> None:
        self.path = path
        self.partitions = partitions
        size = _HEADER.size + _COUNTER.size * partitions
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size)
                self.inode = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            _HEADER.pack_into(self._map, 0, _MAGIC, partitions, 0.0, 0)
        else:
            with path.open("rb") as file:
                self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
                self.inode = os.fstat(file.fileno()).st_ino
            magic, stored, _, _ = _HEADER.unpack_from(self._map, 0)
            if magic != _MAGIC or stored != partitions or len(self._map) < size:
                raise ValueError(
                    f"{path} was written for {stored} partitions, not {partitions}: "
                    "the worker and `nearline serve` must share NEARLINE_TOPIC_PARTITIONS"
                )

    # -- the worker's side ---------------------------------------------------------------

    def bump(self, partition: int) -> None:
        at = _HEADER.size + _COUNTER.size * partition
        (count,) = _COUNTER.unpack_from(self._map, at)
        _COUNTER.pack_into(self._map, at, count + 1)

    def beat(self, now: float | None = None) -> None:
        struct.pack_into("<d", self._map, _HEARTBEAT_AT, time.time() if now is None else now)

    def set_generation(self, generation: int) -> None:
        struct.pack_into("<Q", self._map, _GENERATION_AT, generation)

    # -- the serving processes' side -----------------------------------------------------

    def count(self, partition: int) -> int:
        return int(_COUNTER.unpack_from(self._map, _HEADER.size + _COUNTER.size * partition)[0])

    @property
    def heartbeat(self) -> float:
        return float(struct.unpack_from("<d", self._map, _HEARTBEAT_AT)[0])

    @property
    def generation(self) -> int:
        return int(struct.unpack_from("<Q", self._map, _GENERATION_AT)[0])

    def close(self) -> None:
        self._map.close()


@dataclass(frozen=True)
class PublishedState:
    """What the serving processes need to know of their worker, as ``state.json`` holds it."""

    generation: int
    pid: int
    written_at: float
    #: The worker's own HTTP address (probes, its metrics, the console's system view).
    worker_url: str
    #: Partitions this worker owns now, with their RocksDB directory and its IDENTITY.
    owned: dict[int, str] = field(default_factory=dict)
    identities: dict[int, str] = field(default_factory=dict)
    #: True while the worker's tables are being restored from their changelogs.
    recovering: bool = False
    #: True while partitions are being assigned (the worker starting, or a rebalance):
    #: ``owned`` is not yet what it will be.
    assigning: bool = False
    #: The advertised URL of each partition's owner, for those owned elsewhere.
    owners: dict[int, str | None] = field(default_factory=dict)
    ready: tuple[bool, str] = (False, "starting")
    alive: tuple[bool, str] = (True, "ok")
    ingest_behind: bool = False
    attribute_health: tuple[bool, str, str] = (True, "embedded", "")
    lag: list[dict[str, Any]] = field(default_factory=list)

    def same_assignment(self, other: PublishedState | None) -> bool:
        """Whether ``other`` says the same about partitions, databases and probes (lag and
        times aside): an unchanged assignment keeps its generation."""
        if other is None:
            return False
        mine, theirs = asdict(self), asdict(other)
        for volatile in ("generation", "written_at", "lag"):
            mine.pop(volatile)
            theirs.pop(volatile)
        return mine == theirs

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically: a reader sees the old state or the new, never half."""
        body = asdict(self)
        for by_partition in ("owned", "identities", "owners"):  # JSON keys are strings
            body[by_partition] = {str(p): v for p, v in body[by_partition].items()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(codec.dumps(body))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> PublishedState:
        body = codec.loads(path.read_bytes())
        return cls(
            generation=body["generation"],
            pid=body["pid"],
            written_at=body["written_at"],
            worker_url=body["worker_url"],
            owned={int(p): d for p, d in body["owned"].items()},
            identities={int(p): i for p, i in body["identities"].items()},
            recovering=body["recovering"],
            assigning=body.get("assigning", False),
            owners={int(p): u for p, u in body["owners"].items()},
            ready=tuple(body["ready"]),  # type: ignore[arg-type]
            alive=tuple(body["alive"]),  # type: ignore[arg-type]
            ingest_behind=body["ingest_behind"],
            attribute_health=tuple(body["attribute_health"]),  # type: ignore[arg-type]
            lag=body["lag"],
        )


class WorkerFollower:
    """A serving process's view of its worker: the latest published state, re-read only when
    the counters say its generation changed."""

    #: A worker whose heartbeat is older than this is taken for gone (it beats every 0.2 s;
    #: an ingest batch can hold its event loop for a fraction of a second).
    DEAD_AFTER = 2.0

    def __init__(self, directory: Path, partitions: int) -> None:
        self.directory = directory
        self.partitions = partitions
        self.counters: WriteCounters | None = None
        self.state: PublishedState | None = None
        self._generation = -1
        self._read_at = 0.0

    def poll(self) -> PublishedState | None:
        """The state as of now (a mmap read when nothing changed)."""
        counters = self.counters
        if counters is None:
            try:
                counters = self.counters = WriteCounters(
                    self.directory / "counters", self.partitions
                )
            except FileNotFoundError:
                return None
            except ValueError as exc:  # being created, or written for other partitions
                log.warning("cannot follow the worker yet: %s", exc)
                return None
        generation = counters.generation
        now = time.monotonic()
        # Re-read on a new generation, and once a second for the lag figures.
        if generation != self._generation or now - self._read_at >= 1.0:
            if self._replaced(counters):
                self.counters = None  # the worker's data dir was deleted and made anew
                return self.poll()
            try:
                self.state = PublishedState.read(self.directory / "state.json")
            except FileNotFoundError:
                return self.state
            self._generation = self.state.generation
            self._read_at = now
        return self.state

    @staticmethod
    def _replaced(counters: WriteCounters) -> bool:
        try:
            return os.stat(counters.path).st_ino != counters.inode
        except FileNotFoundError:
            return False  # not made again yet: keep the last state

    def worker_alive(self, now: float | None = None) -> bool:
        if self.counters is None:
            return False
        now = time.time() if now is None else now
        return now - self.counters.heartbeat < self.DEAD_AFTER

    def last_seen(self) -> float:
        """The worker's last heartbeat (Unix time; 0 if never)."""
        return 0.0 if self.counters is None else self.counters.heartbeat

    def writes(self, partition: int) -> int:
        return 0 if self.counters is None else self.counters.count(partition)
