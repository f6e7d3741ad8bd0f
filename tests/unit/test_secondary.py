"""The serving link and the secondary table over real RocksDB, without a broker or a worker.

The test plays the worker: it writes primaries with rocksdict, publishes state and bumps the
write counters as the worker's publisher and ChangelogTable do.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import rocksdict

from nearline.app.publisher import _identity
from nearline.foundation.serving_link import PublishedState, WorkerFollower, WriteCounters
from nearline.tables.secondary import SecondaryTable

OWN = "http://me:8080"


class FakeWorker:
    """Publishes state and counters for primaries in ``root`` as a worker would."""

    def __init__(self, root: Path, partitions: int = 2) -> None:
        self.root = root
        self.directory = root / "serving"
        self.counters = WriteCounters(self.directory / "counters", partitions, create=True)
        self.dbs: dict[int, rocksdict.Rdict] = {}
        self.generation = 100
        self.partitions = partitions

    def open(self, partition: int) -> None:
        self.dbs[partition] = rocksdict.Rdict(
            str(self.path(partition)), rocksdict.Options(raw_mode=True)
        )

    def path(self, partition: int) -> Path:
        return self.root / f"members-{partition}.db"

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.dbs[partition][key] = value
        self.counters.bump(partition)

    def publish(
        self,
        owned: list[int],
        *,
        recovering: bool = False,
        assigning: bool = False,
        beat: bool = True,
    ) -> None:
        self.generation += 1
        PublishedState(
            generation=self.generation,
            pid=1,
            written_at=time.time(),
            worker_url="http://127.0.0.1:8081",
            owned={p: str(self.path(p)) for p in owned},
            identities={p: _identity(str(self.path(p))) for p in owned},
            recovering=recovering,
            assigning=assigning,
            owners={p: "http://other:8080" for p in range(self.partitions) if p not in owned},
            ready=(True, "ready"),
        ).write(self.directory / "state.json")
        self.counters.set_generation(self.generation)
        if beat:
            self.counters.beat()


@pytest.fixture
def worker(tmp_path: Path) -> FakeWorker:
    fake = FakeWorker(tmp_path)
    fake.open(0)
    fake.open(1)
    return fake


def _table(worker: FakeWorker, tmp_path: Path, staleness: float = 0.0) -> SecondaryTable:
    return SecondaryTable(
        WorkerFollower(worker.directory, worker.partitions),
        "members-changelog",
        tmp_path / "secondaries",
        own_url=OWN,
        max_staleness=staleness,
    )


def test_reads_follow_the_workers_writes(worker: FakeWorker, tmp_path: Path) -> None:
    worker.put(0, b"m1", b"one")
    worker.publish([0, 1])
    table = _table(worker, tmp_path)
    assert table.owned_partitions() == [0, 1]
    assert table.get(0, b"m1") == b"one"
    worker.put(0, b"m1", b"two")
    worker.put(0, b"m2", b"new")
    assert table.get(0, b"m1") == b"two"  # the counter moved: caught up before the read
    assert list(table.scan(0, b"m", b"n")) == [(b"m1", b"two"), (b"m2", b"new")]
    assert table.stale_ms(0) is None


def test_a_partition_that_moved_away_is_forwarded(worker: FakeWorker, tmp_path: Path) -> None:
    worker.publish([0, 1])
    table = _table(worker, tmp_path)
    assert table.owns(1)
    worker.publish([0])
    assert not table.owns(1) and table.owner_url(1) == "http://other:8080"
    assert table.owned_partitions() == [0]


def test_a_database_made_anew_is_reopened_after_its_restore(
    worker: FakeWorker, tmp_path: Path
) -> None:
    worker.put(0, b"old", b"x")
    worker.publish([0, 1])
    table = _table(worker, tmp_path)
    assert table.get(0, b"old") == b"x"
    # The worker discards its state after a crash and restores it into a new database.
    worker.dbs.pop(0).close()
    shutil.rmtree(worker.path(0))
    worker.open(0)
    worker.put(0, b"restored", b"y")
    worker.publish([0, 1], recovering=True)
    # While it restores, the old instance answers, and says it may be stale.
    assert table.owns(0) and table.get(0, b"old") == b"x"
    assert table.stale_ms(0) is not None
    worker.publish([0, 1])
    assert table.get(0, b"old") is None and table.get(0, b"restored") == b"y"
    assert table.stale_ms(0) is None


def test_a_partition_being_restored_with_nothing_open_yet_is_not_served(
    worker: FakeWorker, tmp_path: Path
) -> None:
    worker.publish([0, 1], recovering=True)
    table = _table(worker, tmp_path)
    assert not table.owns(0)
    assert table.owner_url(0) == OWN  # its own pod: the API answers 503, retry shortly


def test_a_silent_worker_makes_answers_stale(worker: FakeWorker, tmp_path: Path) -> None:
    worker.put(0, b"m1", b"one")
    worker.publish([0, 1])
    table = _table(worker, tmp_path)
    assert table.get(0, b"m1") == b"one" and table.stale_ms(0) is None
    worker.counters.beat(time.time() - 10)  # its last heartbeat, long ago
    assert table.get(0, b"m1") == b"one"
    stale = table.stale_ms(0)
    assert stale is not None and stale >= 0


def test_counters_must_agree_on_partitions(worker: FakeWorker) -> None:
    with pytest.raises(ValueError, match="NEARLINE_TOPIC_PARTITIONS"):
        WriteCounters(worker.directory / "counters", 3)


def test_a_worker_starting_again_leaves_what_was_open_answering(
    worker: FakeWorker, tmp_path: Path
) -> None:
    worker.put(0, b"m1", b"one")
    worker.publish([0, 1])
    table = _table(worker, tmp_path)
    assert table.get(0, b"m1") == b"one"
    # Started again, the worker owns nothing until the group assigns it partitions.
    worker.publish([], assigning=True)
    assert table.owns(0) and table.get(0, b"m1") == b"one"
    assert table.stale_ms(0) is not None
    worker.publish([1])  # assigned, without partition 0: now it has moved away
    assert not table.owns(0) and table.owner_url(0) == "http://other:8080"
