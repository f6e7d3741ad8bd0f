"""Online experiments: arms, stable assignment, the definition workers follow, per-arm results.

An experiment splits members between two or more arms. An arm is a ranker (a model version
or ``heuristic-v1``) and a feature mode: ``fresh`` (the member's features now) or ``daily``
(as of the previous midnight UTC, as a daily batch would have them; an experiment may
define its day otherwise, see :attr:`Experiment.day_length`). A member's arm is a
stable hash of (experiment id, member id), so every worker and serving process puts a
member in the same arm on every request, with no state to share.

The definition is ``nearline-experiment.json`` in the model directory, next to the active
file, and followed the same way: every worker and serving process rereads it within
NEARLINE_MODEL_RELOAD_INTERVAL (:meth:`nearline.model.registry.ModelRegistry.maybe_reload`). One
experiment runs at a time; a second is refused until the first is stopped or promoted.

Every logged response names its experiment and arm, and the outcomes join adds the
response's outcome (:func:`response_outcome`) to its example set, so the training-examples
topic holds exactly one outcome per response of an arm, across crashes too (see
:mod:`nearline.agents.outcomes`). :func:`arm_results` computes the arms' metrics from there, with
intervals from a bootstrap over members: one member's responses are not independent.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import orjson

from nearline.model.exceptions import ModelError

__all__ = [
    "EXPERIMENT_FILE",
    "METRICS",
    "Arm",
    "ArmResult",
    "ArmSums",
    "Assigner",
    "Comparison",
    "Experiment",
    "ExperimentError",
    "ExperimentResults",
    "arm_results",
    "compare",
    "daily_cutoff",
    "parse_arm",
    "read_experiment",
    "response_outcome",
    "results_of",
]

EXPERIMENT_FILE = "nearline-experiment.json"
FeatureMode = Literal["fresh", "daily"]
_FEATURE_MODES = ("fresh", "daily")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DAY = 86_400.0
_SHARE_TOLERANCE = 1e-6
_K = 10
#: The metrics of an arm, and whether higher is better.
METRICS: dict[str, bool] = {
    "ndcg_at_10": True,
    "mrr": True,
    "positive_rate": True,
    "dismiss_rate": False,
}
_POSITIVE = frozenset({"apply", "click", "save"})
_COUNTED = ("apply", "click", "save", "dismiss")


class ExperimentError(ModelError):
    """An experiment cannot be started, read or decided as asked; the message says why."""


def daily_cutoff(now: float, origin: float = 0.0, length: float = _DAY) -> float:
    """The start of the day ``now`` is in: what a daily batch run then would have seen.

    By default the previous midnight UTC; days of ``length`` seconds from ``origin`` (a
    Unix time a day starts at) otherwise, as a simulation with a compressed clock has them.
    """
    return now - (now - origin) % length


@dataclass(frozen=True)
class Arm:
    """One arm: who ranks (a model version or ``heuristic-v1``), on which features, for
    which share of the members."""

    name: str
    version: str
    features: FeatureMode
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "features": self.features,
            "share": self.share,
        }


def parse_arm(text: str) -> Arm:
    """``NAME:VERSION:FEATURES:SHARE``, e.g. ``control:heuristic-v1:fresh:0.5``."""
    parts = text.split(":")
    if len(parts) != 4:
        raise ExperimentError(
            f"arm {text!r}: expected NAME:VERSION:FEATURES:SHARE, "
            "e.g. control:heuristic-v1:fresh:0.5"
        )
    name, version, features, share = parts
    try:
        value = float(share)
    except ValueError:
        raise ExperimentError(f"arm {text!r}: share {share!r} is not a number") from None
    if features not in _FEATURE_MODES:
        raise ExperimentError(f"arm {text!r}: features must be fresh or daily, not {features!r}")
    return Arm(name, version, features, value)  # type: ignore[arg-type]  # checked above


@dataclass(frozen=True)
class Experiment:
    """An experiment's definition and state, as ``nearline-experiment.json`` holds it."""

    id: str
    arms: tuple[Arm, ...]
    started_at: float = field(default_factory=time.time)
    stopped_at: float | None = None
    promoted: str | None = None  # the arm made the default when the experiment ended
    #: A "daily" arm's day: ``day_length`` seconds from ``day_origin`` (a Unix time a day
    #: starts at). Production keeps midnight UTC (0, 86400); ``nearline simulate`` sets its
    #: compressed clock's day, so a daily arm reads as of the last simulated midnight.
    day_origin: float = 0.0
    day_length: float = _DAY

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def cutoff(self, now: float) -> float:
        """A "daily" arm's features-as-of time for a request at ``now``."""
        return daily_cutoff(now, self.day_origin, self.day_length)

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ExperimentError(
            f"experiment {self.id} has no arm {name!r} (arms: "
            f"{', '.join(a.name for a in self.arms)})"
        )

    def check(self) -> None:
        """Refuse a definition no worker could serve as meant."""
        if not _NAME.match(self.id):
            raise ExperimentError(f"experiment id {self.id!r} must match {_NAME.pattern}")
        if len(self.arms) < 2:
            raise ExperimentError("an experiment needs at least two arms")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ExperimentError(f"arm names must differ: {', '.join(names)}")
        for arm in self.arms:
            if not _NAME.match(arm.name):
                raise ExperimentError(f"arm name {arm.name!r} must match {_NAME.pattern}")
            if arm.features not in _FEATURE_MODES:
                raise ExperimentError(f"arm {arm.name}: features must be fresh or daily")
            if not 0.0 < arm.share <= 1.0:
                raise ExperimentError(f"arm {arm.name}: share {arm.share} must be in (0, 1]")
        if not (math.isfinite(self.day_origin) and math.isfinite(self.day_length)):
            raise ExperimentError("day_origin and day_length must be finite")
        if self.day_length <= 0.0:
            raise ExperimentError(f"day_length {self.day_length} must be positive")
        total = sum(arm.share for arm in self.arms)
        if abs(total - 1.0) > _SHARE_TOLERANCE:
            raise ExperimentError(f"the arms' shares sum to {total:g}, not 1")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "arms": [arm.to_dict() for arm in self.arms],
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "promoted": self.promoted,
            "day_origin": self.day_origin,
            "day_length": self.day_length,
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Experiment:
        arms = tuple(
            Arm(str(a["name"]), str(a["version"]), a["features"], float(a["share"]))
            for a in body["arms"]
        )
        stopped = body.get("stopped_at")
        return cls(
            id=str(body["id"]),
            arms=arms,
            started_at=float(body["started_at"]),
            stopped_at=None if stopped is None else float(stopped),
            promoted=body.get("promoted"),
            day_origin=float(body.get("day_origin", 0.0)),
            day_length=float(body.get("day_length", _DAY)),
        )


