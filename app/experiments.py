"""``nearline experiment status|promote``: the arms' results from the training-examples topic.

The topic holds exactly one outcome per labelled response of an arm, whatever crashed on
the way (see :mod:`agents.outcomes`), so results computed from it are exact and need no
state of their own: every worker's responses are there, and nothing is lost on a restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app import codec
from app.exporting import read_topic
from app.settings import Settings
from model.experiments import (
    METRICS,
    Comparison,
    Experiment,
    ExperimentError,
    ExperimentResults,
    arm_results,
    compare,
)

__all__ = ["Promotion", "decide_promotion", "read_results", "status_text"]


async def read_results(
    settings: Settings, experiment: Experiment, level: float = 0.95
) -> ExperimentResults:
    """The arms' results over every example set written so far."""
    values = await read_topic(settings, settings.topic_training_examples, idle=1.0)
    sets = []
    for value in values:
        if b'"experiment"' not in value:  # most sets are of no arm: skip decoding them
            continue
        try:
            sets.append(codec.loads(value))
        except ValueError:
            continue
    return arm_results(sets, experiment, level=level)


@dataclass(frozen=True)
class Promotion:
    """The arm that wins on ``metric`` and its differences to every other arm."""

    metric: str
    winner: str
    comparisons: tuple[Comparison, ...]

    @property
    def decided(self) -> bool:
        return all(c.decided for c in self.comparisons)

    def refusal(self) -> str | None:
        """Why the winner cannot be promoted on this evidence, or ``None``."""
        open_ = [c for c in self.comparisons if not c.decided]
        if not open_:
            return None
        details = "; ".join(
            f"{c.arm} - {c.against} {c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]"
            for c in open_
        )
        return (
            f"the interval of the {self.metric} difference includes 0 ({details}): "
            "collect more responses or promote with --force"
        )


def decide_promotion(results: ExperimentResults, metric: str, arm: str | None = None) -> Promotion:
    """The best arm on ``metric`` (or ``arm``), compared with every other arm."""
    if metric not in METRICS:
        raise ExperimentError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
    higher_better = METRICS[metric]

    def score(name: str) -> float:
        value = results.arms[name].metrics[metric][0]
        if math.isnan(value):
            return -math.inf
        return value if higher_better else -value

    winner = arm if arm is not None else max(results.arms, key=score)
    results.experiment.arm(winner)  # an unknown arm name is an error that names the arms
    comparisons = tuple(
        compare(results, metric, winner, other) for other in results.arms if other != winner
    )
    return Promotion(metric, winner, comparisons)


def status_text(results: ExperimentResults, metric: str) -> str:
    """The arms side by side, each metric with its interval, and what deciding needs."""
    experiment = results.experiment
    state = (
        "running"
        if experiment.running
        else f"stopped{f', promoted {experiment.promoted}' if experiment.promoted else ''}"
    )
    lines = [f"experiment {experiment.id} ({state}); {results.level:.0%} intervals over members"]
    control = experiment.arms[0].name
    for name, result in results.arms.items():
        arm = result.arm
        t = result.totals
        lines.append(
            f"  {name}: {arm.version} {arm.features} {arm.share:g} | {result.members} members, "
            f"{result.responses} responses, {int(t['impressions'])} impressions, "
            f"{int(t['clicks'])} clicks, {int(t['applies'])} applies, {int(t['saves'])} saves, "
            f"{int(t['dismisses'])} dismisses, first positive at {result.mean_first_position:.2f}"
        )
        for name_, (value, low, high) in result.metrics.items():
            lines.append(f"      {name_:<13} {value:.4f} [{low:.4f}, {high:.4f}]")
    for name in results.arms:
        if name == control:
            continue
        c = compare(results, metric, name, control)
        if math.isnan(c.difference):
            verdict = "no responses yet"
        elif c.decided:
            verdict = "decided"
        elif c.more_responses is None:
            verdict = "no difference observed"
        else:
            verdict = f"~{c.more_responses} more responses to decide at this effect size"
        lines.append(
            f"  {metric} {name} - {control}: {c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]"
            f" — {verdict}"
        )
    return "\n".join(lines)
