"""Serving processes (`nearline serve`) beside real workers: rebalances, crashes, restarts.

Each test runs workers with NEARLINE_SERVE_PROCESSES above 0: the public API is answered by
serving processes reading the worker's RocksDB through secondary instances. Their answers
may trail the worker's state by NEARLINE_SERVE_MAX_STALENESS (10 ms), so a check of fresh
answers waits until they arrive rather than reading once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Deployment, Worker, wait_until
from tests.integration.helpers import wait_applied_to_end
from tests.integration.test_ingest import make_events, oracle, records
from tests.oracle import served_view

pytestmark = pytest.mark.integration


def _views(worker: Worker, members: list[str], as_of: float) -> dict[str, Any]:
    views = {}
    for member in members:
        response = worker.get(f"/v1/members/{member}/features", as_of=as_of)
        assert response.status_code == 200, response.text
        views[member] = served_view(response.json())
    return views


def _wait_matches(worker: Worker, expected: dict[str, Any], as_of: float) -> None:
    wait_until(
        lambda: _views(worker, list(expected), as_of) == expected,
        timeout=10,
        message=f"{worker.name}'s serving processes to answer as the oracle does",
    )


def test_reads_go_on_through_a_sigkill_flagged_stale_and_a_restore_is_followed(
    deployment: Deployment,
) -> None:
    worker = deployment.worker(NEARLINE_SERVE_PROCESSES="2").start().wait_ready()
    port = worker.env["NEARLINE_WEB_PORT"]
    now = time.time()
    events = make_events(1500, members=40, now=now, seed=11)
    deployment.produce(records(events))
    wait_applied_to_end(deployment)
    expected = oracle(events, as_of=now)
    _wait_matches(worker, expected, now)
    assert "stale_ms" not in worker.get(f"/v1/members/{next(iter(expected))}/features").json()

    worker.kill()  # the worker only: its serving processes go on
    members = list(expected)
    answered, stale = 0, 0
    deadline = time.monotonic() + 4  # past the 2 s after which a silent worker counts as gone
    while time.monotonic() < deadline:
        member = members[answered % len(members)]
        response = worker.get(f"/v1/members/{member}/features", as_of=now)
        assert response.status_code == 200, response.text
        body = response.json()
        assert served_view(body) == expected[member], member
        answered += 1
        stale += "stale_ms" in body
    assert stale > 0, "answers from a dead worker's state were never flagged stale"
    recommendation = httpx.post(
        f"{worker.url}/v1/recommendations",
        json={"member_id": members[0], "candidates": ["item-1", "item-2"]},
        timeout=5,
    )
    assert recommendation.status_code == 200 and recommendation.json()["stale_ms"] > 0

    # Started again after a SIGKILL, the worker discards its RocksDB and restores it from
    # the changelog: a new database in the same directory. Serving processes that kept
    # reading the old one would never see what comes next.
    restarted = deployment.worker("w1", port=int(port), NEARLINE_SERVE_PROCESSES="2").start()
    restarted.wait_ready()
    assert "did not stop cleanly" in restarted.log_tail(200_000)
    later = time.time()
    more = make_events(600, members=60, now=later, seed=12)  # 20 members never seen before
    deployment.produce(records(more))
    wait_applied_to_end(deployment)
    _wait_matches(restarted, oracle(events + more, as_of=later), later)
    body = restarted.get(f"/v1/members/{members[0]}/features").json()
    assert "stale_ms" not in body


def test_serving_processes_follow_a_rebalance(deployment: Deployment) -> None:
    first = deployment.worker("w1", NEARLINE_SERVE_PROCESSES="1").start().wait_ready()
    now = time.time()
    events = make_events(1200, members=40, now=now, seed=13)
    deployment.produce(records(events))
    wait_applied_to_end(deployment)
    second = deployment.worker("w2", NEARLINE_SERVE_PROCESSES="1").start()
    second.wait_ready()

    def split() -> bool:
        a, b = first.get("/readyz").json(), second.get("/readyz").json()
        return bool(
            a["ready"]
            and b["ready"]
            and a["partitions"]
            and b["partitions"]
            and sorted(a["partitions"] + b["partitions"]) == list(range(deployment.partitions))
        )

    wait_until(split, timeout=60, message="partitions split across both workers")
    later = time.time()
    more = make_events(600, members=40, now=later, seed=14)
    deployment.produce(records(more))
    wait_applied_to_end(deployment)
    expected = oracle(events + more, as_of=later)
    # Each pod answers its own members and forwards the others': the same answers at both.
    _wait_matches(first, expected, later)
    _wait_matches(second, expected, later)


def test_a_serving_process_that_dies_or_hangs_is_started_again(deployment: Deployment) -> None:
    worker = (
        deployment.worker(NEARLINE_SERVE_PROCESSES="2", NEARLINE_SERVE_HANG_TIMEOUT="2s")
        .start()
        .wait_ready()
    )
    serving = worker.serving
    assert serving is not None
    wait_until(lambda: len(worker.pod_pids()) == 4, message="two serving processes")
    victims = worker.pod_pids()[2:]

    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def read_steadily() -> None:  # one request at a time, each on a new connection
        nonlocal answered
        while not stop.is_set():
            try:
                response = httpx.get(f"{worker.url}/v1/members/m1/features", timeout=5)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                answered += 1
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    reading = threading.Thread(target=read_steadily)
    reading.start()
    try:
        wait_until(lambda: answered > 20, message="reads under way")
        os.kill(victims[0], signal.SIGKILL)
        wait_until(
            lambda: len(worker.pod_pids()) == 4 and victims[0] not in worker.pod_pids(),
            timeout=15,
            message="the supervisor to start the killed serving process again",
        )
        before = answered
        wait_until(lambda: answered > before + 50, message="reads after the restart")
        # Only a request in flight on the killed process may fail: reads are one at a time.
        assert len(failures) <= 1, failures
        # A hung one (its event loop stopped: here the whole process) keeps its share of
        # the port's connections and answers none: the supervisor kills it and starts it
        # again within NEARLINE_SERVE_HANG_TIMEOUT.
        os.kill(victims[1], signal.SIGSTOP)
        wait_until(
            lambda: len(worker.pod_pids()) == 4 and victims[1] not in worker.pod_pids(),
            timeout=30,
            message="the supervisor to replace the hung serving process",
        )
        failures.clear()
        before = answered
        wait_until(lambda: answered > before + 50, message="reads after the replacement")
    finally:
        stop.set()
        reading.join()
    assert failures == [], failures
    assert "has not run its event loop" in worker.log_path.read_text(errors="replace")
    assert worker.metric("nearline_serving_processes") == 2
    # The console's system view is the worker's, with the serving processes beside it.
    system = worker.get("/v1/console/system").json()
    assert system["partitions"] and system["serving"]["processes"] == 2
    assert system["serving"]["stale_ms"] == {str(p): None for p in range(4)}
