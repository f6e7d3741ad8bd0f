"""Shared pieces of the benchmarks: a broker, worker processes, load, and statistics."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from app.broker import EmbeddedBroker, free_port

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": at(0.99),
        "max": ordered[-1],
    }


@dataclass
class WorkerProcess:
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def metric(self, name: str) -> float:
        total = 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                total += float(value)
        return total

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


class Stack:
    """An embedded broker plus workers of one app id, for one benchmark."""

    def __init__(self, broker: EmbeddedBroker, partitions: int = 4, **settings: str) -> None:
        self.broker = broker
        self.app_id = f"bench{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tempfile.mkdtemp(prefix="nearline-bench-"))
        self.env = {
            **os.environ,
            "NEARLINE_PROFILE": "embedded",
            "NEARLINE_BROKER_URL": broker.url,
            "NEARLINE_APP_ID": self.app_id,
            "NEARLINE_TOPIC_ACTIONS": f"{self.app_id}-actions",
            "NEARLINE_TOPIC_DLQ": f"{self.app_id}-actions.dlq",
            "NEARLINE_TOPIC_ITEM_ATTRIBUTES": f"{self.app_id}-item-attributes",
            "NEARLINE_TOPIC_RECOMMENDATIONS_LOG": f"{self.app_id}-recommendations-log",
            "NEARLINE_TOPIC_TRAINING_EXAMPLES": f"{self.app_id}-training-examples",
            "NEARLINE_TOPIC_PARTITIONS": str(partitions),
            "NEARLINE_LOG_LEVEL": "WARNING",
            **{f"NEARLINE_{k.upper()}": v for k, v in settings.items()},
        }
        self.topic = self.env["NEARLINE_TOPIC_ACTIONS"]
        self.workers: list[WorkerProcess] = []

    def create_topics(self) -> None:
        from app.settings import load_settings
        from app.topics import ensure_topics

        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            asyncio.run(ensure_topics(load_settings()))
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def start_worker(self, name: str = "w1", timeout: float = 90.0) -> WorkerProcess:
        port = free_port()
        data_dir = self.tmp / name
        log = self.tmp / f"{name}.log"
        env = {**self.env, "NEARLINE_WEB_PORT": str(port), "NEARLINE_DATA_DIR": str(data_dir)}
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=env,
            cwd=REPO,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(f"http://127.0.0.1:{port}", process, data_dir, log)
        self.workers.append(worker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{worker.url}/readyz", timeout=1).status_code == 200:
                    return worker
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in {timeout}s")

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@contextmanager
def embedded_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


async def preload(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], batched: bool = True
) -> float:
    """Produce ``records`` as fast as possible; returns seconds taken.

    Pre-loading a source topic may batch normally: the embedded broker's offset quirk only
    matters to readers of a topic's end offset (changelog recovery), not to consumers.
    """
    options: dict[str, Any] = {"linger_ms": 20} if batched else {"max_batch_size": 16}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **options)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started
