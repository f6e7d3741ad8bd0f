"""Prometheus metrics of one worker, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class PartitionLag(Protocol):
    """One assigned partition's lag, as the worker's lag monitor measures it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def lag(self) -> int: ...
    @property
    def stalled_seconds(self) -> float: ...


#: Each arm's metrics of a running experiment: name → metric → (value, low, high).
ArmMetrics = Mapping[str, Mapping[str, tuple[float, float, float]]]

__all__ = ["Metrics", "ServingMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: From an erasure's request to a store's deletion: the target is within 5 s.
_ERASURE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 30.0, 60.0)
_ERASURES_HELP = (
    "Member erasures, by outcome: requested (recorded in the erasures topic by this "
    "process's API), invalid (refused: a bad member id), applied (the member's partition "
    "erased by its owner)."
)


class _LagCollector(Collector):
    def __init__(self, read_lag: Callable[[], Iterable[PartitionLag]]) -> None:
        self._read_lag = read_lag

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "nearline_consumer_lag",
            "Records not yet applied (the broker's end offset minus the applied position), "
            "per assigned partition of the topics the worker consumes.",
            labels=["topic", "partition"],
        )
        stalled = GaugeMetricFamily(
            "nearline_partition_stalled_seconds",
            "Seconds since a record of the partition was last applied while its lag was "
            "above zero (0 without lag).",
            labels=["topic", "partition"],
        )
        for partition in self._read_lag():
            labels = [partition.topic, str(partition.partition)]
            lag.add_metric(labels, partition.lag)
            stalled.add_metric(labels, partition.stalled_seconds)
        yield lag
        yield stalled


class _ArmCounters:
    """The /metrics children of one experiment's arm."""

    def __init__(self, metrics: Metrics, experiment: str, arm: str) -> None:
        self.responses = metrics.arm_responses.labels(experiment, arm, "labelled")
        self.with_positive = metrics.arm_responses.labels(experiment, arm, "with_positive")
        self.first_positive = metrics.arm_first_positive.labels(experiment, arm)
        self.items = {
            outcome: metrics.arm_items.labels(experiment, arm, outcome)
            for outcome in ("served", "click", "apply", "save", "dismiss")
        }


