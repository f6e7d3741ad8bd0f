"""The Aerospike backend with the real client and no server: fast failures, bounded waits.

Recovery all the way to "works again" needs a server, which cannot run here; what is
tested instead is that the store re-attempts the connection after its backoff (it goes
from a refused port to a silent one and reports the new failure) and, in between, fails
at once without waiting on the network.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from nearline.attribute_store import StoreUnavailable
from nearline.attribute_store.aerospike import AerospikeAttributeStore
from tests.unit.attribute_store.conftest import item

CONNECT_TIMEOUT = 0.4
TOTAL_TIMEOUT = 0.2
# What scheduling noise on two shared cores may add to a timeout.
SLACK = 0.5


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_store(port: int, clock: Callable[[], float] = time.monotonic) -> AerospikeAttributeStore:
    return AerospikeAttributeStore(
        [f"127.0.0.1:{port}"],
        namespace="test",
        connect_timeout=CONNECT_TIMEOUT,
        total_timeout=TOTAL_TIMEOUT,
        max_retries=2,
        clock=clock,
    )


async def timed(call: Awaitable[Any]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await call
    except BaseException as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_a_closed_port_fails_fast_naming_the_host(closed_port: int) -> None:
    store = make_store(closed_port)

    async def scenario() -> list[tuple[float, BaseException | None]]:
        try:
            return [
                await timed(store.get_many(["i1"])),
                await timed(store.put_many([item("i1")])),
                await timed(store.delete_many(["i1"])),
            ]
        finally:
            await store.close()

    for elapsed, error in asyncio.run(scenario()):
        assert isinstance(error, StoreUnavailable)
        assert f"127.0.0.1:{closed_port}" in str(error)
        assert "NEARLINE_AEROSPIKE_HOSTS" in str(error)  # says what to fix
        assert elapsed < 2.0


def test_health_reports_an_unreachable_cluster_without_raising(closed_port: int) -> None:
    store = make_store(closed_port)

    async def scenario() -> Any:
        try:
            return await store.health()
        finally:
            await store.close()

    health = asyncio.run(scenario())
    assert not health.ok
    assert health.backend == "aerospike"
    assert f"127.0.0.1:{closed_port}" in health.detail


def test_a_port_that_never_answers_is_bounded_by_the_connect_timeout(silent_port: int) -> None:
    store = make_store(silent_port)

    async def scenario() -> tuple[float, BaseException | None]:
        try:
            return await timed(store.get_many(["i1"]))
        finally:
            await store.close()

    elapsed, error = asyncio.run(scenario())
    assert isinstance(error, StoreUnavailable)
    assert "connect timeout" in str(error) and f"127.0.0.1:{silent_port}" in str(error)
    # It waited for the timeout (not a refusal), and not much longer.
    assert CONNECT_TIMEOUT * 0.8 <= elapsed < CONNECT_TIMEOUT + TOTAL_TIMEOUT + SLACK


def test_the_event_loop_keeps_running_while_the_client_waits(silent_port: int) -> None:
    store = make_store(silent_port)

    async def scenario() -> tuple[float, list[float]]:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        try:
            elapsed, error = await timed(store.get_many(["i1"]))
            assert isinstance(error, StoreUnavailable)
            return elapsed, ticks
        finally:
            task.cancel()
            await store.close()

    elapsed, ticks = asyncio.run(scenario())
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    # A blocked loop would show one gap as long as the whole connect timeout.
    assert elapsed >= CONNECT_TIMEOUT * 0.8
    assert len(ticks) >= 10
    assert max(gaps) < CONNECT_TIMEOUT / 2


def test_concurrent_calls_during_an_outage_do_not_queue_up(silent_port: int) -> None:
    store = make_store(silent_port)

    async def scenario() -> tuple[float, list[BaseException | None]]:
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(timed(store.get_many([f"i{n}"])) for n in range(8)),
            )
            return time.monotonic() - started, [error for _, error in results]
        finally:
            await store.close()

    elapsed, errors = asyncio.run(scenario())
    assert all(isinstance(error, StoreUnavailable) for error in errors)
    # One call pays the connect timeout; the others fail as soon as it has failed.
    assert elapsed < CONNECT_TIMEOUT + TOTAL_TIMEOUT + SLACK


def test_the_connection_is_attempted_again_after_the_backoff(closed_port: int) -> None:
    clock = FakeClock()
    store = make_store(closed_port, clock)
    listener: socket.socket | None = None

    async def scenario() -> list[tuple[float, BaseException | None]]:
        nonlocal listener
        try:
            first = await timed(store.get_many(["i1"]))  # refused
            # Something now listens on that port but never answers.
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", closed_port))
            listener.listen(8)
            within_backoff = await timed(store.get_many(["i1"]))
            clock.now += store.reconnect_backoff + 0.1
            after_backoff = await timed(store.get_many(["i1"]))
            return [first, within_backoff, after_backoff]
        finally:
            await store.close()
            if listener is not None:
                listener.close()

    (_, refused), (quick, held_back), (slow, retried) = asyncio.run(scenario())
    assert isinstance(refused, StoreUnavailable) and "Failed to connect" in str(refused)
    # Inside the backoff nothing touches the network: the old error, at once.
    assert isinstance(held_back, StoreUnavailable) and "next attempt in" in str(held_back)
    assert quick < 0.1
    # After it, a new connection attempt meets the silent listener and times out.
    assert isinstance(retried, StoreUnavailable) and "connect timeout" in str(retried)
    assert slow >= CONNECT_TIMEOUT * 0.8


@pytest.mark.parametrize("operation", ["get", "put", "delete", "health"])
def test_a_closed_store_answers_without_a_thread(closed_port: int, operation: str) -> None:
    store = make_store(closed_port)

    async def scenario() -> Any:
        await store.close()
        if operation == "get":
            return await store.get_many(["i1"])
        if operation == "put":
            return await store.put_many([item("i1")])
        if operation == "delete":
            return await store.delete_many(["i1"])
        return await store.health()

    if operation == "health":
        health = asyncio.run(scenario())
        assert not health.ok and "closed" in health.detail
    else:
        with pytest.raises(StoreUnavailable, match="closed"):
            asyncio.run(scenario())
