"""Action traffic: a seeded generator of plausible member actions, and a producer for it."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaProducer

from nearline.agents.events import ActionEvent
from nearline.foundation.kafka import client_options
from nearline.foundation.settings import Settings

__all__ = [
    "DEMO_CATALOGUE_SAMPLE",
    "DEMO_MALFORMED_EVERY",
    "DEMO_SHIFTING_MEMBER",
    "demo_records",
    "demo_traffic",
    "demo_traffic_running",
    "generate_actions",
    "produce",
    "read_jsonl",
    "shifting_interest",
]

_ACTIONS = ("view", "view", "view", "view", "click", "click", "save", "apply", "dismiss")
_CATEGORIES = ("engineering", "design", "sales", "marketing", "finance", "operations")
_COMPANIES = ("acme", "globex", "initech", "umbrella", "hooli", "stark")
#: What the member of :func:`shifting_interest` does with the category they are into now.
_ENGAGED = ("view", "click", "click", "save", "apply")

#: The demo member whose interest moves from one category to the next (see the console).
DEMO_SHIFTING_MEMBER = "member-shifting"
#: Candidates the console ranks unless told otherwise: four demo items of each category.
DEMO_CATALOGUE_SAMPLE = tuple(f"item-{n}" for n in range(4 * len(_CATEGORIES)))


def _event_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _action(event_id: str, member_id: str, item: int, action: str, ts: float) -> ActionEvent:
    return ActionEvent(
        event_id=event_id,
        member_id=member_id,
        item_id=f"item-{item}",
        action=action,
        ts=round(ts, 3),
        attributes={
            "category": _CATEGORIES[item % len(_CATEGORIES)],
            "company": _COMPANIES[item % len(_COMPANIES)],
        },
    )


def generate_actions(
    count: int | None,
    *,
    members: int = 1000,
    items: int = 5000,
    seed: int = 7,
    spread: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> Iterator[ActionEvent]:
    """``count`` actions (forever if None) by ``member-<n>`` on ``item-<n>``, event time now.

    ``spread`` > 0 back-dates events uniformly over that many seconds.
    """
    rng = random.Random(seed)
    produced = 0
    while count is None or produced < count:
        item = rng.randrange(items)
        ts = clock() - (rng.random() * spread if spread else 0.0)
        event_id = _event_id(rng)  # drawn in this order, so a seed gives the same actions
        member_id = f"member-{rng.randrange(members)}"
        yield _action(event_id, member_id, item, rng.choice(_ACTIONS), ts)
        produced += 1


def shifting_interest(
    member_id: str = DEMO_SHIFTING_MEMBER,
    *,
    phase: int = 30,
    items: int = 5000,
    seed: int = 7,
    clock: Callable[[], float] = time.time,
) -> Iterator[ActionEvent]:
    """Forever: a member into one category for ``phase`` actions, then into the next.

    In each phase they view, click, save and apply to items of the category of the
    phase, and now and then dismiss one of the category they have left: their ranking
    of a mixed catalogue follows them from one category to the next. A phase is long
    enough (30 of the 100 recent actions kept by default) that a category's dismisses
    have left the member's recent actions by the time it comes round again.
    """
    rng = random.Random(seed)
    categories = len(_CATEGORIES)
    n = 0
    while True:
        current = (n // phase) % categories
        if n >= phase and rng.random() < 0.25:
            category, action = (current - 1) % categories, "dismiss"
        else:
            category, action = current, rng.choice(_ENGAGED)
        item = rng.randrange(items // categories) * categories + category
        yield _action(_event_id(rng), member_id, item, action, clock())
        n += 1


def demo_traffic(
    count: int | None, *, members: int, every: int = 10, seed: int = 7
) -> Iterator[ActionEvent]:
    """``count`` actions (forever if None) of :func:`generate_actions`, every ``every``-th
    one by :data:`DEMO_SHIFTING_MEMBER` (:func:`shifting_interest`) instead."""
    crowd = generate_actions(None, members=members, seed=seed)
    shifting = shifting_interest(seed=seed)
    produced = 0
    while count is None or produced < count:
        produced += 1
        yield next(shifting) if produced % every == 0 else next(crowd)


#: One record in this many of :func:`demo_records` is malformed, to show the dead-letter queue.
DEMO_MALFORMED_EVERY = 500


def demo_records(count: int | None, *, members: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) records of :func:`demo_traffic`, one in :data:`DEMO_MALFORMED_EVERY`
    of them not JSON (it goes to the dead-letter topic as ``not_json``)."""
    for n, event in enumerate(demo_traffic(count, members=members), 1):
        if n % DEMO_MALFORMED_EVERY == 0:
            yield event.member_id.encode(), b"{this record is not JSON"
        else:
            yield event.member_id.encode(), event.to_json()


