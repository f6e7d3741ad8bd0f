"""Drives the real system: broker, `nearline worker`, items in, sessions over HTTP, actions back.

For each session in time order the runner waits for its wall-clock moment, asks the worker
``POST /v1/recommendations``, shows the top k, draws the member's reactions from the
behaviour model and produces them to the actions topic, where the worker ingests them into
the features the next request reads.

The arms are an experiment run through the workers like any other
(:mod:`nearline.model.experiments`): after the warm-up the runner starts
:func:`~nearline.simulation.world.experiment` in the model directory, as ``nearline experiment
start`` does, with the simulated day as the batch arm's day; the worker assigns each member an arm
and reads the batch arm's features as of the last simulated midnight. At the end the runner waits
until every measured response is labelled, stops the experiment, and takes the arms' results from
the training-examples topic with the function ``nearline experiment status`` uses
(:attr:`SimulationResult.experiment`).

With ``train`` the learning loop closes inside the run: after the warm-up days (ranked by
the heuristic) the worker's own training examples are exported from its topic, a model is
trained on them and goes through the promotion gate, and the measured days are ranked by
whatever is then served (the model if the gate passed). Training takes wall time, so the
measured days start that much later (``pause``); a run to compare with is given the same
pause, so both see the warm-up equally far in the past.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from nearline.app.broker import EmbeddedBroker
from nearline.app.stack import Stack, StackError, WorkerProcess
from nearline.foundation import codec
from nearline.foundation.kafka import client_options
from nearline.foundation.settings import load_settings
from nearline.simulation.behaviour import ENGAGED, BehaviourModel
from nearline.simulation.timescale import TimeScale
from nearline.simulation.world import DAY, Arm, Session, World, WorldConfig, experiment

if TYPE_CHECKING:
    from nearline.model.dataset import ExampleSet
    from nearline.model.experiments import Experiment, ExperimentResults
    from nearline.model.registry import ModelRegistry
    from nearline.model.training import TrainingConfig, TrainingReport

__all__ = [
    "FRESH_ENOUGH",
    "IngestWatch",
    "SessionRecord",
    "SimulationConfig",
    "SimulationError",
    "SimulationResult",
    "TrainingOutcome",
    "simulate",
    "true_ranking_metrics",
]

log = logging.getLogger(__name__)

#: Simulated seconds an action may wait to be read before a run's fresh arm stops counting
#: as fresh (a day-old batch is 86,400 s behind at the day's end).
FRESH_ENOUGH = 3600.0

#: Wall seconds between loading the items and the first session: lets the worker settle.
_LEAD_SECONDS = 1.0
#: Wall seconds the worker usually needs to follow a started experiment (the model reload
#: interval, 250 ms, and its once-a-second results poll); the measured days start no sooner.
_FOLLOW_SECONDS = 2.0
#: Wall seconds to wait for the worker to follow the experiment, or to label every response.
_EXPERIMENT_TIMEOUT = 60.0
_RETRIES = 5
#: Wall seconds between two samples of how far the worker has read the actions.
_WATCH_EVERY = 1.0
#: The embedded profile's producers send one record per batch, so the broker's "latest
#: offset" is exact; but that broker's fetch walks a partition's batches, ~0.6 µs each
#: (``bench.broker_fetch``: 10 ms a fetch at 20k one-record batches, 69 ms at 120k, under
#: 1 ms batched). A 500-member run's ~150k actions made its fetches so slow that the worker
#: read a third of them. The runner counts what the worker read, not offsets, so it batches
#: its actions as any client would.
_ACTIONS_BATCH_BYTES = 16384


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
    # Train on the warm-up's examples and rank the measured days with what the gate lets
    # through; ``force`` publishes the model even if the gate refuses it.
    train: bool = False
    force: bool = False
    training_loss: str = "pairwise"
    training_epochs: int = 30
    # How the worker labels a logged job nobody reacted to (NEARLINE_UNLABELED_AS). "skip":
    # only what the member clicked, applied to, saved or dismissed becomes an example. With
    # "negative" every other shown job is a negative (the worker logs the shown ones only).
    unlabeled_as: str = "skip"
    # Wall seconds between the warm-up and the measured days (train: at least what
    # training took); a baseline run gets the trained run's pause.
    pause: float = 0.0

    def __post_init__(self) -> None:
        if self.train and self.world.warmup_days < 1:
            raise ValueError("--train needs at least one warm-up day to learn from")
        if self.pause < 0:
            raise ValueError("pause must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return {
            "world": self.world.to_dict(),
            "behaviour": self.behaviour.to_dict(),
            "compression": self.compression,
            "k": self.k,
            "partitions": self.partitions,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "concurrency": self.concurrency,
            "train": self.train,
            "force": self.force,
            "training_loss": self.training_loss,
            "training_epochs": self.training_epochs,
            "unlabeled_as": self.unlabeled_as,
            "pause": round(self.pause, 3),
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
    # Ranking quality against the simulator's ground truth (see true_ranking_metrics).
    true_ndcg: float = math.nan
    true_hit: float = math.nan
    true_rr: float = math.nan


def true_ranking_metrics(
    p_click: np.ndarray, shown: np.ndarray, k: int
) -> tuple[float, float, float]:
    """NDCG@k, hit@k and reciprocal rank of a shown list against the true click odds.

    ``p_click`` is every candidate's true P(click | examined); ``shown`` the positions (in
    the candidates) of the jobs shown, top first. The gain of a job is its ``p_click``;
    hit and reciprocal rank look for the single best candidate (0 if not shown). Free of
    the position bias of logged clicks: every candidate's worth is known here.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    top = shown[:k]
    dcg = float(p_click[top] @ discounts[: len(top)])
    ideal = np.sort(p_click)[::-1][:k]
    idcg = float(ideal @ discounts[: len(ideal)])
    best = int(np.argmax(p_click))
    where = np.flatnonzero(top == best)
    rank = int(where[0]) if len(where) else -1
    return (
        dcg / idcg if idcg > 0 else math.nan,
        1.0 if rank >= 0 else 0.0,
        1.0 / (rank + 1) if rank >= 0 else 0.0,
    )


