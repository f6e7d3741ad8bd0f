"""Prometheus metrics of one worker, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _LagCollector(Collector):
    def __init__(self, read_lag: Callable[[], dict[int, int]]) -> None:
        self._read_lag = read_lag

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "nearline_consumer_lag",
            "Records in member-actions not yet applied, per assigned partition.",
            labels=["partition"],
        )
        for partition, lag in sorted(self._read_lag().items()):
            family.add_metric([str(partition)], lag)
        yield family


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
            "Valid actions not kept: type not of interest, replayed or duplicate.",
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
            "Time to apply one ingest batch, changelog included.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "nearline_http_request_seconds",
            "HTTP request latency.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def track_lag(self, read_lag: Callable[[], dict[int, int]]) -> None:
        self.registry.register(_LagCollector(read_lag))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
