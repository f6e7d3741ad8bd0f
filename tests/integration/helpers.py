"""Waits that prove a worker has finished, and other helpers the integration tests share.

A test that sleeps and then asserts passes whenever the thing it checks for has not happened
*yet*. These waits end on evidence instead: the worker's consumer group has committed every
record of its input topics, or a topic has been read up to its end.

End offsets come from the high watermark of fetch responses, not from ListOffsets: the
embedded broker answers ListOffsets for a partition written in multi-record batches (as
Faust's producer and most clients write) with an offset that can be far behind its end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from nearline.app.stack import StackError, wait_until
from nearline.tables import member_state
from tests.integration.conftest import Deployment, Worker

__all__ = [
    "changelog_history",
    "pending_outcomes",
    "read_to_end",
    "read_topic_to_end",
    "run_cli",
    "unapplied",
    "wait_applied_to_end",
]


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer.topics()  # fetches the cluster's metadata
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise AssertionError(f"topic {topic} does not exist")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def _high_watermarks(
    reader: AIOKafkaConsumer, starts: dict[TopicPartition, int], deadline: float
) -> dict[TopicPartition, int]:
    """The end offset of each partition, as the fetch responses from ``starts`` report it."""
    reader.assign(list(starts))
    for tp, offset in starts.items():
        reader.seek(tp, offset)
    ends: dict[TopicPartition, int] = {}
    while len(ends) < len(starts):
        if time.monotonic() > deadline:
            missing = sorted(f"{tp.topic}[{tp.partition}]" for tp in set(starts) - set(ends))
            raise AssertionError(f"no fetch response for {', '.join(missing)}")
        await reader.getmany(timeout_ms=200)
        for tp in starts:
            highwater = reader.highwater(tp)
            if highwater is not None:
                ends[tp] = highwater
    return ends


async def _unapplied(bootstrap: str, group: str, topics: Iterable[str]) -> dict[str, int]:
    group_client = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await group_client.start()
    await reader.start()
    try:
        committed: dict[TopicPartition, int] = {}
        # In the order given, and all before any end is read: once the actions are committed
        # to their end, every forward to the repartition topic has been acknowledged.
        for topic in topics:
            for tp in await _partitions(group_client, topic):
                committed[tp] = await group_client.committed(tp) or 0
        ends = await _high_watermarks(reader, committed, time.monotonic() + 10)
    finally:
        await reader.stop()
        await group_client.stop()
    return {
        f"{tp.topic}[{tp.partition}]": ends[tp] - committed[tp]
        for tp in committed
        if ends[tp] != committed[tp]
    }


def unapplied(deployment: Deployment, topics: Iterable[str] | None = None) -> dict[str, int]:
    """Records of ``topics`` (default: actions, then repartition) the deployment's consumer
    group has not committed, per partition that has any."""
    app_id = deployment.settings["NEARLINE_APP_ID"]
    if topics is None:
        topics = [deployment.topic, f"{app_id}-{deployment.topic}-repartition"]
    return asyncio.run(_unapplied(deployment.broker.bootstrap, app_id, list(topics)))


def wait_applied_to_end(
    deployment: Deployment, topics: Iterable[str] | None = None, timeout: float = 60.0
) -> None:
    """Wait until the workers have applied and committed every record of ``topics``.

    A record is committed only once it is applied (agents/bulk.py), and an action only once its
    forward to the repartition topic is acknowledged; the workers read nothing more after
    this unless a rebalance or a restart has them read records again. Call it once the test
    has produced everything.
    """
    topics = list(topics) if topics is not None else None
    behind: dict[str, int] = {}

    def applied() -> bool:
        behind.clear()
        behind.update(unapplied(deployment, topics))
        return not behind

    try:
        wait_until(
            applied, timeout, interval=0.5, message="the consumer group to commit every record"
        )
    except StackError as exc:
        raise AssertionError(f"{exc}\nstill behind: {behind}") from None


async def _read_to_end(bootstrap: str, topic: str, timeout: float) -> list[Any]:
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await reader.start()
    deadline = time.monotonic() + timeout
    records: list[Any] = []
    try:
        tps = await _partitions(reader, topic)
        ends = await _high_watermarks(reader, dict.fromkeys(tps, 0), deadline)
        for tp in tps:
            reader.seek(tp, 0)
        while [tp for tp in tps if await reader.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s reading {topic} to its end")
            for tp, messages in (await reader.getmany(timeout_ms=200)).items():
                records.extend(m for m in messages if m.offset < ends[tp])
    finally:
        await reader.stop()
    return records


def read_to_end(deployment: Deployment, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` up to its end offset as of the call: all it holds then, not
    what arrived within some time."""
    return read_topic_to_end(deployment.broker.bootstrap, topic, timeout)


def read_topic_to_end(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """:func:`read_to_end` for a broker without a :class:`Deployment` (the simulator's)."""
    return asyncio.run(_read_to_end(bootstrap, topic, timeout))


def pending_outcomes(deployment: Deployment, app_id: str | None = None) -> dict[bytes, bytes]:
    """The outcomes join's state as its changelog says it is now: the last value of each key
    that is a response waiting to be labelled, what one served, or a labelling pass in
    progress."""
    app_id = app_id or deployment.settings["NEARLINE_APP_ID"]
    state: dict[bytes, bytes] = {}
    for record in read_to_end(deployment, f"{app_id}-outcomes-pending-changelog"):
        if record.value is None:
            state.pop(record.key, None)
        elif record.key[:1] in (b"d", b"v", b"i"):  # responses, what they served, a pass
            state[record.key] = record.value
    return state


def changelog_history(deployment: Deployment, member: str, events: list[dict[str, Any]]) -> str:
    """What the members changelog holds for ``member``, a line a record (offset, chunk, its
    rows' event ids), and which of the member's ``events`` no chunk holds: what a failed
    comparison with the oracle prints, so one failure in CI says where the actions went."""
    app_id = deployment.settings["NEARLINE_APP_ID"]
    prefix = member.encode() + b"\0"
    lines, held = [], set()
    for record in read_to_end(deployment, f"{app_id}-members-changelog"):
        if not record.key or not record.key.startswith(prefix):
            continue
        seq = int.from_bytes(record.key[len(prefix) :], "big")
        if record.value is None:
            lines.append(f"  [{record.partition}]@{record.offset} chunk {seq}: deleted")
            continue
        chunk = member_state._Chunk.decode(seq, record.value)
        ids = [row[0] for row in member_state._decode_rows([chunk.rows])]
        held.update(ids)
        lines.append(
            f"  [{record.partition}]@{record.offset} chunk {seq} covers_from={chunk.covers_from} "
            f"offsets={chunk.offsets} rows={[i[:8] for i in ids]}"
        )
    missing = sorted(
        {e["event_id"][:8] for e in events if e["member_id"] == member} - {i[:8] for i in held}
    )
    return "\n".join([f"{member}'s changelog records:", *lines, f"in no chunk: {missing}"])


def run_cli(
    worker: Worker, *args: str, timeout: float = 60.0, **env: str
) -> subprocess.CompletedProcess[str]:
    """``nearline <args>`` with the worker's environment (its topics, stores and data dir)
    and ``env`` over it."""
    return subprocess.run(
        [sys.executable, "-m", "nearline.cli", *args],
        env={**worker.env, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
