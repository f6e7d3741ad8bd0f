"""Time compression: simulated seconds <-> wall-clock seconds, and the worker settings it needs.

Events carry real wall-clock timestamps (the worker rejects events from the future and
windows by event time), so the simulation compresses time by running the *worker* on a
scaled clock instead: every duration setting is divided by the compression factor ``c``.
At ``c = 1000`` a simulated day lasts 86.4 s, the 1 h / 24 h / 96 h windows become
3.6 s / 86.4 s / 345.6 s, the 1 min count bucket 60 ms, and a batch cut-off falls every
86.4 s. The mapping is ``wall = t0 + sim / c``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nearline.simulation.world import DAY

__all__ = ["TimeScale", "seconds_setting"]

#: The worker's default durations (see the README's configuration table), in real seconds.
_WINDOWS = (3600.0, 86_400.0, 345_600.0)
_RETENTION = 345_600.0
_BUCKET = 60.0
_SWEEP = 300.0
_OUTCOME_HORIZON = 1800.0
_HALF_LIFE = 6 * 3600.0  # the vectorizer's recency half-life (NEARLINE_MODEL_HALF_LIFE)
_SHORT_WINDOW = 1800.0  # the vectorizer's short window (NEARLINE_MODEL_SHORT_WINDOW)
#: Sweeping more often than this costs CPU the simulation needs.
_MIN_SWEEP = 1.0


def seconds_setting(seconds: float) -> str:
    """A duration as a ``NEARLINE_*`` value: milliseconds with fixed decimals, never 1e-05."""
    return f"{seconds * 1000.0:.3f}ms"


@dataclass(frozen=True)
class TimeScale:
    """``compression`` simulated seconds per wall-clock second, starting at wall time ``t0``."""

    compression: float
    t0: float = 0.0

    def __post_init__(self) -> None:
        if self.compression <= 0:
            raise ValueError("compression must be positive")

    @property
    def day_wall(self) -> float:
        """Wall-clock seconds of one simulated day."""
        return DAY / self.compression

    def wall(self, sim_time: float) -> float:
        return self.t0 + sim_time / self.compression

    def sim(self, wall_time: float) -> float:
        return (wall_time - self.t0) * self.compression

    def cutoff(self, day: int) -> float:
        """The daily batch cut-off for simulated ``day``: wall time of that day's midnight."""
        return self.wall(day * DAY)

    def started_at(self, t0: float) -> TimeScale:
        return TimeScale(self.compression, t0)

    def worker_settings(self) -> dict[str, str]:
        """Scaled duration settings (lower-case names, without the ``NEARLINE_`` prefix)."""
        c = self.compression
        return {
            "windows": ",".join(seconds_setting(w / c) for w in _WINDOWS),
            "retention": seconds_setting(_RETENTION / c),
            "bucket": seconds_setting(_BUCKET / c),
            "sweep_interval": seconds_setting(max(_SWEEP / c, _MIN_SWEEP)),
            "outcome_horizon": seconds_setting(_OUTCOME_HORIZON / c),
            "model_half_life": seconds_setting(_HALF_LIFE / c),
            "model_short_window": seconds_setting(_SHORT_WINDOW / c),
        }

    def mapping_table(self) -> list[tuple[str, str, str]]:
        """(what, simulated, wall clock) rows for the report."""
        c = self.compression
        rows = [("one day (batch cut-off period)", "24 h", f"{DAY / c:.3f} s")]
        for name, real in zip(("1h", "24h", "96h"), _WINDOWS, strict=True):
            rows.append((f"window {name}", name, f"{real / c:.3f} s"))
        rows.append(("retention", "96 h", f"{_RETENTION / c:.3f} s"))
        rows.append(("count bucket", "1 min", f"{_BUCKET / c * 1000:.3f} ms"))
        rows.append(("outcome horizon", "30 min", f"{_OUTCOME_HORIZON / c:.3f} s"))
        rows.append(("recency half-life", "6 h", f"{_HALF_LIFE / c:.3f} s"))
        rows.append(("short window (session)", "30 min", f"{_SHORT_WINDOW / c:.3f} s"))
        return rows
