"""Drives the real system: broker, `nearline worker`, items in, sessions over HTTP, actions back.

For each session in time order the runner waits for its wall-clock moment, asks the worker
``POST /v1/recommendations`` (with ``features_as_of`` = the last daily cut-off for members of
the batch arm, omitted for the near-real-time arm), shows the top k, draws the member's
reactions from the behaviour model and produces them to the actions topic, where the worker
ingests them into the features the next request reads.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from app import codec
from app.broker import EmbeddedBroker
from app.kafka import client_options
from app.settings import load_settings
from app.simulation.behaviour import ENGAGED, BehaviourModel
from app.simulation.timescale import TimeScale
from app.simulation.world import Arm, Session, World, WorldConfig
from app.stack import Stack, WorkerProcess

__all__ = ["SessionRecord", "SimulationConfig", "SimulationError", "SimulationResult", "simulate"]

log = logging.getLogger(__name__)

#: Wall seconds between loading the items and the first session: lets the worker settle.
_LEAD_SECONDS = 1.0
_RETRIES = 5


class SimulationError(RuntimeError):
    """The system under test failed in a way that makes the run meaningless."""


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a run depends on; the report records all of it."""

    world: WorldConfig = field(default_factory=WorldConfig)
    behaviour: BehaviourModel = field(default_factory=BehaviourModel)
    compression: float = 2000.0
    k: int = 10
    partitions: int = 2
    model_dir: Path | None = None
    concurrency: int = 16

    def to_dict(self) -> dict[str, Any]:
        return {
            "world": self.world.to_dict(),
            "behaviour": self.behaviour.to_dict(),
            "compression": self.compression,
            "k": self.k,
            "partitions": self.partitions,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "concurrency": self.concurrency,
        }


@dataclass(frozen=True)
class SessionRecord:
    """One session as observed: who, which arm, what was shown and done."""

    session: int
    member: int
    arm: Arm
    day: int
    measured: bool
    impressions: int
    views: int
    clicks: int
    applies: int
    saves: int
    dismisses: int
    engaged: bool
    latency_s: float
    late_s: float
    model_version: str


@dataclass
class SimulationResult:
    config: SimulationConfig
    sessions: list[SessionRecord]
    worker_env: dict[str, str]
    wall_seconds: float
    actions_produced: int
    worker_metrics: dict[str, float]
    drift_events: dict[str, int]
    time_scale: TimeScale
    worker_log: Path | None = None


def history_cap(config: SimulationConfig) -> int:
    """Recent actions the online store must keep so a 96 h read never loses one to the cap.

    A batch-arm read ``as of`` the cut-off must see the same history a real daily job would
    have; with too small a cap, actions after the cut-off would push older ones out first.
    """
    per_session = 2.0 * config.behaviour.expected_examined(config.k)
    return max(100, int(per_session * config.world.sessions_per_day * 4 * 2.5))


def _worker_settings(config: SimulationConfig, scale: TimeScale) -> dict[str, str]:
    settings = {
        **scale.worker_settings(),
        "embedding_dim": str(config.world.embedding_dim),
        "max_recent_actions": str(history_cap(config)),
        "max_candidates": str(max(1000, config.world.candidates)),
    }
    if config.model_dir is not None:
        settings["model_dir"] = str(config.model_dir)
    return settings


