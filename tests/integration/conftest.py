"""Fixtures that start real processes: the embedded broker and `nearline worker`s.

Thin wrappers over the dev harness (:mod:`nearline.app.stack`); the names tests import from here
are the harness's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nearline.app.broker import EmbeddedBroker
from nearline.app.stack import Record, Stack, WorkerProcess, consume_topic, wait_until

__all__ = ["REPO", "Deployment", "Record", "Worker", "consume_topic", "wait_until"]

REPO = Path(__file__).resolve().parents[2]

#: One test's deployment (an app id, topics and data dirs of its own) and its workers.
Deployment = Stack
Worker = WorkerProcess


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as instance:
        yield instance


@pytest.fixture
def deployment(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Deployment]:
    deployed = Stack.isolated(broker, prefix="t", tmp=tmp_path, log_level="INFO")
    yield deployed
    deployed.stop()