def read_experiment(model_dir: Path) -> Experiment | None:
    """The experiment of ``model_dir`` (running or the last one stopped), if any."""
    path = model_dir / EXPERIMENT_FILE
    try:
        experiment = Experiment.from_dict(orjson.loads(path.read_bytes()))
        experiment.check()
        return experiment
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ExperimentError(f"cannot read {path}: {exc}") from exc


class Assigner:
    """A member's arm: blake2b of (experiment id, member id) as a number in [0, 2^64),
    against the arms' cumulative shares. About 1 us per member (``python -m bench.experiments``).
    """

    def __init__(self, experiment: Experiment) -> None:
        self._salted = hashlib.blake2b(experiment.id.encode() + b"\0", digest_size=8)
        cumulative = np.cumsum([arm.share for arm in experiment.arms])[:-1]
        self._bounds = [int(share * 2**64) for share in cumulative]

    def index(self, member_id: str) -> int:
        """The index of the member's arm."""
        hasher = self._salted.copy()
        hasher.update(member_id.encode())
        return bisect.bisect_right(self._bounds, int.from_bytes(hasher.digest(), "big"))


# -- outcomes --------------------------------------------------------------------------------


def response_outcome(ranked: Sequence[str], reactions: Mapping[str, set[str]]) -> dict[str, Any]:
    """What the member did with one response: per action, the items reacted to that way,
    and the 0-based positions of the positives (a click, apply or save) in the served order.
    """
    counts = dict.fromkeys(_COUNTED, 0)
    positions = []
    for n, item in enumerate(ranked):
        actions = reactions.get(item)
        if actions:
            for action in actions:
                if action in counts:
                    counts[action] += 1
            if not _POSITIVE.isdisjoint(actions):
                positions.append(n)
    return {"served": len(ranked), **counts, "positives": positions}