def simulate(
    config: SimulationConfig,
    *,
    broker: EmbeddedBroker | None = None,
    progress: bool = True,
    keep_log: Path | None = None,
) -> SimulationResult:
    """Run the experiment end to end; starts (and stops) a broker unless one is given."""
    started = time.monotonic()
    world = World(config.world)
    own_broker = broker is None
    if own_broker:
        broker = EmbeddedBroker().start()
    assert broker is not None
    scale = TimeScale(config.compression)
    settings = _worker_settings(config, scale)
    stack = Stack(broker, partitions=config.partitions, prefix="sim", **settings)
    try:
        worker = stack.start_worker()
        driver = _Driver(config, world, stack, worker, progress)
        asyncio.run(driver.run())
        _wait_ingested(worker, driver.actions_produced)
        metrics = {
            name: worker.metric(name)
            for name in (
                "nearline_events_in_total",
                "nearline_events_applied_total",
                "nearline_events_dead_lettered_total",
                "nearline_events_dropped_total",
                "nearline_attribute_records_total",
            )
        }
    finally:
        stack.stop()
        if own_broker:
            broker.stop()
    log_path = None
    if keep_log is not None and stack.workers:
        keep_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stack.workers[0].log, keep_log)
        log_path = keep_log
    shutil.rmtree(stack.tmp, ignore_errors=True)
    drift = {"focus": 0, "move": 0}
    for member in range(config.world.members):
        for _, kind, _ in world.changes(member):
            drift[kind] += 1
    return SimulationResult(
        config=config,
        sessions=sorted(driver.records, key=lambda r: r.session),
        worker_env=stack.settings_env(),
        wall_seconds=time.monotonic() - started,
        actions_produced=driver.actions_produced,
        worker_metrics=metrics,
        drift_events=drift,
        time_scale=driver.scale,
        worker_log=log_path,
    )


