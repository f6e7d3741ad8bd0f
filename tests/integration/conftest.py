"""Fixtures that start real processes: the embedded broker and `nearline worker`s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from app.broker import EmbeddedBroker, free_port
from app.stack import StackError, consume_topic, isolated_env, read_metric, wait_ready

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as instance:
        yield instance


@dataclass
class Worker:
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, module: str = "app.cli") -> Worker:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "worker"],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Worker:
        assert self.process is not None
        try:
            wait_ready(self.url, self.process, timeout)
        except StackError as exc:
            raise AssertionError(f"{exc}: {self.log_tail()}") from None
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=5)

    def metric(self, name: str) -> float:
        return read_metric(self.url, name)

    def maps(self, library: str) -> bool:
        """Whether the process has mapped a file whose path contains ``library`` (Linux)."""
        assert self.process is not None
        return library in Path(f"/proc/{self.process.pid}/maps").read_text()


@dataclass
class Deployment:
    """One app id with its own topics and data dirs: the workers of one test."""

    broker: EmbeddedBroker
    tmp: Path
    settings: dict[str, str]
    workers: list[Worker] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return self.settings["NEARLINE_TOPIC_ACTIONS"]

    @property
    def dlq(self) -> str:
        return self.settings["NEARLINE_TOPIC_DLQ"]

    @property
    def partitions(self) -> int:
        return int(self.settings["NEARLINE_TOPIC_PARTITIONS"])

    def worker(self, name: str = "w1", **overrides: str) -> Worker:
        port = free_port()
        env = {
            **os.environ,
            **self.settings,
            "NEARLINE_DATA_DIR": str(self.tmp / name),
            "NEARLINE_WEB_PORT": str(port),
            **overrides,
        }
        worker = Worker(env=env, port=port, log_path=self.tmp / f"{name}.log")
        self.workers.append(worker)
        return worker

    def produce(self, records: Sequence[Record]) -> None:
        self.produce_to(self.topic, records)

    def produce_to(self, topic: str, records: Sequence[Record]) -> None:
        asyncio.run(_produce(self.broker.bootstrap, topic, records))

    def consume(self, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
        return asyncio.run(consume_topic(self.broker.bootstrap, topic, expected, timeout))


#: (key, value), or (key, value, partition) to put the record on a partition of one's choice.
Record = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, int]


async def _produce(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
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


@pytest.fixture
def deployment(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Deployment]:
    name = f"t{uuid.uuid4().hex[:8]}"
    settings = {**isolated_env(broker.url, name), "NEARLINE_LOG_LEVEL": "INFO"}
    deployed = Deployment(broker=broker, tmp=tmp_path, settings=settings)
    yield deployed
    for worker in deployed.workers:
        worker.stop()


def wait_until(
    predicate: Any, timeout: float = 30.0, interval: float = 0.2, message: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
