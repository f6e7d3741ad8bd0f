"""The console's rolling ingest window, its query helpers and the demo's shifting member."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter

from nearline.agents.ingest import SourceRecord, plan_batch
from nearline.app.compose import ingest_rules
from nearline.app.console.routes import parse_candidates, totals_by_label
from nearline.app.console.timeline import (
    FRESHNESS_EDGES,
    IngestTimeline,
    freshness_sample,
    percentile_of,
)
from nearline.app.traffic import (
    DEMO_CATALOGUE_SAMPLE,
    DEMO_MALFORMED_EVERY,
    DEMO_SHIFTING_MEMBER,
    demo_records,
    demo_traffic,
    generate_actions,
    shifting_interest,
)
from nearline.foundation.kafka import partition_for_key
from nearline.foundation.settings import load_settings

NOW = 1_800_000_000.0


def test_ingest_rate_counts_the_complete_seconds_of_the_window() -> None:
    timeline = IngestTimeline(seconds=60)
    for second in range(20):
        timeline.record(NOW - 20 + second + 0.5, 100, [])
    timeline.record(NOW + 0.2, 5000, [])  # the current second is not complete: not counted
    assert timeline.ingest_rate(NOW + 0.3, seconds=10) == 100.0
    assert timeline.ingest_rate(NOW + 0.3, seconds=20) == 100.0
    assert timeline.ingest_rate(NOW + 40, seconds=10) == 0.0  # nothing since


def test_a_slot_from_an_earlier_lap_starts_afresh() -> None:
    timeline = IngestTimeline(seconds=10)
    timeline.record(NOW, 7, [NOW - 1.0])
    timeline.record(NOW + 10, 3, [])  # same slot, ten seconds later
    assert timeline.ingest_rate(NOW + 11, seconds=1) == 3.0
    assert timeline.freshness(NOW + 11, 5)["events"] == 0


def test_freshness_percentiles_are_within_the_bucket_resolution() -> None:
    rng = np.random.default_rng(3)
    ages = rng.lognormal(mean=np.log(0.05), sigma=1.0, size=20_000)
    timeline = IngestTimeline()
    for chunk in np.array_split(ages, 100):
        timeline.record(NOW, len(chunk), (NOW - chunk).tolist())
    stats = timeline.freshness(NOW + 1, 60)
    assert stats["events"] == 20_000
    for q, key in ((0.5, "p50"), (0.99, "p99")):
        exact = float(np.quantile(ages, q))
        assert stats[key] == pytest.approx(exact, rel=0.07), key


def test_a_sample_stands_for_its_whole_batch() -> None:
    timeline = IngestTimeline()
    timeline.record(NOW, 10_000, [NOW - 0.010, NOW - 0.500], [5_000, 5_000])
    stats = timeline.freshness(NOW + 1, 60)
    assert stats["events"] == 10_000
    assert stats["p50"] == pytest.approx(0.010, rel=0.07)
    assert stats["p99"] == pytest.approx(0.500, rel=0.07)


def test_events_from_the_future_or_older_than_an_hour_land_in_the_end_buckets() -> None:
    histogram = np.zeros(len(FRESHNESS_EDGES))
    timeline = IngestTimeline()
    timeline.record(NOW, 2, [NOW + 5.0, NOW - 86_400.0])
    stats = timeline.freshness(NOW + 1, 60)
    assert stats["p50"] is not None and stats["p50"] <= 0.001
    assert stats["p99"] is not None and stats["p99"] >= FRESHNESS_EDGES[-2]
    assert percentile_of(histogram, 0.5) is None


def test_series_for_the_charts() -> None:
    timeline = IngestTimeline()
    timeline.record(NOW - 3.5, 40, [NOW - 3.6])
    timeline.record(NOW - 1.5, 20, [NOW - 1.7])
    series = timeline.series(NOW, seconds=10, step=5)
    assert series["t"][0] == int(NOW) - 10 and len(series["ingest_per_s"]) == 10
    assert series["ingest_per_s"][-4:] == [40, 0, 20, 0]  # seconds NOW-4 .. NOW-1
    assert series["freshness_p50"][0] is None
    assert series["freshness_p50"][1] == pytest.approx(0.1, rel=0.07)


def _plan(actions: int, members: int) -> object:
    settings = load_settings()
    records = [
        SourceRecord(
            partition_for_key(e.member_id.encode(), 4), n, e.member_id.encode(), e.to_json()
        )
        for n, e in enumerate(generate_actions(actions, members=members, clock=lambda: NOW))
    ]
    return plan_batch(records, ingest_rules(settings), now=NOW, partitions=4)


def test_a_batch_is_sampled_by_member_and_the_weights_add_up() -> None:
    plan = _plan(20_000, 10_000)
    valid = sum(len(events) for events in plan.by_member.values())  # type: ignore[attr-defined]
    times, weights = freshness_sample(plan, members=256, per_member=4)  # type: ignore[arg-type]
    assert len(times) == len(weights) <= 256 * 4 and set(times) == {NOW}
    # Every 39th member stands for 39: the weights estimate the batch's size.
    assert sum(weights) == pytest.approx(valid, rel=0.1)
    hot = _plan(2000, 1)  # one member with every event: 4 of them, each worth 500
    times, weights = freshness_sample(hot)  # type: ignore[arg-type]
    assert len(times) == 4 and sum(weights) == pytest.approx(2000)


def test_a_small_batch_is_measured_whole_and_its_members_remembered() -> None:
    small = _plan(10, 3)
    times, weights = freshness_sample(small)  # type: ignore[arg-type]
    valid = sum(len(events) for events in small.by_member.values())  # type: ignore[attr-defined]
    assert sum(weights) == valid and len(times) <= valid
    timeline = IngestTimeline(recent_members=5)
    timeline.record_batch(NOW + 0.02, 10, small)  # type: ignore[arg-type]
    assert timeline.ingest_rate(NOW + 1.5, seconds=1) == 10.0
    stats = timeline.freshness(NOW + 1, 60)
    assert stats["events"] == valid
    assert stats["p50"] == pytest.approx(0.02, rel=0.07)
    assert sorted(timeline.recent_members()) == sorted(
        key.decode()
        for _, key in small.by_member  # type: ignore[attr-defined]
    )


def test_recent_members_newest_first_and_bounded() -> None:
    timeline = IngestTimeline(recent_members=3)
    timeline.saw_members(NOW, ["a", "b", "c"])
    timeline.saw_members(NOW + 1, ["d", "a"])
    assert timeline.recent_members() == ["a", "d", "c"]


def test_candidates_from_the_query_string() -> None:
    assert parse_candidates(None) == list(DEMO_CATALOGUE_SAMPLE)
    assert parse_candidates(" item-1, item-2,,item-3 ") == ["item-1", "item-2", "item-3"]
    assert parse_candidates(" , ") == list(DEMO_CATALOGUE_SAMPLE)


def test_totals_by_label() -> None:
    counter = Counter("x_things", "things", ["reason"], registry=CollectorRegistry())
    counter.labels("not_json").inc(3)
    counter.labels("oversized").inc()
    assert totals_by_label(counter) == {"not_json": 3.0, "oversized": 1.0}


def test_the_shifting_member_moves_from_category_to_category() -> None:
    actions = list(islice(shifting_interest(phase=20, clock=lambda: NOW), 60))

    def categories(phase: int, dismissed: bool) -> set[str]:
        chunk = actions[phase * 20 : (phase + 1) * 20]
        return {a.attributes["category"] for a in chunk if (a.action == "dismiss") == dismissed}

    assert categories(0, False) == {"engineering"} and categories(0, True) == set()
    assert categories(1, False) == {"design"} and categories(1, True) == {"engineering"}
    assert categories(2, False) == {"sales"} and categories(2, True) == {"design"}
    order = ["engineering", "design", "sales"]
    assert all(
        int(a.item_id.split("-")[1]) % 6 == order.index(a.attributes["category"]) for a in actions
    )


def test_demo_traffic_mixes_in_the_shifting_member() -> None:
    members = [a.member_id for a in demo_traffic(100, members=20, every=10)]
    assert len(members) == 100
    assert members.count(DEMO_SHIFTING_MEMBER) == 10
    assert all(m == DEMO_SHIFTING_MEMBER for m in members[9::10])


def test_demo_records_include_a_malformed_one_now_and_then() -> None:
    records = list(demo_records(2 * DEMO_MALFORMED_EVERY, members=20))
    bad = [n for n, (_, value) in enumerate(records, 1) if not value.startswith(b'{"')]
    assert bad == [DEMO_MALFORMED_EVERY, 2 * DEMO_MALFORMED_EVERY]