def _wait_ingested(worker: WorkerProcess, produced: int, timeout: float = 15.0) -> None:
    """Let the worker read the last actions, so its counters describe the whole run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.metric("nearline_events_in_total") >= produced:
            return
        time.sleep(0.1)
    log.warning("the worker had not read all %d actions %.0f s after the run", produced, timeout)


class _Driver:
    """The async part of a run: one HTTP client, one producer, sessions on schedule."""

    def __init__(
        self,
        config: SimulationConfig,
        world: World,
        stack: Stack,
        worker: WorkerProcess,
        progress: bool,
    ) -> None:
        self.config = config
        self.world = world
        self.stack = stack
        self.worker = worker
        self.progress = progress
        self.settings = load_settings(
            **{
                "profile": "embedded",
                "broker_url": [stack.broker.url],
                "topic_actions": stack.env["NEARLINE_TOPIC_ACTIONS"],
                "topic_item_attributes": stack.env["NEARLINE_TOPIC_ITEM_ATTRIBUTES"],
            }
        )
        self.records: list[SessionRecord] = []
        self.actions_produced = 0
        self.item_index = {item_id: i for i, item_id in enumerate(world.item_ids)}
        self.scale = TimeScale(config.compression)

    async def run(self) -> None:
        producer = AIOKafkaProducer(**client_options(self.settings, producer=True), linger_ms=2)
        await producer.start()
        limits = httpx.Limits(max_connections=self.config.concurrency)
        try:
            async with httpx.AsyncClient(
                base_url=self.worker.url, timeout=30.0, limits=limits
            ) as client:
                await self._load_items(producer)
                await self._sessions(client, producer)
        finally:
            await producer.stop()

    async def _load_items(self, producer: AIOKafkaProducer) -> None:
        topic = self.settings.topic_item_attributes
        sends = [
            await producer.send(topic, codec.dumps(self.world.item_record(i)), key=item_id.encode())
            for i, item_id in enumerate(self.world.item_ids)
        ]
        await asyncio.gather(*sends)
        deadline = time.monotonic() + 60.0
        expected = len(self.world.item_ids)
        while time.monotonic() < deadline:
            loaded = await asyncio.to_thread(
                self.worker.metric, 'nearline_attribute_records_total{outcome="upserted"}'
            )
            if loaded >= expected:
                return
            await asyncio.sleep(0.2)
        raise SimulationError(
            f"the worker loaded {loaded:.0f} of {expected} items from {topic} within 60 s"
        )

    async def _sessions(self, client: httpx.AsyncClient, producer: AIOKafkaProducer) -> None:
        self.scale = self.scale.started_at(time.time() + _LEAD_SECONDS)
        sessions = self.world.sessions
        limit = asyncio.Semaphore(self.config.concurrency)
        bar = tqdm(
            total=len(sessions),
            unit="session",
            desc="simulating",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        failures: list[BaseException] = []

        async def one(session: Session, due: float) -> None:
            try:
                async with limit:
                    await self._session(client, producer, session, due)
            except BaseException as exc:  # collected: one failure stops the run below
                failures.append(exc)
            finally:
                bar.update(1)

        tasks: set[asyncio.Task[None]] = set()
        shown_day = -1
        try:
            for session in sessions:
                if failures:
                    break
                due = self.scale.wall(session.sim_time)
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if session.day != shown_day:
                    shown_day = session.day
                    bar.set_postfix_str(self._day_label(session.day))
                task = asyncio.create_task(one(session, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            bar.close()
        if failures:
            raise SimulationError(f"a session failed: {failures[0]!r}") from failures[0]

    def _day_label(self, day: int) -> str:
        warmup = self.config.world.warmup_days
        if day < warmup:
            return f"warm-up day {day + 1}/{warmup}"
        return f"day {day - warmup + 1}/{self.config.world.days}"

    async def _session(
        self,
        client: httpx.AsyncClient,
        producer: AIOKafkaProducer,
        session: Session,
        due: float,
    ) -> None:
        world, config = self.world, self.config
        member_id = world.member_ids[session.member]
        arm = world.member_arm[session.member]
        measured = session.day >= config.world.warmup_days
        body: dict[str, Any] = {
            "member_id": member_id,
            "candidates": [world.item_ids[i] for i in session.candidates],
            "k": config.k,
        }
        # Warm-up days serve everyone fresh features, as production did before the test.
        if arm == "batch" and measured:
            body["features_as_of"] = self.scale.cutoff(session.day)
        late = time.time() - due
        asked = time.perf_counter()
        answer = await self._recommend(client, body)
        latency = time.perf_counter() - asked
        shown = [self.item_index[entry["item_id"]] for entry in answer["items"][: config.k]]
        outcome = config.behaviour.react(
            world, session.member, session.index, session.sim_time, shown
        )
        now = time.time()
        topic = self.settings.topic_actions
        sends = []
        for j, reaction in enumerate(outcome.reactions):
            event = {
                "event_id": f"sim-{world.config.seed}-{session.index}-{j}",
                "member_id": member_id,
                "item_id": world.item_ids[reaction.item],
                "action": reaction.action,
                "ts": round(now + j * 0.001, 3),
            }
            sends.append(await producer.send(topic, codec.dumps(event), key=member_id.encode()))
        await asyncio.gather(*sends)
        self.actions_produced += len(sends)
        self.records.append(
            SessionRecord(
                session=session.index,
                member=session.member,
                arm=arm,
                day=session.day,
                measured=measured,
                impressions=outcome.impressions,
                views=outcome.count("view"),
                clicks=outcome.count("click"),
                applies=outcome.count("apply"),
                saves=outcome.count("save"),
                dismisses=outcome.count("dismiss"),
                engaged=any(r.action in ENGAGED for r in outcome.reactions),
                latency_s=latency,
                late_s=max(late, 0.0),
                model_version=str(answer.get("model_version", "")),
            )
        )

    async def _recommend(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/recommendations``; retries a 503 (rebalance) a few times."""
        content = codec.dumps(body)
        headers = {"content-type": "application/json"}
        for attempt in range(_RETRIES):
            response = await client.post("/v1/recommendations", content=content, headers=headers)
            if response.status_code == 200:
                answer: dict[str, Any] = response.json()
                return answer
            if response.status_code == 503 and attempt + 1 < _RETRIES:
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if response.status_code == 404:
                raise SimulationError(
                    "the worker has no POST /v1/recommendations endpoint; "
                    "the simulation needs a nearline version that serves recommendations"
                )
            raise SimulationError(
                f"POST /v1/recommendations answered {response.status_code}: {response.text[:300]}"
            )
        raise AssertionError("unreachable")
