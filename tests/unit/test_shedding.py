"""Load shedding: past NEARLINE_MAX_IN_FLIGHT /v1 requests in progress, a 503 at once."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from nearline.app.web_app import _Shedding


async def _until_inside(inside: list[int], count: int) -> None:
    """Until ``count`` requests are in the handler (so counted in flight), at most 5 s."""

    async def poll() -> None:
        while inside[0] < count:
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), 5.0)


def test_requests_past_the_limit_are_shed_and_probes_never_are() -> None:
    release = asyncio.Event()
    shed: list[int] = []

    inside = [0]

    async def slow(request: Request) -> PlainTextResponse:
        inside[0] += 1
        await release.wait()
        return PlainTextResponse("done")

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/v1/slow", slow), Route("/healthz", health)],
        middleware=[Middleware(_Shedding, limit=2, on_shed=shed.append)],
    )

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nearline") as client:
            held = [asyncio.ensure_future(client.get("/v1/slow")) for _ in range(2)]
            await _until_inside(inside, 2)  # both in progress
            over = await client.get("/v1/slow")
            assert over.status_code == 503 and "NEARLINE_MAX_IN_FLIGHT" in over.json()["error"]
            assert over.headers["retry-after"] == "1"
            assert (await client.get("/healthz")).status_code == 200
            release.set()
            statuses = [r.status_code for r in await asyncio.gather(*held)]
            again = await client.get("/v1/slow")  # room again once they finished
            return [*statuses, again.status_code]

    assert asyncio.run(run()) == [200, 200, 200]
    assert shed == ["in_flight"]


def test_while_ingest_is_behind_fewer_requests_are_served_at_once() -> None:
    release = asyncio.Event()
    shed: list[str] = []
    behind = [False]

    inside = [0]

    async def slow(request: Request) -> PlainTextResponse:
        inside[0] += 1
        await release.wait()
        return PlainTextResponse("done")

    app = Starlette(
        routes=[Route("/v1/slow", slow)],
        middleware=[
            Middleware(
                _Shedding, limit=8, limit_behind=1, behind=lambda: behind[0], on_shed=shed.append
            )
        ],
    )

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nearline") as client:
            held = [asyncio.ensure_future(client.get("/v1/slow")) for _ in range(2)]
            await _until_inside(inside, 2)  # two in progress: fine while ingest keeps up
            behind[0] = True
            over = await client.get("/v1/slow")
            assert over.status_code == 503
            assert "NEARLINE_MAX_IN_FLIGHT_BEHIND" in over.json()["error"]
            release.set()
            statuses = [r.status_code for r in await asyncio.gather(*held)]
            alone = await client.get("/v1/slow")  # one at a time is still served
            return [*statuses, alone.status_code]

    assert asyncio.run(run()) == [200, 200, 200]
    assert shed == ["ingest_behind"]