def _ndcg_and_rr(positions: Sequence[int]) -> tuple[float, float]:
    """NDCG@10 (binary gains) and reciprocal rank of one response; 0 without a positive, so
    an arm whose responses get fewer positives scores lower (unlike offline evaluation,
    which leaves such requests out)."""
    if not positions:
        return 0.0, 0.0
    dcg = sum(1.0 / math.log2(p + 2) for p in positions if p < _K)
    ideal = sum(1.0 / math.log2(n + 2) for n in range(min(len(positions), _K)))
    return dcg / ideal, 1.0 / (min(positions) + 1)


#: Per-member sums, in this order, from which every metric is a ratio.
_COLUMNS = (
    "responses",
    "impressions",
    "clicks",
    "applies",
    "saves",
    "dismisses",
    "positives",
    "ndcg",
    "rr",
    "with_positive",
    "first_position",
)
_RATIOS = {
    "ndcg_at_10": ("ndcg", "responses"),
    "mrr": ("rr", "responses"),
    "positive_rate": ("positives", "impressions"),
    "dismiss_rate": ("dismisses", "impressions"),
}


@dataclass(frozen=True)
class ArmResult:
    """One arm's totals, its metrics with their intervals, and the bootstrap draws."""

    arm: Arm
    members: int
    totals: dict[str, float]
    metrics: dict[str, tuple[float, float, float]]  # value, low, high
    draws: dict[str, np.ndarray]

    @property
    def responses(self) -> int:
        return int(self.totals["responses"])

    @property
    def mean_first_position(self) -> float:
        """Mean 1-based position of the first positive, over responses with one."""
        with_positive = self.totals["with_positive"]
        return self.totals["first_position"] / with_positive + 1 if with_positive else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm.to_dict(),
            "members": self.members,
            "totals": {k: round(v, 6) for k, v in self.totals.items()},
            "first_positive_position": self.mean_first_position,
            "metrics": {
                name: {"value": v, "low": lo, "high": hi}
                for name, (v, lo, hi) in self.metrics.items()
            },
        }


@dataclass(frozen=True)
class Comparison:
    """One metric of arm ``arm`` minus arm ``against``, its interval and what deciding needs."""

    metric: str
    arm: str
    against: str
    difference: float
    low: float
    high: float
    more_responses: int | None  # None: no effect observed, no sample size decides it

    @property
    def decided(self) -> bool:
        return not self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "decided": self.decided}


@dataclass(frozen=True)
class ExperimentResults:
    """Every arm's results, and the level and power the comparisons use."""

    experiment: Experiment
    arms: dict[str, ArmResult]
    level: float
    power: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment.to_dict(),
            "level": self.level,
            "arms": {name: result.to_dict() for name, result in self.arms.items()},
        }


class ArmSums:
    """Per arm, per member, the sums of :data:`_COLUMNS`, fed one example set at a time;
    a request id seen before is not counted again."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self._seen: set[str] = set()
        self._members: dict[str, dict[str, list[float]]] = {a.name: {} for a in experiment.arms}

    def add(self, example_set: Mapping[str, Any]) -> bool:
        """Count the outcome of ``example_set`` if it is one of this experiment's arms'."""
        outcome = example_set.get("experiment")
        if not outcome or outcome.get("id") != self.experiment.id:
            return False
        request_id = example_set["request_id"]
        members = self._members.get(outcome["arm"])
        if members is None or request_id in self._seen:
            return False
        self._seen.add(request_id)
        positions = outcome["positives"]
        ndcg, rr = _ndcg_and_rr(positions)
        row = (
            1.0,
            outcome["served"],
            outcome["click"],
            outcome["apply"],
            outcome["save"],
            outcome["dismiss"],
            len(positions),
            ndcg,
            rr,
            1.0 if positions else 0.0,
            min(positions) if positions else 0.0,
        )
        sums = members.setdefault(str(example_set["member_id"]), [0.0] * len(_COLUMNS))
        for n, value in enumerate(row):
            sums[n] += value
        return True

    def matrices(self) -> dict[str, np.ndarray]:
        """Per arm, one row of sums per member, in member id order: the bootstrap then
        draws the same members whatever order the topic's partitions were read in."""
        return {
            arm: np.asarray(
                [members[member] for member in sorted(members)], dtype=np.float64
            ).reshape(len(members), len(_COLUMNS))
            for arm, members in self._members.items()
        }


