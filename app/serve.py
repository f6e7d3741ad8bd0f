"""``nearline serve``: the public API in processes of their own, beside the worker.

One Python process cannot ingest and serve at once under load: both would share one event
loop and one GIL, and a 0.3 ms read waits behind a 100 ms ingest batch. With
``NEARLINE_SERVE_PROCESSES=N`` the worker keeps ingest, labelling, the changelogs and the
RocksDB primaries, and ``nearline serve`` runs N serving processes that answer the public
API on ``NEARLINE_WEB_PORT``, all bound to it with ``SO_REUSEPORT`` (the kernel spreads
connections across them; ``uvicorn --workers`` shares one accept queue and piles them onto
a few). Each serving process

- reads the member state of its worker's partitions through RocksDB secondary instances
  (:class:`~tables.secondary.SecondaryTable`), following what the worker publishes
  (:mod:`app.serving_link`), and forwards members of other partitions to their owner;
- reads item attributes through a secondary of the embedded attribute store (or its own
  Aerospike client) and ranks with its own copy of the active model, reloaded on the same
  interval as the worker's;
- produces the recommendations log itself;
- goes on answering, flagged ``stale_ms``, while the worker restarts.

The supervisor (:func:`run_serving`) starts the processes and starts again any that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import uvloop
from aiokafka import AIOKafkaProducer

from agents.sinks import ProducerRecommendationsLog
from app.console.timeline import IngestTimeline
from app.kafka import client_options
from app.lag import PartitionLag
from app.metrics import ServingMetrics
from app.recommend import Recommender
from app.serving_link import WorkerFollower, serving_dir
from app.settings import Settings, load_settings
from app.web import WebServices
from app.web_app import create_web_app
from attribute_store import (
    AttributeStore,
    CachedAttributeStore,
    EmbeddedAttributeStore,
    StoreHealth,
    split_fields,
)
from attribute_store import from_settings as attribute_store_from_settings
from model.registry import ModelRegistry
from tables.features import FeatureReader
from tables.member_state import StatePolicy
from tables.online_store import MEMBERS_TABLE, OnlineStore
from tables.secondary import SecondaryTable

__all__ = ["FollowedStatus", "Link", "StaleFlagged", "run_serving", "run_serving_process"]

log = logging.getLogger(__name__)

#: How often a serving process catches up partitions the worker wrote to, between reads.
_CATCH_UP_TICK = 0.05
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
    """A serving process's :class:`~app.web.WorkerLink`: its worker, and itself."""

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


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Every serving process binds the port itself: the kernel spreads new connections
    # evenly over their accept queues.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _attribute_store(settings: Settings, secondary_root: Path) -> AttributeStore:
    if settings.attribute_store == "embedded":
        return EmbeddedAttributeStore.secondary(
            Path(settings.data_dir) / "attributes", secondary_root / "attributes"
        )
    return attribute_store_from_settings(settings)


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
        on_catch_up=metrics.catch_up_seconds.observe,
    )
    store = OnlineStore(members, StatePolicy.from_settings(settings), settings.topic_partitions)
    attributes = _attribute_store(settings, secondary_root)
    cached = CachedAttributeStore.from_settings(attributes, settings)
    models = ModelRegistry.from_settings(settings)
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
    sock = _reuse_port_socket(settings.web_host, settings.web_port)
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

    timers = [
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
    """One serving process (the supervisor starts it as ``python -m app.serve INDEX``)."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format=f"[%(asctime)s] [serve-{index}] %(levelname)s %(name)s: %(message)s",
    )
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(settings, index))


def run_serving(settings: Settings) -> None:
    """Run NEARLINE_SERVE_PROCESSES serving processes until SIGINT/SIGTERM, starting
    again any that exits."""
    count = settings.serve_processes
    if count < 1:
        raise SystemExit(
            "nearline serve: set NEARLINE_SERVE_PROCESSES to the number of serving processes "
            "(and run the worker with the same value, so it leaves them the web port)"
        )
    logging.basicConfig(
        level=settings.log_level, format="[%(asctime)s] [serve] %(levelname)s %(message)s"
    )
    try:  # a port that only this pod's serving processes may share
        _reuse_port_socket(settings.web_host, settings.web_port).close()
    except OSError as exc:
        raise SystemExit(
            f"nearline serve: cannot serve HTTP on {settings.web_host}:{settings.web_port} "
            f"({exc.strerror}); set NEARLINE_WEB_PORT to a free port"
        ) from None
    directory = serving_dir(settings.data_dir)
    # Each process's metric values live in a file of their own here; a new supervisor
    # starts from zero, as a restarted worker's counters do.
    metrics_dir = directory / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    shutil.rmtree(directory / "secondary", ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "app.serve", str(index)], env=env)

    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = [start(i) for i in range(count)]
    log.info(
        "%d serving processes on http://%s:%d (pids %s)",
        count,
        settings.web_host,
        settings.web_port,
        ", ".join(str(c.pid) for c in children),
    )
    started_at = [time.monotonic()] * count
    while not stopping:
        time.sleep(0.2)
        for index, child in enumerate(children):
            code = child.poll()
            if code is None or stopping:
                continue
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(child.pid, str(metrics_dir))
            # One that dies at once again and again is restarted once a second, not in a loop.
            if time.monotonic() - started_at[index] < 1.0:
                continue
            log.warning(
                "serving process %d (pid %d) exited with %s; starting it again",
                index,
                child.pid,
                code,
            )
            children[index] = start(index)
            started_at[index] = time.monotonic()
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    run_serving_process(int(sys.argv[1]))
