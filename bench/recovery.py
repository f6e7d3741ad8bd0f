"""Recovery benchmark: a worker with no local state restores N members from the changelog.

Run: ``python -m bench.recovery [--members 100000 1000000] [--sample 200] [--profile DIR]``.
Each size gets a broker of its own. The changelog holds what ingest writes: each member's
1 to 6 actions applied one batch at a time through the online store, every record each
batch wrote (Kafka's partitioner on the member id, an end marker per partition), nothing
compacted; then a worker starts on an empty data directory. Prints one JSON line per size: seconds
from process start and from partition assignment to ready, members/s, RSS, and the checks
that a sample of members serve exactly what was written and that every member is restored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import rocksdict
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.harness import Stack, WorkerProcess, machine
from nearline.app.broker import EmbeddedBroker
from nearline.app.compose import state_policy
from nearline.app.stack import StackError
from nearline.app.traffic import generate_actions
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.settings import load_settings
from nearline.tables.changelog import END_MARKER_KEY, LocalTable
from nearline.tables.member_state import MemberState, RecentAction, StatePolicy
from nearline.tables.online_store import MEMBERS_TABLE, OnlineStore

#: Distinct member histories; member ``i`` gets history ``i % STATES``. Applying one per
#: member would make writing 1M members take longer than restoring them.
STATES = 10_000
#: Keys in the table's RocksDB that are not members: Faust's offsets, the end markers.
_NOT_MEMBERS = (b"__faust", END_MARKER_KEY)


class RecoveryMismatch(AssertionError):
    """The restored state differs from what was written to the changelog."""


def changelog_topic(app_id: str) -> str:
    """Faust's name for the members table's changelog: ``<app id>-<table>-changelog``."""
    return f"{app_id}-{MEMBERS_TABLE}-changelog"


class _RecordingTable(LocalTable):
    """A table on local RocksDB that also keeps every record written, in order."""

    def __init__(self, path: str) -> None:
        super().__init__(path, 1)
        self.written: list[tuple[bytes, bytes | None]] = []

    def write_locally(self, partition: int, values: Any) -> None:
        super().write_locally(partition, values)
        self.written += values.items()


def member_histories(
    count: int, policy: StatePolicy, now: float, seed: int = 21
) -> tuple[list[MemberState], list[list[tuple[bytes, bytes | None]]]]:
    """``count`` members as ingest builds them, 1 to 6 actions of the last day, each in a
    batch of its own: their final states, and the records every batch wrote (keys without
    the member id, which :func:`populate` puts in front)."""
    actions = generate_actions(None, members=1, items=50_000, seed=seed, spread=86_400.0)
    path = tempfile.mkdtemp(prefix="recovery-histories-")
    table = _RecordingTable(path)
    store = OnlineStore(table, policy, 1)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    states: list[MemberState] = []
    histories: list[list[tuple[bytes, bytes | None]]] = []
    try:
        for n in range(count):
            key = f"h{n}".encode()
            table.written = []
            for offset in range(1 + n % 6):
                e = next(actions)
                state = store.load(0, key) or MemberState()
                state.apply(
                    RecentAction(e.event_id, e.item_id, e.action, e.ts, e.attributes),
                    offset=offset,
                    applied_at=now,
                    policy=policy,
                )
                state.prune(now, policy)
                loop.run_until_complete(store.write({0: {key: state}}))
            final = store.load(0, key)
            assert final is not None
            states.append(final)
            histories.append([(k[len(key) :], v) for k, v in table.written])
    finally:
        loop.close()
        table.close()
        shutil.rmtree(path, ignore_errors=True)
    return states, histories


def populate(
    stack: Stack, members: int, histories: list[list[tuple[bytes, bytes | None]]]
) -> dict[str, Any]:
    """Write ``members`` histories to the changelog as the worker would; the end offsets
    must then count every record (the broker answers exactly once the end markers are in)."""
    bootstrap = stack.broker.bootstrap
    partitions = stack.partitions
    topic = changelog_topic(stack.app_id)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    spec = NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact"})
    admin.create_topics([spec])[topic].result()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "batch.num.messages": 100_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    started = time.perf_counter()
    records = size = 0
    for n in range(members):
        member = f"member-{n}".encode()
        partition = partition_for_key(member, partitions)
        for suffix, value in histories[n % len(histories)]:
            key = member + suffix
            records += 1
            size += len(key) + (len(value) if value is not None else 0)
            while True:
                try:
                    producer.produce(topic, value, key, partition)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
    if producer.flush(300):
        raise RuntimeError("the changelog records were not all delivered")
    # Alone, after the batches: see OnlineStore (the broker's "latest" is the last batch + 1).
    for partition in range(partitions):
        producer.produce(topic, b"", END_MARKER_KEY, partition)
    if producer.flush(30):
        raise RuntimeError("the end markers were not delivered")
    seconds = time.perf_counter() - started
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{stack.app_id}-check"})
    try:
        ends = [
            consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in range(partitions)
        ]
    finally:
        consumer.close()
    if sum(ends) != records + partitions:
        raise RuntimeError(f"the changelog ends at {ends}, not {records + partitions} records")
    return {
        "produce_s": round(seconds, 2),
        "records": records,
        "produced_per_s": round(records / seconds),
        "changelog_mb": round(size / 2**20),
    }


def _profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling every thread of ``pid``, idle ones too, into collapsed stacks."""
    return subprocess.Popen(
        [
            *(str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)),
            *("--format", "raw", "--output", str(output), "--threads", "--idle", "--rate", "50"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_recovered(
    worker: WorkerProcess, timeout: float, profile: Path | None = None
) -> tuple[float | None, float]:
    """Poll ``/readyz`` until 200; returns when partitions were first assigned, and when 200.

    Faust restores as soon as partitions are assigned and reports "rebalancing" until it is
    done, so the first answer past "starting" marks the start of recovery. With
    ``profile``, py-spy records the worker from then until ready.
    """
    deadline = time.perf_counter() + timeout
    assigned: float | None = None
    profiler = None
    try:
        with httpx.Client(timeout=5) as client:
            while time.perf_counter() < deadline:
                if worker.exited:
                    raise StackError(f"the worker exited: {worker.log_tail()}")
                try:
                    response = client.get(f"{worker.url}/readyz")
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                now = time.perf_counter()
                if response.status_code == 200:
                    return assigned, now
                if assigned is None and not response.json()["reason"].startswith("starting"):
                    assigned = now
                    if profile is not None:
                        profiler = _profiler(worker.pid, profile)
                time.sleep(0.05)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                profiler.wait(30)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait()
    raise StackError(f"the worker had not recovered within {timeout:.0f}s")


def check_sample(
    worker: WorkerProcess, members: int, states: list[MemberState], sample: int
) -> int:
    """GET ``sample`` random members' features; each must serve the actions written for it."""
    rng = random.Random(members)
    with httpx.Client(timeout=10) as client:
        for n in rng.sample(range(members), min(sample, members)):
            member = f"member-{n}"
            response = client.get(f"{worker.url}/v1/members/{member}/features")
            if response.status_code != 200:
                raise RecoveryMismatch(f"{member}: HTTP {response.status_code} {response.text}")
            served = [
                [a["event_id"], a["item_id"], a["action"], a["ts"]]
                for a in response.json()["recent_actions"]
            ]
            written = [row[:4] for row in reversed(states[n % len(states)].actions)]
            if served != written:
                raise RecoveryMismatch(f"{member}: served {served}, wrote {written}")
    return min(sample, members)


def count_restored(data_dir: Path) -> int:
    """Members in a stopped worker's RocksDB partitions (a member's keys are its id, or its
    id, a zero byte and more)."""
    members: set[bytes] = set()
    for path in data_dir.rglob(f"{MEMBERS_TABLE}-*.db"):
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        try:
            for key in db.keys():
                assert isinstance(key, bytes)  # raw-mode RocksDB
                if not key.startswith(_NOT_MEMBERS):
                    members.add(key.split(b"\0", 1)[0])
        finally:
            db.close()
    return len(members)


def recovery(
    members: int,
    *,
    sample: int = 200,
    timeout: float = 600.0,
    profile: Path | None = None,
) -> dict[str, Any]:
    """On a broker of its own, write ``members`` states to a changelog and time a worker
    with an empty data directory restoring them; raises :class:`RecoveryMismatch` if the
    restored state is not what was written."""
    policy = state_policy(load_settings())
    states, histories = member_histories(min(STATES, members), policy, time.time())
    with EmbeddedBroker() as broker:
        stack = Stack.isolated(broker, prefix="recovery")
        try:
            stack.create_topics()
            written = populate(stack, members, histories)
            started = time.perf_counter()
            worker = stack.start_worker("recovery", wait=False)
            assigned, ready = wait_recovered(worker, timeout, profile)
            rss = worker.rss_mb()
            checked = check_sample(worker, members, states, sample)
            worker.stop()
            restored = count_restored(worker.data_dir)
        finally:
            stack.stop()
            shutil.rmtree(stack.tmp, ignore_errors=True)
    if restored != members:
        raise RecoveryMismatch(f"{restored} members restored of {members} written")
    assigned = assigned or started
    return {
        "members": members,
        **written,
        "startup_s": round(assigned - started, 2),
        "recovery_s": round(ready - assigned, 2),
        "ready_s": round(ready - started, 2),
        "members_per_s": round(members / (ready - assigned)),
        "rss_mb": round(rss),
        "sample_checked": checked,
        "restored": restored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--sample", type=int, default=200, help="members checked over HTTP")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to be ready")
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory for py-spy profiles of each recovery (collapsed stacks, all threads)",
    )
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    for members in args.members:
        profile = args.profile / f"recovery-{members}.txt" if args.profile else None
        result = recovery(members, sample=args.sample, timeout=args.timeout, profile=profile)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
