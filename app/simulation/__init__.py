"""`nearline simulate`: a seeded world that runs the near-real-time vs daily-batch experiment."""

from __future__ import annotations

from app.simulation.behaviour import BehaviourModel
from app.simulation.runner import SimulationConfig, SimulationResult, simulate
from app.simulation.world import World, WorldConfig

__all__ = [
    "BehaviourModel",
    "SimulationConfig",
    "SimulationResult",
    "World",
    "WorldConfig",
    "simulate",
]
