"""The dev harness's waits and settings, without a broker: what a failed wait tells."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from nearline.app.broker import EmbeddedBroker
from nearline.app.stack import Stack, StackError, WorkerProcess, wait_until


class _Broker:
    """The two things a stack asks of its broker before anything runs."""

    url = "kafka://127.0.0.1:1"
    bootstrap = "127.0.0.1:1"


def _stack(tmp_path: Path, **settings: str) -> Stack:
    return Stack.isolated(cast(EmbeddedBroker, _Broker()), 4, "u", tmp=tmp_path, **settings)


def _exited(tmp_path: Path, output: str) -> WorkerProcess:
    """A worker whose process has already exited, having logged ``output``."""
    worker = _stack(tmp_path).worker("w9")
    worker.log_path.write_text(output)
    worker.process = subprocess.Popen([sys.executable, "-c", "pass"])
    worker.process.wait()
    return worker


def test_a_condition_that_holds_ends_the_wait() -> None:
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), timeout=5, interval=0.01)


def test_a_timed_out_wait_says_what_it_waited_for_and_shows_the_log(tmp_path: Path) -> None:
    worker = _stack(tmp_path).worker("w1")
    worker.log_path.write_text("earlier lines\nthe reason it failed\n")
    with pytest.raises(StackError) as failed:
        wait_until(lambda: False, 0.05, 0.01, "the answer", workers=[worker])
    assert "timed out after 0s waiting for the answer" in str(failed.value)
    assert "the reason it failed" in str(failed.value)


def test_a_worker_that_exits_ends_the_wait_at_once(tmp_path: Path) -> None:
    worker = _exited(tmp_path, "Traceback: boom\n")
    with pytest.raises(StackError, match="w9 exited while waiting for w9 to be ready"):
        worker.wait_ready(timeout=60)
    with pytest.raises(StackError, match="boom"):
        worker.wait_for_metric("nearline_events_in_total", 1, timeout=60)


def test_an_isolated_stack_has_its_own_topics_and_its_settings_reach_clients(
    tmp_path: Path,
) -> None:
    stack = _stack(tmp_path, embedding_dim="8", log_level="INFO")
    assert stack.topic == f"{stack.app_id}-actions" and stack.app_id.startswith("u")
    assert stack.settings["NEARLINE_LOG_LEVEL"] == "INFO"
    settings = stack.app_settings()
    assert settings.embedding_dim == 8 and settings.topic_dlq == stack.dlq
    worker = stack.worker("w2", NEARLINE_EMBEDDING_DIM="4")
    assert worker.env["NEARLINE_EMBEDDING_DIM"] == "4"
    assert worker.data_dir == tmp_path / "w2" and worker.log_path == tmp_path / "w2.log"
    assert worker.url.startswith("http://127.0.0.1:") and stack.workers == [worker]
