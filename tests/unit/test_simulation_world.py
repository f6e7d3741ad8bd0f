"""The simulation's world, behaviour model, time scale and statistics: pure, no processes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nearline.attribute_store import validate_item
from nearline.foundation.settings import load_settings
from nearline.simulation.behaviour import BehaviourModel
from nearline.simulation.runner import IngestWatch, SessionRecord
from nearline.simulation.statistics import compare, experiment_table, permutation_p_values
from nearline.simulation.timescale import TimeScale
from nearline.simulation.world import ARMS, DAY, World, WorldConfig, arm_of, experiment

SMALL = WorldConfig(seed=11, members=40, items=300, days=2, warmup_days=1, candidates=30)


def _session_reactions(world: World, behaviour: BehaviourModel) -> list[tuple[str, ...]]:
    out = []
    for session in world.sessions[:60]:
        shown = list(session.candidates[:10])
        outcome = behaviour.react(world, session.member, session.index, session.sim_time, shown)
        out.append(tuple(f"{r.item}:{r.action}:{r.rank}" for r in outcome.reactions))
    return out


def test_world_is_a_function_of_its_config() -> None:
    a, b = World(SMALL), World(SMALL)
    assert np.array_equal(a.item_embedding, b.item_embedding)
    assert [a.item_record(i) for i in range(20)] == [b.item_record(i) for i in range(20)]
    assert a.sessions == b.sessions
    assert a.member_arm == b.member_arm
    assert [a.changes(m) for m in range(SMALL.members)] == [
        b.changes(m) for m in range(SMALL.members)
    ]
    other = World(dataclasses.replace(SMALL, seed=12))
    assert not np.array_equal(a.item_embedding, other.item_embedding)
    assert a.sessions != other.sessions


def test_behaviour_is_deterministic_and_independent_of_call_order() -> None:
    world = World(SMALL)
    behaviour = BehaviourModel()
    first = _session_reactions(world, behaviour)
    # A fresh world queried in reverse order gives the same reactions session by session.
    again = World(SMALL)
    reversed_sessions = list(reversed(again.sessions[:60]))
    backwards = [
        tuple(
            f"{r.item}:{r.action}:{r.rank}"
            for r in behaviour.react(
                again, s.member, s.index, s.sim_time, list(s.candidates[:10])
            ).reactions
        )
        for s in reversed_sessions
    ]
    assert first == list(reversed(backwards))
    assert any(first), "sixty sessions produced no reaction at all"


def test_items_are_valid_item_attributes_records() -> None:
    world = World(SMALL)
    for i in range(0, SMALL.items, 37):
        record = world.item_record(i)
        item = validate_item(record, SMALL.embedding_dim)
        assert item.item_id == f"job-{i}"
        assert item.geo is not None and item.geo.region
        assert set(item.attributes) == {"category", "company"}


def test_without_drift_a_member_never_changes() -> None:
    world = World(dataclasses.replace(SMALL, focus_changes_per_day=0.0, moves_per_day=0.0))
    for member in range(SMALL.members):
        assert world.changes(member) == []
        start, end = world.state(member, 0.0), world.state(member, SMALL.total_days * DAY)
        assert (start.topic, start.city) == (end.topic, end.city)
        assert np.array_equal(start.interest, end.interest)


def test_drift_changes_focus_and_city_at_the_recorded_times() -> None:
    world = World(dataclasses.replace(SMALL, focus_changes_per_day=1.0, moves_per_day=0.5))
    moved = focused = 0
    for member in range(SMALL.members):
        for sim_time, kind, value in world.changes(member):
            before, after = world.state(member, sim_time - 1.0), world.state(member, sim_time)
            if kind == "focus":
                focused += 1
                assert after.topic == value != before.topic
                assert not np.array_equal(before.interest, after.interest)
            else:
                moved += 1
                assert after.city == value != before.city
    assert focused > SMALL.members and moved > 0


def test_sessions_are_in_time_order_with_distinct_candidates() -> None:
    world = World(SMALL)
    times = [s.sim_time for s in world.sessions]
    assert times == sorted(times)
    assert all(0 <= t < SMALL.total_days * DAY for t in times)
    assert all(len(set(s.candidates)) == SMALL.candidates for s in world.sessions)
    per_member_day = len(world.sessions) / (SMALL.members * SMALL.total_days)
    assert 2.5 < per_member_day < 5.5  # Poisson(4) on average


def test_arms_split_by_a_seeded_hash() -> None:
    arms = [arm_of(f"member-{m}", 7) for m in range(2000)]
    assert 900 < arms.count("nrt") < 1100
    assert arms == [arm_of(f"member-{m}", 7) for m in range(2000)]
    assert arms != [arm_of(f"member-{m}", 8) for m in range(2000)]


def test_good_matches_are_clicked_and_poor_ones_dismissed() -> None:
    behaviour = BehaviourModel()
    dismiss, click = behaviour.probabilities(np.array([-3.0, 0.0, 3.0]))
    assert dismiss[0] > dismiss[1] > dismiss[2]
    assert click[0] < click[1] < click[2]
    assert np.all(dismiss + click <= 1.0)
    world = World(SMALL)
    state = world.state(0, 0.0)
    affinity = behaviour.affinity(world, state, np.arange(SMALL.items))
    own = (world.item_topic == state.topic) & (world.item_city == state.city)
    assert affinity[own].mean() > affinity[~own].mean() + 1.0


def test_behaviour_rejects_impossible_probabilities() -> None:
    with pytest.raises(ValueError, match="dismiss_max"):
        BehaviourModel(dismiss_max=0.7, click_max=0.5)
    with pytest.raises(ValueError, match="examine_decay"):
        BehaviourModel(examine_decay=1.5)
    with pytest.raises(ValueError, match="members"):
        WorldConfig(members=1)


def test_time_scale_settings_are_accepted_by_the_worker_settings() -> None:
    scale = TimeScale(1000.0, t0=1_000_000.0)
    assert scale.day_wall == pytest.approx(86.4)
    assert scale.cutoff(2) == pytest.approx(1_000_000.0 + 2 * 86.4)
    assert scale.sim(scale.wall(12_345.0)) == pytest.approx(12_345.0)
    settings = load_settings(**scale.worker_settings())
    assert settings.windows == pytest.approx([3.6, 86.4, 345.6])
    assert settings.retention == pytest.approx(345.6)
    assert settings.bucket == pytest.approx(0.06)


def _records(rates: dict[str, float], members: int, seed: int) -> list[SessionRecord]:
    """Sessions whose dismiss probability per impression depends only on the arm."""
    rng = np.random.default_rng(seed)
    out = []
    index = 0
    for member in range(members):
        arm = "nrt" if member % 2 else "batch"
        base = rates[arm] * rng.uniform(0.7, 1.3)  # members differ
        for _ in range(12):
            dismisses = int(rng.binomial(10, base))
            out.append(
                SessionRecord(
                    session=index,
                    member=member,
                    arm=arm,  # type: ignore[arg-type]
                    day=1,
                    measured=True,
                    impressions=10,
                    views=8,
                    clicks=int(rng.binomial(1, 0.5)),
                    applies=0,
                    saves=0,
                    dismisses=dismisses,
                    engaged=bool(rng.binomial(1, 0.5)),
                    latency_s=0.01,
                    late_s=0.0,
                    model_version="heuristic-v1",
                )
            )
            index += 1
    return out


def test_statistics_find_a_planted_effect_and_no_effect_where_there_is_none() -> None:
    planted = _records({"nrt": 0.16, "batch": 0.20}, members=200, seed=1)
    result = compare(planted, seed=1)
    assert result.difference["dismiss_rate"].high < 0
    assert result.relative["dismiss_rate"].contains(-0.2)
    assert permutation_p_values(planted, seed=1)["dismiss_rate"] < 0.01

    misses = 0
    for seed in range(20):
        null = _records({"nrt": 0.2, "batch": 0.2}, members=60, seed=100 + seed)
        misses += not compare(null, seed=seed).difference["dismiss_rate"].contains(0.0)
    assert misses <= 4  # ~1 expected at 95 %; 5+ of 20 would mean the intervals are too narrow


def test_the_examples_extras_leave_the_rest_of_the_world_alone() -> None:
    plain = World(SMALL)
    rich = World(dataclasses.replace(SMALL, popularity=True, category_blur=0.3))
    assert np.array_equal(plain.item_embedding, rich.item_embedding)
    assert plain.sessions == rich.sessions
    assert [plain.changes(m) for m in range(5)] == [rich.changes(m) for m in range(5)]
    assert plain.item_popularity is None and rich.item_popularity is not None
    assert np.array_equal(plain.item_category, plain.item_topic)
    assert 0.15 < np.mean(rich.item_category != rich.item_topic) < 0.4
    assert "popularity" not in plain.item_record(0)["attributes"]
    assert rich.item_categorical(0)["popularity"] == pytest.approx(rich.item_popularity[0])
    # Zero weights leave the affinity exactly the simulator's; a disliked topic lowers it.
    state = rich.state(0, 0.0)
    items = np.arange(SMALL.items)
    base = BehaviourModel().affinity(rich, state, items)
    weighted = BehaviourModel(dislike_weight=2.0, popularity_weight=0.4, distance_weight=0.6)
    assert np.array_equal(base, BehaviourModel().affinity(plain, plain.state(0, 0.0), items))
    disliked = rich.item_topic == state.dislike
    assert weighted.affinity(rich, state, items)[disliked].mean() < base[disliked].mean() - 1.5


def test_a_topic_aware_history_favours_the_members_topic() -> None:
    world = World(SMALL)
    behaviour = BehaviourModel()
    rng = np.random.default_rng(0)
    state = world.state(3, DAY)
    items = world.sample_items(3, DAY, 400, rng)
    assert np.mean(world.item_topic[items] == state.topic) > 0.45
    assert np.mean(world.item_topic[items] == state.dislike) > 0.15
    events = behaviour.history(world, 3, items, np.full(len(items), DAY), rng)
    assert {r.rank for r in events if r.action == "view"} == set(range(len(items)))
    engaged = [r.item for r in events if r.action == "click"]
    dismissed = [r.item for r in events if r.action == "dismiss"]
    assert np.mean(world.item_topic[engaged] == state.topic) > np.mean(
        world.item_topic[dismissed] == state.topic
    )


def test_the_reports_arm_figures_are_the_experiment_machinerys() -> None:
    """The simulator's experiment assigns as the worker does, and the report's table is
    ``nearline experiment status``'s computation (nearline.model.experiments), not a second one."""
    from nearline.model.experiments import Assigner, arm_results
    from nearline.model.experiments import compare as compare_arms

    started = experiment(5, day_origin=1000.0, day_length=43.2)
    assigner = Assigner(started)
    members = [f"member-{m}" for m in range(200)]
    assert [arm_of(m, 5) for m in members] == [ARMS[assigner.index(m)] for m in members]
    assert started.cutoff(1000.0 + 43.2 * 3 + 1.0) == pytest.approx(1000.0 + 43.2 * 3)
    rng = np.random.default_rng(0)
    sets = []
    for n in range(600):
        member = members[n % len(members)]
        dismissed = int(rng.integers(0, 4 if arm_of(member, 5) == "batch" else 2))
        sets.append(
            {
                "request_id": f"r{n}",
                "member_id": member,
                "experiment": {
                    "id": started.id,
                    "arm": arm_of(member, 5),
                    "served": 10,
                    "click": 1,
                    "apply": 0,
                    "save": 0,
                    "dismiss": dismissed,
                    "positives": [int(rng.integers(0, 10))],
                },
            }
        )
    results = arm_results(sets, started)
    table = experiment_table(results)
    assert set(table) == {"dismiss_rate", "positive_rate", "ndcg_at_10", "mrr"}
    nrt, batch, diff, relative = table["dismiss_rate"]
    assert (nrt.value, nrt.low, nrt.high) == results.arms["nrt"].metrics["dismiss_rate"]
    assert (batch.value, batch.low, batch.high) == results.arms["batch"].metrics["dismiss_rate"]
    machinery = compare_arms(results, "dismiss_rate", "nrt", "batch")
    assert (diff.value, diff.low, diff.high) == (
        machinery.difference,
        machinery.low,
        machinery.high,
    )
    assert diff.high < 0  # 0.05 vs 0.15 dismissed per served item
    assert relative.value == pytest.approx(nrt.value / batch.value - 1.0)


