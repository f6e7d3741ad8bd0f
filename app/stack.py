"""A local deployment in child processes: the embedded broker's topics plus `nearline worker`s.

Used by the benchmarks and by `nearline simulate`: each stack has its own app id, topics
and data directories, so several can share one broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from app.broker import EmbeddedBroker, free_port

__all__ = ["Stack", "StackError", "WorkerProcess", "consume_topic"]

#: The directory that holds the ``app`` package: where ``python -m app.cli`` resolves.
_ROOT = Path(__file__).resolve().parents[1]


class StackError(RuntimeError):
    """A worker of the stack exited or did not become ready; the message has its log tail."""


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


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``/readyz`` until 200; :class:`StackError` if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError("the worker exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise StackError(f"the worker was not ready within {timeout:.0f}s")


@dataclass
class WorkerProcess:
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def metric(self, name: str) -> float:
        return read_metric(self.url, name)

    def wait_for_metric(
        self, name: str, at_least: float, *, every: float = 0.1, timeout: float = 600.0
    ) -> None:
        """Poll until ``name`` reaches ``at_least``; :class:`StackError` if the worker exits."""
        deadline = time.monotonic() + timeout
        while self.metric(name) < at_least:
            if self.process.poll() is not None:
                raise StackError(f"the worker exited (see {self.log}) before {name} >= {at_least}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not reach {at_least} in {timeout:.0f} s")
            time.sleep(every)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
        "NEARLINE_TOPIC_PARTITIONS": str(partitions),
    }


class Stack:
    """An embedded broker plus workers of one app id; ``settings`` become ``NEARLINE_*``."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        partitions: int = 4,
        prefix: str = "bench",
        **settings: str,
    ) -> None:
        self.broker = broker
        self.app_id = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"nearline-{prefix}-"))
        self.env = {
            **os.environ,
            **isolated_env(broker.url, self.app_id, partitions),
            "NEARLINE_LOG_LEVEL": "WARNING",
            **{f"NEARLINE_{k.upper()}": v for k, v in settings.items()},
        }
        self.topic = self.env["NEARLINE_TOPIC_ACTIONS"]
        self.workers: list[WorkerProcess] = []

    def settings_env(self) -> dict[str, str]:
        """Only the ``NEARLINE_*`` variables the stack's workers run with."""
        return {k: v for k, v in self.env.items() if k.startswith("NEARLINE_")}

    def create_topics(self) -> None:
        from app.settings import load_settings
        from app.topics import ensure_topics

        overrides = {
            name.removeprefix("NEARLINE_").lower(): value
            for name, value in self.settings_env().items()
        }
        asyncio.run(ensure_topics(load_settings(**overrides)))

    def start_worker(
        self, name: str = "w1", timeout: float = 90.0, *, wait: bool = True, port: int = 0
    ) -> WorkerProcess:
        """Start a worker; unless ``wait`` is False, return once its ``/readyz`` says 200.

        ``port`` 0 picks a free one; a worker restarted on its old port keeps its URL.
        """
        port = port or free_port()
        data_dir = self.tmp / name
        log = self.tmp / f"{name}.log"
        env = {**self.env, "NEARLINE_WEB_PORT": str(port), "NEARLINE_DATA_DIR": str(data_dir)}
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=env,
            cwd=_ROOT,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(f"http://127.0.0.1:{port}", process, data_dir, log)
        self.workers.append(worker)
        if not wait:
            return worker
        try:
            wait_ready(worker.url, process, timeout)
        except StackError as exc:
            raise StackError(f"{exc}: {log.read_text()[-2000:]}") from None
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
