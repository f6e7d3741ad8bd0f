"""Optional extras: a bare install serves without them, and a missing one names itself."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nearline.cli import main
from nearline.foundation.extras import OPTIONAL_MODULES, MissingExtra, requires_extra

SETUP_CFG = Path(__file__).parents[2] / "setup.cfg"


def test_serving_the_heuristic_on_the_embedded_store_imports_no_extra(tmp_path: Path) -> None:
    """What a worker, ``nearline serve`` and the CLI (``nearline demo`` included) import, and
    the heuristic and the embedded store they serve with, leave every extra unloaded."""
    script = f"""
import sys
import nearline.cli, nearline.app.worker, nearline.app.supervisor, nearline.app.serve
import nearline.app.stack, nearline.app.traffic, nearline.app.broker
from click.testing import CliRunner
from nearline.attribute_store import EmbeddedAttributeStore
from nearline.model.registry import ModelRegistry
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
for command in ([], ["worker"], ["serve"], ["demo"], ["train"], ["simulate"]):
    assert CliRunner().invoke(nearline.cli.main, [*command, "--help"]).exit_code == 0, command
EmbeddedAttributeStore.in_data_dir({str(tmp_path)!r}).close()
registry = ModelRegistry({str(tmp_path)!r}, Vectorizer(VectorizerConfig()))
assert registry.load_latest().version == "heuristic-v1"
loaded = sorted(m for m in ("torch", "aerospike", "matplotlib", "pyarrow") if m in sys.modules)
assert not loaded, f"imported without being configured: {{loaded}}"
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_missing_client_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import aerospike` fail as if the client were not installed.
    monkeypatch.setitem(sys.modules, "aerospike", None)
    monkeypatch.delitem(sys.modules, "nearline.attribute_store.aerospike", raising=False)
    with pytest.raises(MissingExtra) as raised:
        importlib.import_module("nearline.attribute_store.aerospike")
    assert str(raised.value) == (
        "NEARLINE_ATTRIBUTE_STORE=aerospike needs the aerospike client: "
        "pip install 'nearline[aerospike]'"
    )


def test_a_command_missing_an_extra_prints_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    for module in ("nearline.model.training", "nearline.model.scorer"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    examples = tmp_path / "examples.parquet"
    examples.touch()
    result = CliRunner().invoke(main, ["train", str(examples), "--skip-erasure-check"])
    assert result.exit_code == 1
    assert result.output == "Error: Training needs PyTorch: pip install 'nearline[train]'\n"


def test_other_import_errors_pass_unchanged() -> None:
    with pytest.raises(ModuleNotFoundError) as raised, requires_extra("Anything"):
        importlib.import_module("nearline_no_such_module")
    assert not isinstance(raised.value, MissingExtra)


def test_every_extra_named_is_one_setup_cfg_declares() -> None:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    declared = set(config["options.extras_require"])
    assert {extra for extra, _ in OPTIONAL_MODULES.values()} <= declared
