"""The dev harness: a local deployment of `nearline worker` child processes on one broker.

Everything that starts workers outside production goes through here: ``nearline demo`` and
``nearline simulate``, the benchmarks, and the integration tests' fixtures. A :class:`Stack`
is one deployment's ``NEARLINE_*`` settings (by :meth:`Stack.isolated`, an app id and topics
of its own, so several can share one broker) and its workers; a :class:`WorkerProcess`
starts, waits for readiness, answers metrics and is stopped or killed; :func:`wait_until`
waits for a condition and, when it does not come, says what it waited for and shows the
workers' log tails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import nearline
from nearline.app.broker import EmbeddedBroker, free_port
from nearline.foundation.settings import Settings, load_settings

__all__ = [
    "Record",
    "Stack",
    "StackError",
    "WorkerProcess",
    "consume_topic",
    "isolated_env",
    "read_metric",
    "wait_until",
]

#: The directory that holds the ``nearline`` package: where ``python -m nearline.cli`` resolves.
_ROOT = Path(nearline.__file__).resolve().parents[1]

#: Characters of a worker's log shown when it fails or a wait on it times out.
LOG_TAIL = 3000


class StackError(RuntimeError):
    """A worker exited, was not ready or a condition did not hold in time; says which, and
    has the workers' log tails."""


def read_metric(url: str, name: str) -> float:
    """Sum of a Prometheus metric over all its label sets, from a worker's ``/metrics``."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name or head.startswith(name + "{"):
            total += float(value)
    return total


async def consume_topic(
    bootstrap: str, topic: str, expected: int, timeout: float = 30.0
) -> list[Any]:
    """Records of ``topic`` from the start, until ``expected`` arrived or ``timeout``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


#: (key, value), or (key, value, partition) to put the record on a partition of one's choice.
Record = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, int]


async def _produce(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    # Small batches, sent in order: what a test produces is usually a handful of records
    # whose order on a partition the test relies on.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=16, linger_ms=2)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, record[1], key=record[0], partition=record[2] if len(record) > 2 else None
            )
            for record in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


