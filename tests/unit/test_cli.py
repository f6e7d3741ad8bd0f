"""The command line: errors a user can act on, not tracebacks."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from nearline.app.broker import free_port
from nearline.cli import main


def test_an_unreachable_broker_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = free_port()  # nothing listens there: aiokafka's real connect fails
    monkeypatch.setenv("NEARLINE_BROKER_URL", f"kafka://127.0.0.1:{closed}")
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 1
    assert "cannot reach Kafka at kafka://127.0.0.1" in result.output
    assert "NEARLINE_BROKER_URL" in result.output


def test_help_explains_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("broker", "worker", "produce", "demo", "attributes", "train", "simulate"):
        assert command in result.output
