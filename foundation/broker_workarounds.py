"""Workarounds for the embedded broker, all behind one switch: ``NEARLINE_PROFILE=embedded``.

The embedded broker speaks Kafka's protocol but departs from Kafka's behaviour in ways that
cost nearline correctness or time; against a real Kafka cluster (``production``) none of
this applies. Every place that acts differently for it asks :class:`BrokerWorkarounds`.

- **Inexact end offsets.** It reports a partition's end as "base offset of the last record
  batch + 1". Faust's recovery reads a changelog up to that end, and lag is measured
  against it. Changelog writes end with a one-record batch (an end marker), and the plain
  producers of tools send one record per batch, so that answer is exact.
- **Slow group protocol.** A JoinGroup answers after ~half the session timeout, and after a
  SIGKILL the SyncGroup waits for the dead member's session to end: short session
  timeouts let a restarted worker rejoin in seconds (10 s gave ~21 s, 6 s ~14 s).

One departure has no workaround here: it keeps every record (no retention) and a fetch walks
the partition's record batches, ~0.6 µs each (10 ms a fetch at 20k one-record batches, 69
ms at 120k). One record per batch buys exact end offsets with that cost; a producer that
needs no exact end may batch (``nearline simulate`` does), and runs of hours belong on Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nearline.foundation.settings import Settings

__all__ = ["EMBEDDED_MAX_BATCH_BYTES", "BrokerWorkarounds"]

#: A producer batch size below one record: every batch holds one record, so the embedded
#: broker's "latest offset" (last batch base + 1) is exact.
EMBEDDED_MAX_BATCH_BYTES = 16


@dataclass(frozen=True, slots=True)
class BrokerWorkarounds:
    """Whether the embedded broker's workarounds apply, and what each of them sets."""

    on: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerWorkarounds:
        return cls(on=settings.embedded)

    @property
    def end_markers(self) -> bool:
        """End each changelog write with a one-record batch (exact end offsets)."""
        return self.on

    def faust_options(self) -> dict[str, Any]:
        """Options for the Faust app: short group-protocol timeouts."""
        if not self.on:
            return {}
        return {"broker_session_timeout": 6.0, "broker_heartbeat_interval": 1.0}

    def producer_options(self) -> dict[str, Any]:
        """Options for a plain aiokafka producer: one record per batch."""
        return {"max_batch_size": EMBEDDED_MAX_BATCH_BYTES} if self.on else {}
