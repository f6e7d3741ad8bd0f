"""`nearline worker` with a fault injected by the test: ingest hangs on partition 0 of the actions.

This is how a deadlocked agent looks from outside (lag grows, nothing is applied): no real
fault in nearline does it on purpose, so the stall-detection test injects one here. Run as
``python -m tests.integration.stalling_worker worker``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from nearline.agents.ingest import BatchPlan, IngestProcessor, KafkaRecord
from nearline.cli import main

_apply = IngestProcessor.apply


async def _apply_or_hang(
    self: IngestProcessor,
    records: Sequence[KafkaRecord],
    *,
    current: Callable[[], bool] = lambda: True,
) -> tuple[BatchPlan, Awaitable[None]]:
    if any(record.partition == 0 for record in records):
        await asyncio.Event().wait()  # never set: the batch is never applied
    return await _apply(self, records, current=current)


IngestProcessor.apply = _apply_or_hang  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
