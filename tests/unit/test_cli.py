"""The command line: errors a user can act on, not tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from nearline.app.broker import free_port
from nearline.cli import main
from nearline.model.exceptions import ModelError


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


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["model", "activate", "v9"], "no model version 'v9'"),
        (["model", "rollback"], "nothing to roll back to"),
        (["experiment", "stop"], "no experiment"),
        (["train", "{dir}/examples.parquet", "--skip-erasure-check"], "cannot read training"),
    ],
)
def test_a_model_error_from_any_command_is_its_message(
    tmp_path: Path, args: list[str], words: str
) -> None:
    (tmp_path / "examples.parquet").write_text("not parquet")
    args = [arg.format(dir=tmp_path) for arg in args]
    result = CliRunner().invoke(main, [*args, "--model-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert words in result.output
    assert not isinstance(result.exception, ModelError)  # a message, not a traceback
