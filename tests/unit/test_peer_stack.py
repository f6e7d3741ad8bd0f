"""The peer-stack benchmark's own arithmetic: windows, Feast's answer, the oracle check, pids.

The peer's processes (Feast, Quix, Redis) run in ``python -m bench.peer_stack``; these are
the parts of it that decide its figures and can be checked without them.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from bench.harness import cpu_seconds, process_tree, rss_mb
from bench.peer_feast import BUCKET, FEATURES, window_counts
from bench.peer_stack import feast_rows
from bench.soak import tally
from nearline.app.stack import wait_until


def test_window_counts_follow_nearline_buckets() -> None:
    now = 1_000_000.0
    bucket = lambda ts: str(int(ts // BUCKET))  # noqa: E731
    buckets = {
        bucket(now - 10): {"click": 2, "view": 1},
        bucket(now - 2 * 3600): {"click": 5},  # outside 1h, inside 24h
        bucket(now - 2 * 86400): {"apply": 1},  # inside 96h only
    }
    row = window_counts(buckets, now)
    assert set(row) == set(FEATURES) and len(FEATURES) == 15
    assert (row["click_1h"], row["click_24h"], row["click_96h"]) == (2, 7, 7)
    assert (row["view_1h"], row["apply_24h"], row["apply_96h"]) == (1, 0, 1)
    assert row["dismiss_96h"] == 0


def test_feast_rows_turn_columns_into_one_row_per_member() -> None:
    body = {
        "metadata": {"feature_names": ["member_id", "click_1h"]},
        "results": [
            {"values": ["member-1", "member-2"], "statuses": ["PRESENT", "PRESENT"]},
            {"values": [3, None], "statuses": ["PRESENT", "NOT_FOUND"]},
        ],
    }
    assert feast_rows(body) == [
        {"member_id": "member-1", "click_1h": 3},
        {"member_id": "member-2", "click_1h": None},
    ]


def test_tally_tells_lost_from_counted_twice() -> None:
    expected = {"a": Counter({"click": 2}), "b": Counter({"view": 1}), "c": Counter({"save": 1})}
    served = {"a": {"click": 3}, "b": {"view": 0}}  # c never served
    assert tally(expected, served) == {"members": 3, "lost": 2, "counted_twice": 1, "off": 3}


def test_process_tree_finds_grandchildren() -> None:
    script = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'input()'])"
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        wait_until(lambda: len(process_tree([parent.pid])) == 2, 10, 0.01, "the grandchild")
        found = process_tree([parent.pid])
        assert found[0] == parent.pid and len(found) == 2
        assert all(cpu_seconds(pid) is not None and rss_mb(pid) for pid in found)
    finally:
        assert parent.stdin is not None
        parent.stdin.close()  # the grandchild shares it: input() ends, both exit
        parent.wait(10)
    assert process_tree([parent.pid]) == []