@dataclass(frozen=True)
class TrainingOutcome:
    """What ``train`` did between the warm-up and the measured days."""

    examples: int
    requests: int
    data: ExampleSet  # the warm-up's examples as exported
    report: TrainingReport | None  # None if no model could be trained (see error)
    published: bool
    served_version: str  # what the measured days were ranked with
    seconds: float
    error: str | None = None


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
    pause: float = 0.0  # wall seconds the measured days started late (see SimulationConfig)
    training: TrainingOutcome | None = None
    #: The arms' results as ``nearline experiment status`` computes them, after the run.
    experiment: ExperimentResults | None = None
    #: How long the oldest action not yet read by the worker had waited, sampled every
    #: second of the sessions (wall seconds; see :class:`IngestWatch`).
    ingest_delays: list[float] = field(default_factory=list)

    @property
    def actions_read(self) -> float:
        return self.worker_metrics.get("nearline_events_in_total", math.nan)

    def validity(self) -> str | None:
        """Why the fresh arm was not fresh in this run, or ``None`` if it was.

        The experiment compares features as they stream with a day's old ones; a worker that
        fell behind the actions serves neither, and the comparison means nothing.
        """
        if not self.actions_read >= self.actions_produced:  # also when it was not read (NaN)
            return (
                f"the worker read {self.actions_read:.0f} of {self.actions_produced} actions "
                "by the end of the run"
            )
        if self.ingest_delays:
            worst = max(self.ingest_delays) * self.config.compression
            if worst > FRESH_ENOUGH:
                return (
                    f"actions waited up to {worst / 60:.0f} simulated minutes to be read "
                    f"(more than {FRESH_ENOUGH / 60:.0f}), so the fresh arm was not fresh"
                )
        return None


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
        "unlabeled_as": config.unlabeled_as,
    }
    if config.model_dir is not None:
        settings["model_dir"] = str(config.model_dir)
    # The worker must follow the experiment (and, with train, the published model) before
    # the measured days begin.
    settings["model_reload_interval"] = "250ms"
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
    stack = Stack.isolated(broker, partitions=config.partitions, prefix="sim", **settings)
    if config.model_dir is None:  # where the experiment (and, with train, the model) goes
        stack.settings["NEARLINE_MODEL_DIR"] = str(stack.tmp / "models")
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
    if keep_log is not None and stack.workers:
        keep_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stack.workers[0].log_path, keep_log)
    shutil.rmtree(stack.tmp, ignore_errors=True)
    drift = {"focus": 0, "move": 0}
    for member in range(config.world.members):
        for _, kind, _ in world.changes(member):
            drift[kind] += 1
    return SimulationResult(
        config=config,
        sessions=sorted(driver.records, key=lambda r: r.session),
        worker_env=dict(stack.settings),
        wall_seconds=time.monotonic() - started,
        actions_produced=driver.actions_produced,
        worker_metrics=metrics,
        drift_events=drift,
        time_scale=driver.scale,
        pause=driver.pause,
        training=driver.training,
        experiment=driver.results,
        ingest_delays=driver.watch.delays,
    )


