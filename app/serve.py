"""``nearline serve``: the public API in processes of their own, beside the worker.

One Python process cannot ingest and serve at once under load: both would share one event
loop and one GIL, and a 0.3 ms read waits behind a 100 ms ingest batch. With
``NEARLINE_SERVE_PROCESSES=N`` the worker keeps ingest, labelling, the changelogs and the
RocksDB primaries, and ``nearline serve`` runs N serving processes that answer the public
API on ``NEARLINE_WEB_PORT``, all bound to it with ``SO_REUSEPORT`` (the kernel spreads
connections across them; ``uvicorn --workers`` shares one accept queue and piles them onto
a few). Each serving process

- reads the member state of its worker's partitions through RocksDB secondary instances
  (:class:`~nearline.tables.secondary.SecondaryTable`), following what the worker publishes
  (:mod:`nearline.foundation.serving_link`), and forwards members of other partitions to their
  owner;
- reads item attributes through a secondary of the embedded attribute store (or its own
  Aerospike client) and ranks with its own copy of the active model, reloaded on the same
  interval as the worker's;
- produces the recommendations log and erasure requests itself;
- goes on answering, flagged ``stale_ms``, while the worker restarts.

The supervisor (:func:`nearline.app.supervisor.run_serving`) starts the processes and starts again
any that dies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import uvloop
from aiokafka import AIOKafkaProducer

from nearline.agents.erasures import ErasureRequests
from nearline.agents.sinks import ProducerRecommendationsLog
from nearline.app.compose import (
    attribute_store,
    cached_attributes,
    erasures_topic,
    model_registry,
    state_policy,
)
from nearline.app.console.timeline import IngestTimeline
from nearline.app.lag import PartitionLag
from nearline.app.recommend import Recommender
from nearline.app.web import WebServices
from nearline.app.web_app import create_web_app
from nearline.attribute_store import (
    AttributeStore,
    EmbeddedAttributeStore,
    StoreHealth,
    split_fields,
)
from nearline.foundation.kafka import client_options
from nearline.foundation.metrics import ServingMetrics
from nearline.foundation.serving_link import WorkerFollower, heartbeat_path, serving_dir
from nearline.foundation.settings import Settings, load_settings
from nearline.foundation.sockets import reuse_port_socket
from nearline.tables.features import FeatureReader
from nearline.tables.online_store import MEMBERS_TABLE, OnlineStore
from nearline.tables.secondary import SecondarySizes, SecondaryTable

__all__ = ["FollowedStatus", "Link", "StaleFlagged", "run_serving_process"]

log = logging.getLogger(__name__)

#: How often a serving process catches up partitions the worker wrote to, between reads:
#: reads catch up themselves (within NEARLINE_SERVE_MAX_STALENESS), so the tick only keeps
#: the write-ahead log to replay short. At 0.05 s it cost ~5 % of a core at 500 actions/s
#: and bought no latency (bench.capacity, alternating pairs).
_CATCH_UP_TICK = 1.0
#: How often the embedded attribute store's secondary catches up (attributes are cached
#: for NEARLINE_ATTRIBUTE_CACHE_TTL anyway).
_ATTRIBUTES_TICK = 1.0


class FollowedStatus:
    """What a serving process's probes and pages say: its worker's published state."""

    def __init__(self, follower: WorkerFollower, table: SecondaryTable, partitions: int) -> None:
        self.follower = follower
        self.table = table
        self.partitions = partitions

    def readiness(self) -> tuple[bool, str]:
        state = self.follower.poll()
        if state is None:
            return False, "waiting for the worker to publish its state"
        if not self.follower.worker_alive():
            seen = time.time() - self.follower.last_seen()
            return False, (
                f"the worker has not been seen for {seen:.0f}s; answering from its last "
                "state, flagged stale_ms"
            )
        ready, reason = state.ready
        if ready and set(state.owned) - set(self.table.owned_partitions()):
            return False, "opening the worker's partitions"
        return ready, reason

    def liveness(self) -> tuple[bool, str]:
        # A serving process that answers is alive; the worker has a liveness probe of its
        # own (NEARLINE_WORKER_PORT), and restarting the serving processes would not mend it.
        return True, "ok"

    def consumer_lag(self) -> list[PartitionLag]:
        state = self.follower.poll()
        return [] if state is None else [PartitionLag(**lag) for lag in state.lag]

    def ingest_behind(self) -> bool:
        # Shedding while ingest is behind protects the worker's event loop; a serving
        # process does not share it, so it never sheds for that.
        return False

    @property
    def attribute_health(self) -> StoreHealth:
        state = self.follower.poll()
        if state is None:
            return StoreHealth(False, "unknown", "the worker has not published its state yet")
        ok, backend, detail = state.attribute_health
        return StoreHealth(ok, backend, detail)

    def owned_partitions(self) -> list[int]:
        return self.table.owned_partitions()

    def owner_url(self, partition: int) -> str | None:
        return self.table.owner_url(partition)


class Link:
    """A serving process's :class:`~nearline.app.web.WorkerLink`: its worker, and itself."""

    def __init__(self, follower: WorkerFollower, table: SecondaryTable, settings: Settings):
        self.follower = follower
        self.table = table
        self.settings = settings

    def url(self) -> str | None:
        state = self.follower.poll()
        return None if state is None else state.worker_url

    def serving_view(self) -> dict[str, Any]:
        return {
            "processes": self.settings.serve_processes,
            "answered_by": os.getpid(),
            "max_staleness_ms": self.settings.serve_max_staleness * 1000,
            "stale_ms": {str(p): self.table.stale_ms(p) for p in self.table.owned_partitions()},
        }


