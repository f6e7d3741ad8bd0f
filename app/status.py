"""What a worker says about itself: readiness, liveness, lag and its partitions.

Kubernetes' probes, the console and ``/readyz`` read it; timers keep it current
(:meth:`WorkerStatus.refresh_lag`, :meth:`WorkerStatus.check_attribute_store`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import faust

from nearline.agents.bulk import BulkChannel
from nearline.app.lag import LagMonitor, PartitionLag
from nearline.attribute_store import AttributeStore, StoreHealth
from nearline.foundation.faust_internals import recovery_completed
from nearline.foundation.metrics import Metrics
from nearline.tables.online_store import OnlineStore

__all__ = ["WorkerStatus"]

log = logging.getLogger(__name__)

#: How long the attribute store's health check may take before it counts as down.
_HEALTH_TIMEOUT = 5.0


@dataclass
class WorkerStatus:
    """Readiness and liveness of one worker, from its Faust app, lag gauges and stores."""

    faust_app: faust.App
    store: OnlineStore
    lag: LagMonitor
    #: The actions' channel: paused partitions mean ingest is behind.
    actions: BulkChannel
    attributes: AttributeStore
    metrics: Metrics
    stall_timeout: float
    rebalance_timeout: float

    def __post_init__(self) -> None:
        self.attribute_health = StoreHealth(ok=True, backend=self.attributes.backend, detail="")
        self._rebalancing_since: float | None = None
        #: The topic's partition count: what the console lists owners of.
        self.partitions = self.store.partitions

    # -- partitions --------------------------------------------------------------------

    def owned_partitions(self) -> list[int]:
        return self.store.owned_partitions()

    def owner_url(self, partition: int) -> str | None:
        return self.store.owner_url(partition)

    def assigning(self) -> bool:
        """Whether partitions are being assigned: starting, or rebalancing."""
        app = self.faust_app
        return bool(
            app.rebalancing or (not app.consumer_generation_id and not self.owned_partitions())
        )

    def recovering(self) -> bool:
        """Whether the tables are being restored from their changelogs."""
        app = self.faust_app
        return bool(app.in_recovery or not recovery_completed(app))

    # -- probes ------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """Whether to send this worker requests (Kubernetes' readiness probe), and why not."""
        app = self.faust_app
        if not app.consumer_generation_id and not self.store.owned_partitions():
            return False, "starting: waiting for partitions"
        if app.rebalancing:
            return False, "rebalancing"
        if self.recovering():
            return False, "recovering state from the changelog"
        stalled = self.stalled()
        if stalled:
            return False, stalled
        return True, "ready"

    def liveness(self) -> tuple[bool, str]:
        """Whether the worker still makes progress (Kubernetes' liveness probe), and why not.

        A restart is what mends a consumer that holds lag and applies nothing, or a worker
        stuck in a rebalance: both come back through Kafka's group protocol.
        """
        stalled = self.stalled()
        if stalled:
            return False, stalled
        since = self._rebalancing_since
        timeout = self.rebalance_timeout
        if since is not None and time.monotonic() - since > timeout:
            return False, (
                f"stalled: rebalancing for more than {timeout:.0f}s "
                "(NEARLINE_REBALANCE_TIMEOUT); restarting rejoins the group"
            )
        return True, "ok"

    def stalled(self) -> str:
        """A reason naming the stalled partitions, or ``""`` when none is."""
        timeout = self.stall_timeout
        stalled = self.lag.stalled(timeout)
        if not stalled:
            return ""
        names = ", ".join(
            f"{p.topic}[{p.partition}] (lag {p.lag}, nothing applied for {p.stalled_seconds:.0f}s)"
            for p in stalled
        )
        return f"stalled: {names}; over NEARLINE_STALL_TIMEOUT={timeout:.0f}s"

    def ingest_behind(self) -> bool:
        """Whether more actions are queued than ingest can apply (their partitions paused)."""
        return bool(self.actions.paused)

    def consumer_lag(self) -> list[PartitionLag]:
        """Lag per assigned partition of the actions and recommendations-log topics."""
        return self.lag.snapshot()

    # -- kept current by timers --------------------------------------------------------

    async def refresh_lag(self) -> None:
        """Measure lag now, and note when a rebalance began (liveness times it)."""
        if self.faust_app.rebalancing and self._rebalancing_since is None:
            self._rebalancing_since = time.monotonic()
        elif not self.faust_app.rebalancing:
            self._rebalancing_since = None
        await self.lag.refresh()

    async def check_attribute_store(self) -> None:
        """Ask the attribute store whether it is up; log a change, set its gauge.

        Takes no arguments: Faust passes its app to a timer whose function takes any.
        """
        try:
            health = await asyncio.wait_for(self.attributes.health(), _HEALTH_TIMEOUT)
        except Exception as exc:
            health = StoreHealth(False, self.attributes.backend, f"health check: {exc}")
        if health.ok != self.attribute_health.ok:
            log.warning("attribute store %s: %s", "up" if health.ok else "DOWN", health.detail)
        self.attribute_health = health
        self.metrics.attribute_store_up.labels(health.backend).set(1 if health.ok else 0)