def _ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> Any:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.divide(numerator, denominator)


def arm_results(
    example_sets: Iterable[Mapping[str, Any]],
    experiment: Experiment,
    *,
    level: float = 0.95,
    power: float = 0.8,
    draws: int = 1000,
    seed: int = 0,
) -> ExperimentResults:
    """Every arm's totals and metrics, with ``level`` intervals from a bootstrap over members.

    Members are resampled with replacement, all their responses with them, and each metric
    recomputed as a ratio of sums: the interval reflects that one member's responses are
    correlated. (The promotion gate's bootstrap, :func:`nearline.model.gate.paired_bootstrap`, pairs
    two rankers on the same requests; arms serve different members, so it does not apply.)
    """
    sums = ArmSums(experiment)
    for example_set in example_sets:
        sums.add(example_set)
    return results_of(sums, level=level, power=power, draws=draws, seed=seed)


def results_of(
    sums: ArmSums, *, level: float = 0.95, power: float = 0.8, draws: int = 1000, seed: int = 0
) -> ExperimentResults:
    """:func:`arm_results` of the example sets ``sums`` has counted."""
    experiment = sums.experiment
    rng = np.random.default_rng(seed)
    tail = (1.0 - level) / 2.0 * 100.0
    arms: dict[str, ArmResult] = {}
    for arm_name, matrix in sums.matrices().items():
        n = len(matrix)
        totals = dict(zip(_COLUMNS, matrix.sum(axis=0).tolist(), strict=True))
        resampled: list[np.ndarray] = []
        for start in range(0, draws if n else 0, 100):  # 100 draws at a time bound the memory
            picks = rng.integers(0, n, (min(100, draws - start), n))
            resampled.append(matrix[picks].sum(axis=1))
        drawn = np.concatenate(resampled) if resampled else np.zeros((0, len(_COLUMNS)))
        metrics: dict[str, tuple[float, float, float]] = {}
        metric_draws: dict[str, np.ndarray] = {}
        for metric, (top, bottom) in _RATIOS.items():
            value = float(_ratio(totals[top], totals[bottom])) if totals[bottom] else math.nan
            values = _ratio(drawn[:, _COLUMNS.index(top)], drawn[:, _COLUMNS.index(bottom)])
            values = values[~np.isnan(values)]
            low, high = (
                (float(v) for v in np.percentile(values, [tail, 100.0 - tail]))
                if len(values)
                else (math.nan, math.nan)
            )
            metrics[metric] = (value, low, high)
            metric_draws[metric] = values
        arms[arm_name] = ArmResult(experiment.arm(arm_name), n, totals, metrics, metric_draws)
    return ExperimentResults(experiment, arms, level, power)


def compare(results: ExperimentResults, metric: str, arm: str, against: str) -> Comparison:
    """``metric`` of ``arm`` minus ``against``: the interval of the difference from the arms'
    independent bootstrap draws, and how many more responses (both arms together, split as
    now) the observed effect would need for the interval to exclude 0 at the results'
    level with the results' power, from the observed spread."""
    if metric not in METRICS:
        raise ExperimentError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
    ours, theirs = results.arms[arm], results.arms[against]
    difference = ours.metrics[metric][0] - theirs.metrics[metric][0]
    a, b = ours.draws[metric], theirs.draws[metric]
    size = min(len(a), len(b))
    if size == 0 or math.isnan(difference):
        return Comparison(metric, arm, against, math.nan, math.nan, math.nan, None)
    spread = a[:size] - b[:size]
    tail = (1.0 - results.level) / 2.0 * 100.0
    low, high = (float(v) for v in np.percentile(spread, [tail, 100.0 - tail]))
    more: int | None = None
    error = float(np.std(spread))
    if difference != 0.0:
        normal = NormalDist()
        z = normal.inv_cdf(1.0 - (1.0 - results.level) / 2.0) + normal.inv_cdf(results.power)
        responses = ours.responses + theirs.responses
        # The standard error shrinks as 1/sqrt(responses): solve for error * z = |difference|.
        needed = responses * (error * z / abs(difference)) ** 2
        more = max(0, math.ceil(needed - responses))
    return Comparison(metric, arm, against, difference, low, high, more)