def _wait_ingested(worker: WorkerProcess, produced: int, timeout: float = 15.0) -> None:
    """Let the worker read the last actions, so its counters describe the whole run."""
    try:
        worker.wait_for_metric("nearline_events_in_total", produced, timeout=timeout)
    except StackError:
        log.warning(
            "the worker had not read all %d actions %.0f s after the run", produced, timeout
        )


class IngestWatch:
    """How far behind the actions the worker reads, sampled while the sessions run.

    Each sample is the age of the oldest action the worker had not yet read, to within a
    sample interval: the time since the last sample at which no more had been produced than
    the worker has now read (0 when it has read everything produced).
    """

    def __init__(self, produced: Callable[[], int], every: float = _WATCH_EVERY) -> None:
        self._produced = produced
        self.every = every
        self.delays: list[float] = []
        self._history: list[tuple[float, int]] = []  # (time, produced by then), in order

    def sample(self, now: float, read: float) -> float:
        """Record one sample: ``read`` actions read by the worker at ``now``; its delay."""
        produced = self._produced()
        history = self._history
        history.append((now, produced))
        while len(history) > 1 and history[1][1] <= read:
            history.pop(0)  # the first sample left is the last one the worker is past
        delay = 0.0 if read >= produced else now - history[0][0]
        self.delays.append(delay)
        return delay

    async def run(self, read: Callable[[], Awaitable[float]]) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                self.sample(time.time(), await read())
            except (httpx.HTTPError, OSError, ValueError) as exc:
                log.warning("simulation: cannot read the worker's ingest count: %r", exc)


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
                "topic_actions": stack.settings["NEARLINE_TOPIC_ACTIONS"],
                "topic_item_attributes": stack.settings["NEARLINE_TOPIC_ITEM_ATTRIBUTES"],
            }
        )
        self.records: list[SessionRecord] = []
        self.actions_produced = 0
        self.item_index = {item_id: i for i, item_id in enumerate(world.item_ids)}
        self.scale = TimeScale(config.compression)
        self.pause = 0.0
        self.training: TrainingOutcome | None = None
        self.experiment: Experiment | None = None
        self.results: ExperimentResults | None = None
        self._running = False
        self.watch = IngestWatch(lambda: self.actions_produced)

    async def run(self) -> None:
        options = client_options(self.settings, producer=True)
        options["max_batch_size"] = _ACTIONS_BATCH_BYTES
        producer = AIOKafkaProducer(**options, linger_ms=2)
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
        warmup = self.config.world.warmup_days
        sessions = self.world.sessions
        bar = tqdm(
            total=len(sessions),
            unit="session",
            desc="simulating",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        watching = asyncio.create_task(self.watch.run(self._actions_read))
        try:
            before = [s for s in sessions if s.day < warmup]
            await self._play(client, producer, before, bar)
            if self.config.train:
                await self._train(client, len(before))
            # The measured days start when the pause is over (and the worker had time to
            # follow the experiment): the clock is shifted by it.
            measured_start = self.scale.wall(warmup * DAY)
            resume = max(
                measured_start + self.config.pause,
                time.time() + _LEAD_SECONDS + _FOLLOW_SECONDS,
            )
            self.pause = resume - measured_start
            self.scale = self.scale.started_at(self.scale.t0 + self.pause)
            measured = [s for s in sessions if s.day >= warmup]
            await self._start_experiment(client)
            await self._play(client, producer, measured, bar)
            await self._collect_results(client, len(measured))
        finally:
            watching.cancel()
            bar.close()
            if self._running:  # a failed run leaves no experiment running behind it
                await asyncio.to_thread(self._registry().stop_experiment)

    async def _actions_read(self) -> float:
        return await asyncio.to_thread(self.worker.metric, "nearline_events_in_total")

    def _registry(self) -> ModelRegistry:
        """The model directory the worker follows, as ``nearline experiment`` opens it."""
        from nearline.app.compose import vectorizer_from_settings
        from nearline.model.registry import ModelRegistry

        settings = self.stack.app_settings()
        return ModelRegistry(settings.model_dir, vectorizer_from_settings(settings), "default")

    async def _start_experiment(self, client: httpx.AsyncClient) -> None:
        """Start the arms' experiment, ranked by what the worker serves, with the simulated
        day; wait until the worker serves it (its experiment panel names it)."""
        from nearline.model.exceptions import ModelError

        registry = self._registry()
        if self.training is not None:
            version = self.training.served_version
        else:
            await asyncio.to_thread(registry.load_latest)
            version = registry.active.version
        started = experiment(self.config.world.seed, version, self.scale.t0, self.scale.day_wall)
        try:
            await asyncio.to_thread(registry.start_experiment, started)
        except ModelError as exc:
            raise SimulationError(
                f"cannot start the simulation's experiment: {exc} (a fresh --model-dir runs it)"
            ) from exc
        self.experiment, self._running = started, True
        deadline = time.monotonic() + _EXPERIMENT_TIMEOUT
        while time.monotonic() < deadline:
            response = await client.get("/v1/console/experiment")
            if response.status_code == 200:
                shown = response.json().get("experiment") or {}
                if shown.get("id") == started.id:
                    return
            await asyncio.sleep(0.1)
        raise SimulationError(
            f"the worker did not follow experiment {started.id} in {_EXPERIMENT_TIMEOUT:.0f} s"
        )

    async def _collect_results(self, client: httpx.AsyncClient, responses: int) -> None:
        """Wait until the outcomes join labelled every measured response (the worker's
        count on /metrics), stop the experiment, and read the arms' results from the
        training-examples topic as ``nearline experiment status`` does."""
        from nearline.app.experiments import read_results

        assert self.experiment is not None
        settings = self.stack.app_settings()
        labelled_of = (f'experiment="{self.experiment.id}"', 'outcome="labelled"')
        deadline = time.monotonic() + _EXPERIMENT_TIMEOUT
        labelled = 0.0
        while time.monotonic() < deadline:
            lines = (await client.get("/metrics")).text.splitlines()
            labelled = sum(
                float(line.rpartition(" ")[2])
                for line in lines
                if line.startswith("nearline_experiment_responses_total{")
                and all(label in line for label in labelled_of)
            )
            if labelled >= responses:
                break
            await asyncio.sleep(0.2)
        else:
            log.warning(
                "simulation: %.0f of %d measured responses labelled after %.0f s",
                labelled,
                responses,
                _EXPERIMENT_TIMEOUT,
            )
        stopped = await asyncio.to_thread(self._registry().stop_experiment)
        self._running = False
        self.results = await read_results(settings, stopped)

    async def _train(self, client: httpx.AsyncClient, responses: int) -> None:
        """Export the warm-up's examples, train through the gate, wait for the worker."""
        from nearline.app.compose import vectorizer_from_settings
        from nearline.app.exporting import examples_to_set, read_topic
        from nearline.model.exceptions import ModelError
        from nearline.model.heuristic import HEURISTIC_VERSION
        from nearline.model.registry import ModelRegistry
        from nearline.model.training import train

        started = time.monotonic()
        settings = self.stack.app_settings()
        # Every response is labelled once its horizon has passed; wait for all of them.
        warmup_end = self.scale.wall(self.config.world.warmup_days * DAY)
        await asyncio.sleep(max(warmup_end - time.time(), 0.0) + settings.outcome_horizon)
        vectorizer = vectorizer_from_settings(settings)
        # The outcomes agent labels one response after another; once the topic holds the
        # same number of examples on two reads in a row, it has caught up.
        deadline = time.monotonic() + 60.0
        values: list[bytes] = []
        while time.monotonic() < deadline:
            before = len(values)
            values = await read_topic(settings, settings.topic_training_examples, idle=1.0)
            if values and len(values) == before:
                break
        examples = examples_to_set([codec.loads(v) for v in values], vectorizer.feature_names)
        registry = ModelRegistry(settings.model_dir, vectorizer, backend="default")
        report: TrainingReport | None = None
        error = None
        try:
            report = await asyncio.to_thread(
                train, examples, registry, self._training_config(), force=self.config.force
            )
        except ModelError as exc:
            error = str(exc)
            log.error("simulation: no model trained: %s", exc)
        published = report is not None and report.published and report.version is not None
        served = report.version.version if published and report and report.version else None
        if served is not None:
            await self._wait_served(client, served)
        self.training = TrainingOutcome(
            examples=len(examples),
            requests=examples.n_requests,
            data=examples,
            report=report,
            published=served is not None,
            served_version=served or HEURISTIC_VERSION,
            seconds=time.monotonic() - started,
            error=error,
        )

    def _training_config(self) -> TrainingConfig:
        from nearline.model.training import TrainingConfig

        return TrainingConfig(
            loss=self.config.training_loss,  # type: ignore[arg-type]
            max_epochs=self.config.training_epochs,
            seed=self.config.world.seed,
            progress=False,
        )

    async def _wait_served(self, client: httpx.AsyncClient, version: str) -> None:
        """Ask (as a member outside the experiment) until the worker ranks with ``version``."""
        body = {"member_id": "sim-probe", "candidates": [self.world.item_ids[0]], "k": 1}
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            answer = await self._recommend(client, body)
            if answer.get("model_version") == version:
                return
            await asyncio.sleep(0.1)
        raise SimulationError(f"the worker did not serve the published model {version} in 30 s")

    async def _play(
        self,
        client: httpx.AsyncClient,
        producer: AIOKafkaProducer,
        sessions: list[Session],
        bar: tqdm,  # type: ignore[type-arg]
    ) -> None:
        """Run ``sessions`` on schedule, at most ``concurrency`` at once; all finished after."""
        limit = asyncio.Semaphore(self.config.concurrency)
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
        late = time.time() - due
        asked = time.perf_counter()
        answer = await self._recommend(client, body)
        latency = time.perf_counter() - asked
        # Warm-up days serve everyone fresh features, as production did before the test;
        # then the worker assigns the arm (and the batch arm's cut-off) itself.
        served_arm = answer.get("experiment")
        expected = {"id": self.experiment.id, "arm": arm} if measured and self.experiment else None
        if served_arm != expected:
            raise SimulationError(
                f"{member_id} on day {session.day} was served in arm {served_arm}, not {expected}"
            )
        shown = [self.item_index[entry["item_id"]] for entry in answer["items"][: config.k]]
        outcome = config.behaviour.react(
            world, session.member, session.index, session.sim_time, shown
        )
        candidates = np.asarray(session.candidates)
        state = world.state(session.member, session.sim_time)
        _, p_click = config.behaviour.probabilities(
            config.behaviour.affinity(world, state, candidates)
        )
        position = {item: i for i, item in enumerate(session.candidates)}
        true_ndcg, true_hit, true_rr = true_ranking_metrics(
            p_click, np.asarray([position[item] for item in shown], dtype=np.int64), config.k
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
                true_ndcg=true_ndcg,
                true_hit=true_hit,
                true_rr=true_rr,
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