#: Workers started in this process and not stopped since: whose logs a timed-out wait shows
#: unless told which (a test's waits name no worker; its workers' logs say why it failed).
_RUNNING: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.2,
    message: str = "",
    *,
    workers: Iterable[WorkerProcess] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; :class:`StackError` after ``timeout`` seconds.

    The error says what was awaited (``message``, else the predicate) and has the log tails
    of ``workers`` (by default every worker this process started and has not stopped). A
    worker of ``workers`` that exits ends the wait at once.
    """
    watched = list(workers) if workers is not None else None
    what = message or repr(predicate)
    deadline = time.monotonic() + timeout
    while True:
        # An exited worker first: asked, it would only refuse the connection.
        for worker in watched or ():
            if worker.exited:
                raise StackError(f"{worker.name} exited while waiting for {what}{_tails([worker])}")
        if predicate():
            return
        if time.monotonic() >= deadline:
            shown = watched if watched is not None else sorted(_RUNNING, key=lambda w: w.name)
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{_tails(shown)}")
        time.sleep(interval)


def _tails(workers: Iterable[WorkerProcess]) -> str:
    return "".join(
        f"\n--- last lines of {worker.log_path} ---\n{worker.log_tail()}"
        for worker in workers
        if not worker.terminal
    )


@dataclass(eq=False)
class WorkerProcess:
    """One ``nearline worker`` child process (or a module that runs one, for a fault
    injected by a test); ``env`` is its whole environment, port and data dir included.

    ``terminal``: it writes to this process's stdout and stderr (``nearline demo``), not
    to ``log_path``.
    """

    name: str
    env: dict[str, str] = field(repr=False)  # all of os.environ: too long to show
    log_path: Path
    terminal: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['NEARLINE_WEB_PORT']}"

    @property
    def data_dir(self) -> Path:
        return Path(self.env["NEARLINE_DATA_DIR"])

    @property
    def exited(self) -> bool:
        """Whether it was started and is no longer running."""
        return self.process is not None and self.process.poll() is not None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    @property
    def serve_processes(self) -> int:
        """``NEARLINE_SERVE_PROCESSES``: above 0, ``nearline serve`` runs beside it."""
        return int(self.env.get("NEARLINE_SERVE_PROCESSES", "0") or 0)

    @property
    def serving(self) -> subprocess.Popen[bytes] | None:
        """Its ``nearline serve`` (one per data dir: it outlives a worker killed and
        started again, as the serving container of a pod outlives the worker's)."""
        return _SERVING.get(str(self.data_dir))

    def start(self, module: str = "nearline.cli", *, new_session: bool = False) -> WorkerProcess:
        """Run ``python -m <module> worker`` (and ``nearline serve`` beside it, unless one
        runs for its data dir already); ``new_session`` keeps the terminal's Ctrl-C from
        reaching them (the caller stops them, gracefully, itself)."""
        self.process = self._spawn(module, "worker", new_session)
        if self.serve_processes and (self.serving is None or self.serving.poll() is not None):
            _SERVING[str(self.data_dir)] = self._spawn("nearline.cli", "serve", new_session)
        _RUNNING.add(self)
        return self

    def _spawn(self, module: str, command: str, new_session: bool) -> subprocess.Popen[bytes]:
        log = nullcontext(None) if self.terminal else self.log_path.open("ab")
        with log as output:  # the child has its own handle: ours is closed once it runs
            return subprocess.Popen(
                [sys.executable, "-m", module, command],
                env=self.env,
                cwd=_ROOT,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                start_new_session=new_session,
            )

    def pod_pids(self) -> list[int]:
        """The worker's pid, and its serving processes' (supervisor and children)."""
        pids = [self.pid]
        serving = self.serving
        if serving is not None and serving.poll() is None:
            pids.append(serving.pid)
            pids += _children(serving.pid)
        return pids

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        """Poll ``/readyz`` until 200; :class:`StackError` if it exits or time runs out."""

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, 0.1, f"{self.name} to be ready", workers=[self])
        return self

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        if self.terminal or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=5)

    def metric(self, name: str) -> float:
        return read_metric(self.url, name)

    def wait_for_metric(
        self, name: str, at_least: float, *, every: float = 0.1, timeout: float = 600.0
    ) -> None:
        """Poll until ``name`` reaches ``at_least``; :class:`StackError` if the worker exits."""
        wait_until(
            lambda: self.metric(name) >= at_least,
            timeout,
            every,
            f"{name} >= {at_least}",
            workers=[self],
        )

    def maps(self, library: str) -> bool:
        """Whether the process has mapped a file whose path contains ``library`` (Linux)."""
        return library in Path(f"/proc/{self.pid}/maps").read_text()

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send ``sig`` (SIGTERM: a clean shutdown) and wait; SIGKILL after ``timeout``.

        A clean stop stops its serving processes too; a SIGKILL (:meth:`kill`, a crash)
        leaves them answering, as a pod's serving container outlives its worker's."""
        _RUNNING.discard(self)
        _end(self.process, sig, timeout)
        if sig != signal.SIGKILL:
            _end(_SERVING.pop(str(self.data_dir), None), signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no flush."""
        self.stop(signal.SIGKILL)

    def kill_serving(self) -> None:
        """SIGKILL its ``nearline serve`` supervisor and serving processes."""
        serving = _SERVING.pop(str(self.data_dir), None)
        if serving is not None and serving.poll() is None:
            for pid in _children(serving.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _end(serving, signal.SIGKILL, 10)


def _end(process: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in task.read_text().split()]
    return children


#: ``nearline serve`` processes by the data dir of the worker they serve.
_SERVING: dict[str, subprocess.Popen[bytes]] = {}


def isolated_env(broker_url: str, app_id: str, partitions: int = 4) -> dict[str, str]:
    """``NEARLINE_*`` settings for a deployment of its own: app id and every topic unique."""
    return {
        "NEARLINE_PROFILE": "embedded",
        "NEARLINE_BROKER_URL": broker_url,
        "NEARLINE_APP_ID": app_id,
        "NEARLINE_TOPIC_ACTIONS": f"{app_id}-actions",
        "NEARLINE_TOPIC_DLQ": f"{app_id}-actions.dlq",
        "NEARLINE_TOPIC_ITEM_ATTRIBUTES": f"{app_id}-item-attributes",
        "NEARLINE_TOPIC_RECOMMENDATIONS_LOG": f"{app_id}-recommendations-log",
        "NEARLINE_TOPIC_TRAINING_EXAMPLES": f"{app_id}-training-examples",
        "NEARLINE_TOPIC_ERASURES": f"{app_id}-erasures",
        "NEARLINE_TOPIC_PARTITIONS": str(partitions),
    }


def _overrides(env: Mapping[str, str]) -> dict[str, str]:
    """``NEARLINE_*`` variables as :func:`load_settings` keyword arguments."""
    return {
        name.removeprefix("NEARLINE_").lower(): value
        for name, value in env.items()
        if name.startswith("NEARLINE_")
    }


@dataclass(eq=False)
class Stack:
    """The workers of one deployment on ``broker``: ``settings`` (``NEARLINE_*``) are what
    they all run with, on top of this process's environment; each has a data dir and a log
    under ``tmp``."""

    broker: EmbeddedBroker
    tmp: Path
    settings: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)

    @classmethod
    def isolated(
        cls,
        broker: EmbeddedBroker,
        partitions: int = 4,
        prefix: str = "bench",
        *,
        tmp: str | Path | None = None,
        **settings: str,
    ) -> Stack:
        """A deployment of its own (app id and topics ``<prefix><random>-…``); ``settings``
        by name (``embedding_dim="64"``, ``log_level`` WARNING unless given) become
        ``NEARLINE_*``. ``tmp`` by default a new temporary directory."""
        app_id = f"{prefix}{uuid.uuid4().hex[:6]}"
        return cls(
            broker=broker,
            tmp=Path(tmp or tempfile.mkdtemp(prefix=f"nearline-{prefix}-")),
            settings={
                **isolated_env(broker.url, app_id, partitions),
                "NEARLINE_LOG_LEVEL": "WARNING",
                **{f"NEARLINE_{k.upper()}": v for k, v in settings.items()},
            },
        )

    @property
    def app_id(self) -> str:
        return self.settings["NEARLINE_APP_ID"]

    @property
    def topic(self) -> str:
        return self.settings["NEARLINE_TOPIC_ACTIONS"]

    @property
    def dlq(self) -> str:
        return self.settings["NEARLINE_TOPIC_DLQ"]

    @property
    def partitions(self) -> int:
        return int(self.settings["NEARLINE_TOPIC_PARTITIONS"])

    def app_settings(self, **overrides: Any) -> Settings:
        """The :class:`Settings` the workers run with (plus ``overrides``), for a client."""
        return load_settings(**{**_overrides(self.settings), **overrides})

    def create_topics(self) -> None:
        from nearline.foundation.topics import ensure_topics

        asyncio.run(ensure_topics(self.app_settings()))

    def worker(
        self, name: str = "w1", *, port: int = 0, terminal: bool = False, **env: str
    ) -> WorkerProcess:
        """A worker named ``name``, not started: data in ``tmp/<name>``, log ``tmp/<name>.log``
        (``terminal``: to this process's output). ``port`` 0 picks a free one; ``env``
        (``NEARLINE_DATA_DIR=…``) overrides the stack's settings for this worker only.
        """
        worker = WorkerProcess(
            name=name,
            env={
                **os.environ,
                **self.settings,
                "NEARLINE_DATA_DIR": str(self.tmp / name),
                "NEARLINE_WEB_PORT": str(port or free_port()),
                "NEARLINE_WORKER_PORT": str(free_port()),
                **env,
            },
            log_path=self.tmp / f"{name}.log",
            terminal=terminal,
        )
        self.workers.append(worker)
        return worker

    def start_worker(
        self,
        name: str = "w1",
        timeout: float = 90.0,
        *,
        wait: bool = True,
        port: int = 0,
    ) -> WorkerProcess:
        """Start a worker; unless ``wait`` is False, return once its ``/readyz`` says 200.

        A worker restarted under its old name and port keeps its data dir, log and URL.
        """
        worker = self.worker(name, port=port).start()
        return worker.wait_ready(timeout) if wait else worker

    def produce(self, records: Sequence[Record]) -> None:
        self.produce_to(self.topic, records)

    def produce_to(self, topic: str, records: Sequence[Record]) -> None:
        asyncio.run(_produce(self.broker.bootstrap, topic, records))

    def consume(self, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
        return asyncio.run(consume_topic(self.broker.bootstrap, topic, expected, timeout))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:  # serving processes of workers that were killed
            worker.kill_serving()
