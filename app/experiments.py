"""The arms' results from the training-examples topic: ``nearline experiment status|promote``
and the live view of the console and /metrics (:class:`LiveResults`).

The topic holds exactly one outcome per labelled response of an arm, whatever crashed on
the way (see :mod:`nearline.agents.outcomes`), so results computed from it are exact and need no
state of their own: every worker's responses are there, and nothing is lost on a restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from nearline.app.exporting import read_topic
from nearline.foundation import codec
from nearline.foundation.metrics import ArmMetrics
from nearline.foundation.settings import Settings
from nearline.model.experiments import (
    METRICS,
    ArmSums,
    Comparison,
    Experiment,
    ExperimentError,
    ExperimentResults,
    arm_results,
    compare,
    results_of,
)
from nearline.model.registry import ModelRegistry

__all__ = ["LiveResults", "Promotion", "decide_promotion", "read_results", "status_text"]

log = logging.getLogger(__name__)

#: The live intervals are recomputed at most once a second, and at most 5 % of the time:
#: the bootstrap costs ~1 ms per thousand members.
_LIVE_MIN_WAIT = 1.0
_LIVE_SHARE = 0.05
_LIVE_DRAWS = 400
#: Example sets decoded between two yields to the event loop (~50 µs each).
_YIELD_EVERY = 100


async def read_results(
    settings: Settings, experiment: Experiment, level: float = 0.95
) -> ExperimentResults:
    """The arms' results over every example set written so far."""
    values = await read_topic(settings, settings.topic_training_examples, idle=1.0)
    sets = [found for value in values if (found := _arm_set(value)) is not None]
    return arm_results(sets, experiment, level=level)


def _arm_set(value: bytes | None) -> dict[str, Any] | None:
    """The example set in ``value`` if it carries an arm's outcome (others are not decoded)."""
    if not value or b'"experiment"' not in value:
        return None
    try:
        found = codec.loads(value)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


class LiveResults:
    """The running experiment's results as the console and /metrics show them, live.

    Follows the training-examples topic (every worker's outcomes) from its beginning while
    an experiment runs, counting only the sets of its arms, and recomputes the intervals in
    a thread when new outcomes arrived (at most once a second, and so that the bootstrap
    takes at most 5 % of the time). Rebuilt from the topic after a restart, so, like
    ``nearline experiment status``, exact; it trails labelling by a second or so.
    """

    def __init__(
        self,
        settings: Settings,
        models: ModelRegistry,
        client: Callable[[], AIOKafkaConsumer],
        on_results: Callable[[str | None, ArmMetrics], None] | None = None,
    ) -> None:
        self.topic = settings.topic_training_examples
        self.models = models
        self._new_client = client
        self._client: AIOKafkaConsumer | None = None
        self._sums: ArmSums | None = None
        self._computed_at = 0.0
        self._wait = _LIVE_MIN_WAIT
        self._changed = False
        self._on_results = on_results
        self.latest: ExperimentResults | None = None

    async def poll(self) -> None:
        """Read what arrived since the last poll; recompute the intervals when due."""
        served = self.models.experiment
        if served is None:
            if self._sums is not None and self._on_results is not None:
                self._on_results(None, {})  # the experiment ended: its figures go
            self._sums, self.latest = None, None
            return
        try:
            if self._sums is None or self._sums.experiment.id != served.experiment.id:
                self._sums = None
                if not await self._read_from_start():
                    return  # no topic yet: tried again on the next poll
                self._sums, self.latest = ArmSums(served.experiment), None
            assert self._client is not None
            fetched = await self._client.getmany(timeout_ms=0, max_records=5000)
        except KafkaError as exc:
            # Read again from the start on the next poll: the results stay exact.
            log.warning("cannot follow the experiment's outcomes (retrying): %r", exc)
            self._sums = None
            return
        decoded = 0
        for records in fetched.values():
            for record in records:
                found = _arm_set(record.value)
                if found is not None and self._sums.add(found):
                    self._changed = True
                decoded += 1
                if decoded % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # it shares the worker's loop with ingest
        now = time.monotonic()
        if self.latest is None or (self._changed and now - self._computed_at >= self._wait):
            self._changed = False
            self.latest = await asyncio.to_thread(results_of, self._sums, draws=_LIVE_DRAWS)
            self._computed_at = time.monotonic()
            self._wait = max(_LIVE_MIN_WAIT, (self._computed_at - now) / _LIVE_SHARE)
            if self._on_results is not None:
                arms = {name: arm.metrics for name, arm in self.latest.arms.items()}
                self._on_results(self.latest.experiment.id, arms)

    async def _read_from_start(self) -> bool:
        """Position the client at the topic's beginning; False if the topic does not exist."""
        if self._client is None:
            self._client = self._new_client()
            await self._client.start()
        await self._client.topics()
        partitions = self._client.partitions_for_topic(self.topic)
        if not partitions:
            return False
        self._client.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        await self._client.seek_to_beginning()
        return True

    def view(self, metric: str = "ndcg_at_10") -> dict[str, Any] | None:
        """The console's panel: the arms side by side with their intervals."""
        results = self.latest
        if results is None:
            return None
        body = results.to_dict()
        control = results.experiment.arms[0].name
        body["metric"] = metric
        body["against"] = control
        body["comparisons"] = {
            name: compare(results, metric, name, control).to_dict()
            for name in results.arms
            if name != control
        }
        return body


@dataclass(frozen=True)
class Promotion:
    """The arm that wins on ``metric`` and its differences to every other arm."""

    metric: str
    winner: str
    comparisons: tuple[Comparison, ...]

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
