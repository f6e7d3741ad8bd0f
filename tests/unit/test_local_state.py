"""When a worker keeps its tables' local state across a restart (tables/changelog.py).

The restarts themselves (a SIGKILL, a clean stop, a new broker) run in tests/integration;
here each case of the policy is checked on a directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nearline.tables.changelog import discard_untrusted_state, mark_clean_stop


def tables(tmp_path: Path) -> Path:
    tabledir = tmp_path / "v1" / "tables"
    tabledir.mkdir(parents=True)
    (tabledir / "members-0.db").write_text("state")
    return tabledir


def test_state_after_a_clean_stop_is_kept_once(tmp_path: Path) -> None:
    tabledir = tables(tmp_path)
    mark_clean_stop(tabledir, unsettled=False)
    discard_untrusted_state(tabledir, changelog_is_new=False)
    assert (tabledir / "members-0.db").exists()
    # The marker is gone until this run stops cleanly too: a kill now discards the state.
    discard_untrusted_state(tabledir, changelog_is_new=False)
    assert not tabledir.exists()


def test_state_without_a_clean_stop_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tabledir = tables(tmp_path)
    with caplog.at_level(logging.WARNING):
        discard_untrusted_state(tabledir, changelog_is_new=False)
    assert not tabledir.exists()
    assert "the last run did not stop cleanly" in caplog.text


def test_an_unacknowledged_write_leaves_no_marker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tabledir = tables(tmp_path)
    with caplog.at_level(logging.WARNING):
        mark_clean_stop(tabledir, unsettled=True)
    assert "not acknowledged" in caplog.text
    discard_untrusted_state(tabledir, changelog_is_new=False)
    assert not tabledir.exists()


def test_state_no_changelog_backs_is_discarded_after_a_clean_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tabledir = tables(tmp_path)
    mark_clean_stop(tabledir, unsettled=False)
    with caplog.at_level(logging.WARNING):
        discard_untrusted_state(tabledir, changelog_is_new=True)
    assert not tabledir.exists()
    assert "the changelog topic is new" in caplog.text


def test_a_first_start_has_nothing_to_discard(tmp_path: Path) -> None:
    tabledir = tmp_path / "v1" / "tables"
    discard_untrusted_state(tabledir, changelog_is_new=True)
    mark_clean_stop(tabledir, unsettled=False)  # no tables were written: no marker either
    assert not tabledir.parent.exists()
