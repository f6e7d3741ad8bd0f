"""The worker's side of the serving link: it publishes its state for ``nearline serve``.

See :mod:`nearline.foundation.serving_link` for what is published and why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from nearline.app.status import WorkerStatus
from nearline.foundation.serving_link import PublishedState, WriteCounters

__all__ = ["StatePublisher"]

log = logging.getLogger(__name__)

#: How often the state file is rewritten when nothing but lag changed.
_REWRITE_EVERY = 1.0


def _identity(db_dir: str) -> str:
    """A RocksDB's IDENTITY (a UUID written when the database is created): a directory
    deleted and created anew holds another database, though its path is the same."""
    try:
        return (Path(db_dir) / "IDENTITY").read_text().strip()
    except OSError:
        return ""


class StatePublisher:
    """Writes ``state.json`` and beats the heartbeat; :meth:`publish` runs on a timer."""

    def __init__(
        self,
        directory: Path,
        status: WorkerStatus,
        counters: WriteCounters,
        *,
        worker_url: str,
        partition_dir: Callable[[int], Path],
    ) -> None:
        self.path = directory / "state.json"
        self.status = status
        self.counters = counters
        self.worker_url = worker_url
        #: partition -> its RocksDB directory (the members table's).
        self.partition_dir = partition_dir
        self._last: PublishedState | None = None
        # Generations of a worker started again never repeat its earlier ones.
        self._generation = int(time.time() * 1000)
        self._written = 0.0

    def publish(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        status = self.status
        owned_partitions = status.owned_partitions()
        owned = {p: str(self.partition_dir(p)) for p in owned_partitions}
        health = status.attribute_health
        state = PublishedState(
            generation=self._generation,
            pid=os.getpid(),
            written_at=now,
            worker_url=self.worker_url,
            owned=owned,
            identities={p: _identity(d) for p, d in owned.items()},
            recovering=status.recovering(),
            assigning=status.assigning(),
            owners={p: status.owner_url(p) for p in range(status.partitions) if p not in owned},
            ready=status.readiness(),
            alive=status.liveness(),
            ingest_behind=status.ingest_behind(),
            attribute_health=(health.ok, health.backend, health.detail),
            lag=[
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "lag": p.lag,
                    "stalled_seconds": p.stalled_seconds,
                }
                for p in status.consumer_lag()
            ],
        )
        changed = not state.same_assignment(self._last)
        if changed:
            self._generation += 1
            state = replace(state, generation=self._generation)
        if changed or now - self._written >= _REWRITE_EVERY:
            state.write(self.path)
            self._written = now
            if changed:
                # After the file: a reader that sees the new generation finds the new state.
                self.counters.set_generation(self._generation)
                log.info(
                    "published state %d: partitions %s%s",
                    self._generation,
                    sorted(owned),
                    " (recovering)" if state.recovering else "",
                )
        self._last = state
        self.counters.beat(now)
