"""The freshness features: values by hand, order independence, and point-in-time rows.

These columns are newer than the frozen reference vectorizer, so they are checked here on
their own; ``test_vectorizer_reference.py`` holds the older columns to the reference.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from nearline.foundation import codec
from nearline.model.feature_log import log_record, logged_rows
from nearline.model.vectorizer import Vectorizer, VectorizerConfig
from nearline.tables.member_state import MemberState, RecentAction, StatePolicy

NOW = 1_764_384_000.0
LONGEST = math.log1p(96 * 3600.0)  # "never": pinned to the longest window
E = np.eye(4, dtype=np.float32)


@pytest.fixture
def vectorizer() -> Vectorizer:
    return Vectorizer(VectorizerConfig(embedding_dim=4, short_window_s=1800.0))


def action(item: str, kind: str, age: float, **attributes: Any) -> dict[str, Any]:
    return {"item_id": item, "action": kind, "ts": NOW - age, "attributes": attributes}


ACTIONS = [
    action("a", "click", 100, category="eng", company="acme", embedding=E[0].tolist()),
    action("b", "click", 4000, category="eng", company="globex", embedding=E[1].tolist()),
    action("c", "dismiss", 60, category="sales", company="initech"),
    action("d", "dismiss", 7200, category="ops"),
    action("e", "view", 10, category="design"),
    action("f", "apply", 20000, category="data", embedding=E[2].tolist()),
    action("g", "click", 30000, embedding=E[3].tolist()),
]
CANDIDATES: dict[str, dict[str, Any] | None] = {
    "X": {"category": "eng", "company": "acme", "embedding": [1.0, 0.0, 1.0, 0.0]},
    "Y": {"category": "sales", "company": "globex", "embedding": [0.0, 1.0, 0.0, 0.0]},
    "Z": {"category": "ops"},
    "W": {"category": "legal", "company": "nobody"},
    "U": None,
}


def columns(vectorizer: Vectorizer, matrix: np.ndarray, name: str) -> list[float]:
    return [round(float(v), 5) for v in matrix[:, vectorizer.index(name)]]


def test_freshness_columns_by_hand(vectorizer: Vectorizer) -> None:
    m = vectorizer.transform({"recent_actions": ACTIONS}, CANDIDATES, NOW)

    def col(name: str) -> list[float]:
        return columns(vectorizer, m, name)

    def same(value: float) -> list[float]:
        return [round(value, 5)] * len(CANDIDATES)

    assert col("log_seconds_since_last_engaged") == same(math.log1p(100))
    # Within the last 30 min: the click at -100 s, the dismiss at -60 s, the view at -10 s.
    assert col("count_short_click") == col("count_short_dismiss") == same(math.log1p(1))
    assert col("count_short_view") == same(math.log1p(1))
    assert col("count_short_apply") == same(0.0)
    since_category = [math.log1p(100), math.log1p(60), math.log1p(7200), LONGEST, LONGEST]
    assert col("log_seconds_since_category_action") == [round(v, 5) for v in since_category]
    since_company = [math.log1p(100), math.log1p(4000), LONGEST, LONGEST, LONGEST]
    assert col("log_seconds_since_company_action") == [round(v, 5) for v in since_company]
    # The newest engaged items one by one: a (e0), b (e1), f (e2); g is the fourth.
    s = round(1 / math.sqrt(2), 5)
    assert col("sim_last_engaged_1") == [s, 0.0, 0.0, 0.0, 0.0]
    assert col("sim_last_engaged_2") == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert col("sim_last_engaged_3") == [s, 0.0, 0.0, 0.0, 0.0]
    # sales was dismissed 60 s ago (in the short window), ops 2 h ago (not).
    assert col("category_dismissed_short") == [0.0, 1.0, 0.0, 0.0, 0.0]
    # Four engaged actions (two in eng), two dismisses (sales, ops).
    assert col("category_engaged_share") == [0.5, 0.0, 0.0, 0.0, 0.0]
    assert col("category_dismissed_share") == [0.0, 0.5, 0.5, 0.0, 0.0]
    assert col("company_engaged_share") == [0.25, 0.25, 0.0, 0.0, 0.0]


def test_a_member_without_history_gets_the_never_values(vectorizer: Vectorizer) -> None:
    m = vectorizer.transform({}, CANDIDATES, NOW)
    for name in (
        "log_seconds_since_last_engaged",
        "log_seconds_since_category_action",
        "log_seconds_since_company_action",
    ):
        assert columns(vectorizer, m, name) == [round(LONGEST, 5)] * len(CANDIDATES)
    fresh = [n for n in vectorizer.feature_names if n.startswith(("sim_last", "count_short"))]
    assert not m[:, [vectorizer.index(n) for n in fresh]].any()


def test_the_sequence_follows_event_time_not_list_order(vectorizer: Vectorizer) -> None:
    shuffled = ACTIONS[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != ACTIONS
    np.testing.assert_array_equal(
        vectorizer.transform({"recent_actions": shuffled}, CANDIDATES, NOW),
        vectorizer.transform({"recent_actions": ACTIONS}, CANDIDATES, NOW),
    )


def test_training_rows_are_the_rows_of_request_time(vectorizer: Vectorizer) -> None:
    """What the outcomes agent turns into examples is the row logged when the request was
    served: later actions (the outcome itself) never leak into it, though they would change
    every freshness column if the row were computed again afterwards."""
    policy = StatePolicy(
        windows=(3600.0, 86400.0, 345600.0),
        retention=345600.0,
        bucket=60.0,
        max_recent_actions=100,
        actions_of_interest=("view", "click", "apply", "save", "dismiss"),
    )
    state = MemberState()
    offset = 0

    def apply(kind: str, ts: float, category: str) -> None:
        nonlocal offset
        event = RecentAction(f"e{offset}", f"i{offset}", kind, ts, {"category": category})
        state.apply(event, offset=offset, applied_at=ts, policy=policy)
        offset += 1

    apply("click", NOW - 3000, "eng")
    apply("dismiss", NOW - 50, "sales")
    request_time = NOW
    candidates = {"X": {"category": "eng"}, "Y": {"category": "sales"}}
    served = vectorizer.transform(state.features("m", request_time, policy), candidates, NOW)
    record = codec.loads(
        codec.dumps(
            log_record(
                request_id="r",
                member_id="m",
                ts=request_time,
                features_as_of=request_time,
                model_version="heuristic-v1",
                feature_names=vectorizer.feature_names,
                item_ids=list(candidates),
                matrix=served,
                ranked=list(candidates),
                context={},
            )
        )
    )

    # The outcome: the member clicks a sales job and dismisses an eng one after the request
    # (in the next minute: the windowed counts are bucketed by the minute, so an as-of
    # read is exact to the bucket; the freshness columns use the actions' own times).
    apply("click", NOW + 80, "sales")
    apply("dismiss", NOW + 90, "eng")
    _, logged = logged_rows(record)
    assert logged.tobytes() == served.tobytes()
    # Read as of the request time, the store still gives exactly the request-time row ...
    again = vectorizer.transform(state.features("m", request_time, policy), candidates, NOW)
    assert again.tobytes() == served.tobytes()
    # ... while a row computed after the outcome would have seen it, column by column.
    later = vectorizer.transform(state.features("m", NOW + 100, policy), candidates, NOW + 100)
    for name in (
        "log_seconds_since_last_engaged",
        "log_seconds_since_category_action",
        "count_short_click",
        "category_engaged_share",
        "category_dismissed_short",
    ):
        assert columns(vectorizer, later, name) != columns(vectorizer, served, name), name