def test_the_ingest_watch_measures_how_long_the_oldest_unread_action_waited() -> None:
    produced = [0]
    watch = IngestWatch(lambda: produced[0])
    produced[0] = 10
    assert watch.sample(1.0, read=10) == 0.0  # everything read
    produced[0] = 30
    assert watch.sample(2.0, read=10) == 1.0  # unread since the sample at t=1
    produced[0] = 50
    assert watch.sample(3.0, read=25) == 2.0  # some read, but not all produced by t=2
    assert watch.sample(4.0, read=30) == 2.0  # all produced by t=2 read: waiting since then
    assert watch.sample(5.0, read=50) == 0.0
    assert watch.delays == [0.0, 1.0, 2.0, 2.0, 0.0]


def test_a_run_whose_worker_fell_behind_is_not_a_valid_test() -> None:
    from nearline.simulation.runner import FRESH_ENOUGH, SimulationConfig, SimulationResult

    config = SimulationConfig(world=SMALL, compression=300.0)

    def result(read: int, delays: list[float]) -> SimulationResult:
        return SimulationResult(
            config=config,
            sessions=[],
            worker_env={},
            wall_seconds=1.0,
            actions_produced=100,
            worker_metrics={"nearline_events_in_total": float(read)},
            drift_events={},
            time_scale=TimeScale(300.0),
            ingest_delays=delays,
        )

    assert result(100, [0.0, 1.0]).validity() is None
    assert "read 40 of 100" in (result(40, [0.0]).validity() or "")
    too_late = FRESH_ENOUGH / config.compression + 1.0
    assert "simulated minutes" in (result(100, [0.0, too_late]).validity() or "")
