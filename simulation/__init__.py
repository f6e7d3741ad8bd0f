"""`nearline simulate`: a seeded world that runs the near-real-time vs daily-batch experiment.

The runner (and with it the broker and worker machinery) is imported only when asked for,
so the world and the behaviour model (which :mod:`nearline.simulation.examples` uses too) come
without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nearline.simulation.behaviour import BehaviourModel
from nearline.simulation.world import World, WorldConfig

if TYPE_CHECKING:
    from nearline.simulation.runner import SimulationConfig, SimulationResult, simulate

__all__ = [
    "BehaviourModel",
    "SimulationConfig",
    "SimulationResult",
    "World",
    "WorldConfig",
    "simulate",
]

_RUNNER = ("SimulationConfig", "SimulationResult", "simulate")


def __getattr__(name: str) -> Any:
    if name in _RUNNER:
        from nearline.simulation import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