class Metrics:
    """Counters the ingest path and the web app update, and the /metrics exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "nearline_events_in",
            "Action records handled (applied, dropped or dead-lettered); a repartitioned "
            "record counts when its owner handles it.",
            registry=r,
        )
        self.events_applied = Counter(
            "nearline_events_applied", "Actions applied to the online store.", registry=r
        )
        self.events_dropped = Counter(
            "nearline_events_dropped",
            "Valid actions not kept: type not of interest, replayed, duplicate, or erased "
            "(of an erased member, at or before the erasure).",
            ["reason"],
            registry=r,
        )
        self.events_repartitioned = Counter(
            "nearline_events_repartitioned",
            "Valid actions read on another partition than their key's, forwarded to the "
            "repartition topic for the partition's owner.",
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "nearline_events_dead_lettered",
            "Malformed actions sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.erasures = Counter("nearline_erasures", _ERASURES_HELP, ["outcome"], registry=r)
        self.erasure_seconds = Histogram(
            "nearline_erasure_seconds",
            "From an erasure's request to the member's data deleted from a store (online, "
            "pending: outcomes not yet labelled, attributes), by the worker that deleted it.",
            ["store"],
            buckets=_ERASURE_BUCKETS,
            registry=r,
        )
        self.members_expired = Counter(
            "nearline_members_expired", "Members deleted by the retention sweep.", registry=r
        )
        self.attribute_records = Counter(
            "nearline_attribute_records",
            "item-attributes records applied to the attribute store, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.attribute_joins = Counter(
            "nearline_attribute_joins",
            "Actions joined with item attributes at ingest, by outcome "
            "(joined, item_unknown, store_unavailable).",
            ["outcome"],
            registry=r,
        )
        self.attribute_store_up = Gauge(
            "nearline_attribute_store_up",
            "1 when the attribute store answered its last health check.",
            ["backend"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "nearline_ingest_batch_seconds",
            "Time to apply one ingest batch, up to its online-store changelog records queued "
            "(nearline_changelog_ack_seconds has the wait for their acknowledgement).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.changelog_ack_seconds = Histogram(
            "nearline_changelog_ack_seconds",
            "From a table write's last changelog record queued to the broker's acknowledgement "
            "of all of them; the writer (an ingest batch, a labelling pass) waits this long.",
            ["table"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.changelog_bytes = Counter(
            "nearline_changelog_bytes",
            "Bytes (keys and values) of the changelog records a table wrote.",
            ["table"],
            registry=r,
        )
        self.responses = Counter(
            "nearline_outcome_responses",
            "Logged responses in the outcomes join, by what happened to them (stored, "
            "labelled, already_written: labelled before a crash, unreadable, erased: of an "
            "erased member, dropped without an example).",
            ["outcome"],
            registry=r,
        )
        self.examples_written = Counter(
            "nearline_training_examples",
            "Training examples written (one per labelled candidate).",
            registry=r,
        )
        self.arm_responses = Counter(
            "nearline_experiment_responses",
            "Labelled responses of an experiment's arm (outcome=labelled), those with a "
            "positive (with_positive); this worker's share: `nearline experiment status` "
            "has every worker's, with intervals.",
            ["experiment", "arm", "outcome"],
            registry=r,
        )
        self.arm_items = Counter(
            "nearline_experiment_items",
            "Items of an arm's labelled responses: served (impressions), and the ones "
            "clicked, applied to, saved or dismissed.",
            ["experiment", "arm", "outcome"],
            registry=r,
        )
        self.arm_first_positive = Counter(
            "nearline_experiment_first_positive_position",
            "Sum of the 1-based positions of the first positive of an arm's responses that "
            "have one (divide by nearline_experiment_responses with outcome=with_positive).",
            ["experiment", "arm"],
            registry=r,
        )
        self._arms: dict[tuple[str, str], _ArmCounters] = {}
        self.arm_metrics = Gauge(
            "nearline_experiment_metric",
            "The running experiment's metrics per arm over every worker's labelled responses "
            "(bound=value, or low/high: the 95 % interval of a bootstrap over members); "
            "recomputed every few seconds.",
            ["experiment", "arm", "metric", "bound"],
            registry=r,
        )
        self.outcomes_behind = Gauge(
            "nearline_outcomes_behind_seconds",
            "Seconds since the earliest pending response was due (0 when labelling keeps up).",
            registry=r,
        )
        self.requests_shed = Counter(
            "nearline_http_requests_shed",
            "/v1 requests answered 503 at once: NEARLINE_MAX_IN_FLIGHT in progress (in_flight), "
            "or NEARLINE_MAX_IN_FLIGHT_BEHIND while ingest is behind (ingest_behind).",
            ["reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "nearline_http_request_seconds",
            "HTTP request latency.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def count_arm_outcome(self, outcome: dict[str, Any]) -> None:
        """Count one labelled response of an arm (its ``experiment`` outcome)."""
        key = (outcome["id"], outcome["arm"])
        arm = self._arms.get(key)
        if arm is None:  # labels() costs ~2 us a call: look the children up once per arm
            arm = self._arms[key] = _ArmCounters(self, *key)
        arm.responses.inc()
        arm.items["served"].inc(outcome["served"])
        for action in ("click", "apply", "save", "dismiss"):
            if outcome[action]:
                arm.items[action].inc(outcome[action])
        if outcome["positives"]:
            arm.with_positive.inc()
            arm.first_positive.inc(min(outcome["positives"]) + 1)

    def show_arm_results(self, experiment: str | None, arms: ArmMetrics) -> None:
        """Expose the arms' latest metrics and intervals (only the running experiment's:
        ``None`` when none runs)."""
        self.arm_metrics.clear()
        if experiment is None:
            return
        for arm, metrics in arms.items():
            for metric, bounds in metrics.items():
                for bound, value in zip(("value", "low", "high"), bounds, strict=True):
                    self.arm_metrics.labels(experiment, arm, metric, bound).set(value)

    def track_lag(self, read_lag: Callable[[], Iterable[PartitionLag]]) -> None:
        self.registry.register(_LagCollector(read_lag))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ServingMetrics:
    """The metrics of ``nearline serve``'s processes, summed over all of them.

    prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the
    supervisor before its children start) keeps each process's values in a file of its
    own; whichever process answers /metrics adds them all up. The HTTP families have the
    worker's names, so dashboards read them the same whoever serves.
    """

    def __init__(self) -> None:
        # Created unregistered: the multiprocess collector reads their files instead.
        self.erasures = Counter("nearline_erasures", _ERASURES_HELP, ["outcome"], registry=None)
        self.requests_shed = Counter(
            "nearline_http_requests_shed",
            "/v1 requests answered 503 at once: NEARLINE_MAX_IN_FLIGHT in progress in one "
            "serving process (in_flight).",
            ["reason"],
            registry=None,
        )
        self.request_seconds = Histogram(
            "nearline_http_request_seconds",
            "HTTP request latency, in the serving processes.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self.catch_up_seconds = Histogram(
            "nearline_serving_catch_up_seconds",
            "Time a serving process took to catch a partition's RocksDB secondary up with "
            "the worker's writes.",
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self.staleness_seconds = Gauge(
            "nearline_serving_staleness_seconds",
            "How old a serving process's view of each partition may be: 0 while it follows "
            "the worker within NEARLINE_SERVE_MAX_STALENESS; the age of its last catch-up "
            "while the worker is down or restoring the partition (the most of any process).",
            ["partition"],
            multiprocess_mode="max",
            registry=None,
        )
        self.processes = Gauge(
            "nearline_serving_processes",
            "Serving processes running (each reports 1).",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.processes.set(1)

    def exposition(self) -> bytes:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
