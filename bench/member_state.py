"""Member-state cost: CPU time per action to decode, apply, prune and encode member values.

Run: ``python -m bench.member_state [--actions 200000] [--members 10000]``. In process, no
broker: the part of ingest that the state's layout decides (the recent actions, counts and
dedupe ids of each member touched by a batch), in batches of ``NEARLINE_BATCH_MAX``. CPU
time, best of ``--repeat`` runs, so other processes on the machine disturb it little.
"""

from __future__ import annotations

import argparse
import gc
import time

from app.settings import load_settings
from app.traffic import generate_actions
from bench.harness import machine
from tables.member_state import MemberState, RecentAction, StatePolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = load_settings()
    policy = StatePolicy.from_settings(settings)
    now = time.time()
    events = generate_actions(
        args.actions, members=args.members, items=50_000, seed=11, spread=3600.0
    )
    batches: list[dict[bytes, list[tuple[int, RecentAction]]]] = [{}]
    for offset, e in enumerate(events):
        if offset and offset % settings.batch_max == 0:
            batches.append({})
        action = RecentAction(e.event_id, e.item_id, e.action, e.ts, dict(e.attributes))
        batches[-1].setdefault(e.member_id.encode(), []).append((offset, action))
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)  # as the worker runs
    best = float("inf")
    store: dict[bytes, bytes] = {}
    for _ in range(args.repeat):
        store = {}
        started = time.process_time()
        for batch in batches:
            for key, actions in batch.items():
                raw = store.get(key)
                state = MemberState() if raw is None else MemberState.from_bytes(raw)
                for offset, action in actions:
                    state.apply(action, offset=offset, applied_at=now, policy=policy)
                state.prune(now, policy)
                store[key] = state.to_bytes()
        best = min(best, time.process_time() - started)
    print(f"machine: {machine()}")
    print(
        f"{args.actions:,} actions over {args.members:,} members: "
        f"{best / args.actions * 1e6:.2f} µs CPU per action, "
        f"{sum(map(len, store.values())) / len(store):,.0f} bytes per member value"
    )


if __name__ == "__main__":
    main()
