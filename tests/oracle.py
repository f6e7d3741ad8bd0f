"""An independent model of what the features endpoint must answer, for tests to compare."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any


def expected_features(
    events: list[dict[str, Any]],
    *,
    as_of: float,
    windows: dict[str, float],
    retention: float,
    bucket: float,
    max_recent: int,
    actions_of_interest: tuple[str, ...],
) -> dict[str, dict[str, Any]]:
    """``events`` in production order (valid ones, duplicates included) → member → view.

    Rules, as documented: an event id counts once; recent actions are the newest
    ``max_recent`` by event time (ties in arrival order), newest first, none older than
    the retention; an event counts in window W while its time bucket overlaps (as_of - W, as_of].
    """
    per_member: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for event in events:
        if event["action"] not in actions_of_interest:
            continue
        key = (event["member_id"], event["event_id"])
        if key in seen:
            continue
        seen.add(key)
        per_member[event["member_id"]].append(event)
    views: dict[str, dict[str, Any]] = {}
    for member, member_events in per_member.items():
        ordered = sorted(member_events, key=lambda e: e["ts"])  # stable: arrival order on ties
        kept = ordered[-max_recent:]
        recent = [
            {
                "event_id": e["event_id"],
                "item_id": e["item_id"],
                "action": e["action"],
                "ts": e["ts"],
            }
            for e in reversed(kept)
            if as_of - retention < e["ts"] <= as_of
        ]
        counts = {}
        for name, window in windows.items():
            totals = dict.fromkeys(actions_of_interest, 0)
            for e in member_events:
                k = math.floor(e["ts"] / bucket)
                if (k + 1) * bucket > as_of - window and k * bucket <= as_of:
                    totals[e["action"]] += 1
            counts[name] = totals
        views[member] = {"recent_actions": recent, "counts": counts}
    return views


def served_view(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a features response the oracle predicts."""
    return {
        "recent_actions": [
            {k: a[k] for k in ("event_id", "item_id", "action", "ts")}
            for a in body["recent_actions"]
        ],
        "counts": body["counts"],
    }