class StaleFlagged:
    """Features as the reader gives them, with ``stale_ms`` when they may be stale."""

    def __init__(self, reader: FeatureReader, table: SecondaryTable) -> None:
        self.reader = reader
        self.table = table

    async def features(self, member_id: str, as_of: float) -> dict[str, Any]:
        features = await self.reader.features(member_id, as_of)
        stale = self.table.stale_ms(self.reader.store.partition_of(member_id))
        if stale is not None:
            features["stale_ms"] = stale
        return features


def _attribute_store(settings: Settings, secondary_root: Path) -> AttributeStore:
    if settings.attribute_store == "embedded":
        return EmbeddedAttributeStore.secondary(
            Path(settings.data_dir) / "attributes", secondary_root / "attributes"
        )
    return attribute_store(settings)


async def _every(seconds: float, work: Any) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            result = work()
            if asyncio.iscoroutine(result):
                await result
        except Exception:  # one failed tick must not end the loop
            log.exception("serving timer failed")


async def _serve(settings: Settings, index: int) -> None:
    directory = serving_dir(settings.data_dir)
    secondary_root = directory / "secondary" / str(os.getpid())
    metrics = ServingMetrics()
    follower = WorkerFollower(directory, settings.topic_partitions)
    members = SecondaryTable(
        follower,
        f"{settings.app_id}-{MEMBERS_TABLE}-changelog",
        secondary_root / MEMBERS_TABLE,
        own_url=settings.web_url,
        max_staleness=settings.serve_max_staleness,
        sizes=SecondarySizes(
            block_cache_bytes=settings.rocksdb_block_cache_mb << 20,
            write_buffer_bytes=settings.rocksdb_write_buffer_mb << 20,
        ),
        on_catch_up=metrics.catch_up_seconds.observe,
    )
    store = OnlineStore(members, state_policy(settings), settings.topic_partitions)
    attributes = _attribute_store(settings, secondary_root)
    cached = cached_attributes(attributes, settings)
    models = model_registry(settings)
    if settings.model_dir is not None:
        models.load_latest()
    producer = AIOKafkaProducer(**client_options(settings, producer=True))
    http = httpx.AsyncClient(timeout=settings.forward_timeout)
    status = FollowedStatus(follower, members, settings.topic_partitions)

    web = create_web_app(
        WebServices(
            settings=settings,
            metrics=metrics,
            features=StaleFlagged(
                FeatureReader(
                    store,
                    cached,
                    split_fields(settings.join_at_ingest, settings.join_at_read),
                    timeout=settings.forward_timeout,
                ),
                members,
            ),
            status=status,
            recommender=Recommender(
                models,
                cached,
                ProducerRecommendationsLog(producer, settings.topic_recommendations_log),
                log_candidates=settings.log_candidates,
            ),
            timeline=IngestTimeline(),  # unused: the system view is the worker's
            models=models,
            attributes=cached,
            http=http,
            # Produced here, to the member's partition: its owner applies it.
            erasures=ErasureRequests(lambda: producer, erasures_topic(settings)),
            worker=Link(follower, members, settings),
        )
    )
    config = uvicorn.Config(
        web,
        lifespan="off",
        http="httptools",
        access_log=False,
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=75,
    )
    server = uvicorn.Server(config)
    sock = reuse_port_socket(settings.web_host, settings.web_port)
    await producer.start()
    parent = os.getppid()

    def follow() -> None:
        members.catch_up_all()
        for partition in range(settings.topic_partitions):
            stale = members.stale_ms(partition)
            metrics.staleness_seconds.labels(str(partition)).set(
                0.0 if stale is None else stale / 1000
            )
        if os.getppid() != parent:  # the supervisor is gone: so are we
            server.should_exit = True

    def reload_model() -> Any:
        if settings.model_dir is not None:
            return asyncio.to_thread(models.maybe_reload)
        return None

    heartbeat = heartbeat_path(directory, index)
    heartbeat.parent.mkdir(parents=True, exist_ok=True)
    heartbeat.touch()

    timers = [
        # Touched by the loop itself, so a loop held by anything (a hung call, a deadlock)
        # stops touching it and the supervisor replaces the process.
        asyncio.ensure_future(_every(1.0, heartbeat.touch)),
        asyncio.ensure_future(_every(_CATCH_UP_TICK, follow)),
        asyncio.ensure_future(_every(settings.model_reload_interval, reload_model)),
    ]
    if isinstance(attributes, EmbeddedAttributeStore):
        timers.append(asyncio.ensure_future(_every(_ATTRIBUTES_TICK, attributes.catch_up)))
    log.info(
        "serving process %d (pid %d) on http://%s:%d",
        index,
        os.getpid(),
        settings.web_host,
        settings.web_port,
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        for timer in timers:
            timer.cancel()
        await producer.stop()
        await http.aclose()
        await cached.close()
        members.close()
        shutil.rmtree(secondary_root, ignore_errors=True)


def run_serving_process(index: int) -> None:
    """One serving process (the supervisor starts it as ``python -m nearline.app.serve INDEX``)."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format=f"[%(asctime)s] [serve-{index}] %(levelname)s %(name)s: %(message)s",
    )
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(settings, index))


if __name__ == "__main__":
    run_serving_process(int(sys.argv[1]))
