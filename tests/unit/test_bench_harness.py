"""The benchmarks' open loop: latency from when a request was due, and how outcomes count."""

from __future__ import annotations

import asyncio
import time

from bench.harness import ANSWERED, FAILED, SHED, STALE, Samples, outcome, paced


def test_a_request_sent_late_counts_its_wait() -> None:
    """The first request holds the driver's loop for 100 ms (a busy load generator): the
    requests due meanwhile are sent late, and their latency includes that wait."""
    hold = 0.1

    async def send(n: int) -> bool:
        if n == 0:
            time.sleep(hold)  # blocks the loop, as a driver short of CPU would
        return True

    samples = asyncio.run(paced(send, 100.0, 0.2, time.perf_counter()))
    ok = sorted(samples.ok)
    assert len(ok) == 20
    # Request n was due n * 10 ms after the start; none could be sent before the hold
    # ended, 100 ms after it: each counts the rest of the hold (lower bounds, so a slow
    # machine cannot make this fail).
    for n in (1, 5, 9):
        due, latency = ok[n]
        assert abs(due - n / 100) < 1e-9
        assert latency >= hold - due - 0.001


def test_outcomes_are_counted_apart_and_by_due_time() -> None:
    results = [ANSWERED, STALE, SHED, FAILED, True, False]

    async def send(n: int) -> bool | str:
        if n == 6:
            raise ConnectionError("refused")  # a restarting server: counted as failed
        return results[n]

    samples = asyncio.run(paced(send, 100.0, 0.07, time.perf_counter()))
    assert samples.counts() == {
        ANSWERED: 2,
        STALE: 1,
        SHED: 1,
        FAILED: 3,
        "total": 7,
    }
    assert samples.failed == 4  # shed or failed
    assert len(samples.ok) == 3  # a stale answer is answered, with a latency
    stats = samples.stats()
    assert (stats["n"], stats["stale"], stats["shed"], stats["failed"]) == (3, 1, 1, 3)
    # Requests due in [0.02, 0.05): shed, failed, answered (n = 2, 3, 4).
    assert samples.counts(0.015, 0.045)["total"] == 3
    again = Samples.from_json(samples.to_json())
    assert again.counts() == samples.counts()


def test_a_window_takes_the_requests_due_or_ended_in_it() -> None:
    samples = Samples([(0.5, 0.1, ANSWERED), (0.9, 0.3, ANSWERED), (1.5, 0.0, SHED)])
    steady = samples.stats([(1.0, 2.0)])
    # The second ended inside the window (0.9 + 0.3), the third was due in it.
    assert (steady["n"], steady["shed"]) == (1, 0)


def test_outcome_of_an_answer() -> None:
    assert outcome(200, b'{"counts": {}}') == ANSWERED
    assert outcome(200, b'{"counts": {}, "stale_ms": 1200}') == STALE
    assert outcome(503, b"") == SHED
    assert outcome(500, b"") == FAILED