@contextmanager
def demo_traffic_running(settings: Settings, *, rate: float, members: int) -> Iterator[None]:
    """:func:`demo_traffic` (``members`` and the shifting one) sent at ``rate``/s by a thread
    until the block ends; a failure of the sending is raised there, not lost in the thread."""
    records = ((e.member_id.encode(), e.to_json()) for e in demo_traffic(None, members=members))
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(produce(settings, records, rate=rate, should_stop=stop.is_set))
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="demo-traffic")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    if failures:
        raise RuntimeError(f"the demo traffic failed: {failures[0]!r}") from failures[0]


def demo_items(count: int, embedding_dim: int, *, seed: int = 7) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) records for the item-attributes topic: ``item-<n>`` with the generator's
    categories and companies, an embedding clustered by category, and a city."""
    from nearline.foundation import codec

    rng = random.Random(seed)
    centres = [[rng.gauss(0, 1) for _ in range(embedding_dim)] for _ in _CATEGORIES]
    cities = [(52.37, 4.90, "amsterdam"), (51.92, 4.48, "rotterdam"), (52.09, 5.12, "utrecht")]
    for n in range(count):
        centre = centres[n % len(_CATEGORIES)]
        lat, lon, region = cities[n % len(cities)]
        item_id = f"item-{n}"
        body = {
            "item_id": item_id,
            "embedding": [round(c + rng.gauss(0, 0.5), 4) for c in centre],
            "geo": {"lat": lat, "lon": lon, "region": region},
            "attributes": {
                "category": _CATEGORIES[n % len(_CATEGORIES)],
                "company": _COMPANIES[n % len(_COMPANIES)],
            },
        }
        yield item_id.encode(), codec.dumps(body)


def read_jsonl(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs from a JSONL file of actions; the key is each line's member_id."""
    from nearline.foundation import codec

    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                member = codec.loads(line)["member_id"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(
                    f"{path}:{number}: not a JSON object with a member_id; fix or remove the line"
                ) from None
            yield str(member).encode(), line


async def produce(
    settings: Settings,
    records: Iterable[tuple[bytes, bytes]] | AsyncIterator[tuple[bytes, bytes]],
    *,
    rate: float | None = None,
    progress: object | None = None,
    topic: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Send (key, value) records to the actions topic (or ``topic``), at most ``rate``/s."""
    producer = AIOKafkaProducer(**client_options(settings, producer=True), linger_ms=5)
    await producer.start()
    sent = 0
    pending = []
    started = time.monotonic()
    try:
        iterator = records if hasattr(records, "__aiter__") else _aiter(records)  # type: ignore[arg-type]
        async for key, value in iterator:  # type: ignore[union-attr]
            if should_stop is not None and should_stop():
                break
            pending.append(await producer.send(topic or settings.topic_actions, value, key=key))
            sent += 1
            if progress is not None:
                progress.update(1)  # type: ignore[attr-defined]
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def _aiter(records: Iterable[tuple[bytes, bytes]]) -> AsyncIterator[tuple[bytes, bytes]]:
    for record in records:
        yield record
