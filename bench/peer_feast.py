"""The peer stack's own processes: Quix Streams windowed counts pushed to Feast (Redis).

Runs in the peer's virtual environment (made by ``python -m bench.peer_stack``), never in
nearline's: feast and quixstreams are imported inside the commands, so the main venv can
import the feature names from here. Commands:

``python -m bench.peer_feast apply REPO REDIS_PORT``: writes ``REPO/feature_store.yaml``
(Redis online store, file registry) and registers the entity, push source and feature view.

``python -m bench.peer_feast stream REPO BOOTSTRAP TOPIC --commit-interval 0.1``: a Quix
Streams app that keeps each member's counts per action in 60 s event-time buckets in its
RocksDB state (changelog on), and at every checkpoint pushes each changed member's 15
features to Feast's online store (``FeatureStore.push``, ``PushMode.ONLINE``: Feast's docs
say push sources supersede ``write_to_online_store``). After every push it prints
``{"pushed": N}``: actions whose features are in Redis.

Reads go through ``feast serve`` (started by bench.peer_stack).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

#: The action types the workload produces (nearline.app.traffic) and nearline counts.
ACTIONS = ("view", "click", "apply", "save", "dismiss")
#: nearline's default windows (NEARLINE_WINDOWS) and bucket (NEARLINE_BUCKET).
WINDOWS = (("1h", 3600.0), ("24h", 86400.0), ("96h", 345600.0))
BUCKET = 60.0
FEATURE_VIEW = "member_counts"
PUSH_SOURCE = "member_counts_push"
#: Feature names in the view, in order: ``click_1h`` etc.
FEATURES = tuple(f"{action}_{window}" for window, _ in WINDOWS for action in ACTIONS)


def apply(repo: Path, redis_port: int) -> None:
    """The feature repo: a member entity, a push source and a view of the 15 counts."""
    from datetime import timedelta

    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, PushSource
    from feast.types import Int64
    from feast.value_type import ValueType

    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: nearline_peer\n"
        "registry: registry.db\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f"  connection_string: 127.0.0.1:{redis_port}\n"
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    member = Entity(name="member", join_keys=["member_id"], value_type=ValueType.STRING)
    # A push source needs a batch source for history; the benchmark never reads it.
    history = FileSource(
        name="member_counts_history",
        path=str(repo / "member_counts.parquet"),
        timestamp_field="event_timestamp",
    )
    push = PushSource(name=PUSH_SOURCE, batch_source=history)
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[member],
        ttl=timedelta(seconds=WINDOWS[-1][1]),
        schema=[Field(name=name, dtype=Int64) for name in FEATURES],
        source=push,
        online=True,
    )
    FeatureStore(repo_path=str(repo)).apply([member, history, push, view])
    print(json.dumps({"applied": str(repo)}), flush=True)


def window_counts(buckets: dict[str, dict[str, int]], now: float) -> dict[str, int]:
    """The 15 features from a member's buckets: counts per action over each window."""
    row = dict.fromkeys(FEATURES, 0)
    for bucket, counts in buckets.items():
        start = int(bucket) * BUCKET
        for window, seconds in WINDOWS:
            if start + BUCKET > now - seconds:  # the bucket overlaps the window
                for action, n in counts.items():
                    name = f"{action}_{window}"
                    if name in row:
                        row[name] += n
    return row


def stream(repo: Path, bootstrap: str, topic_name: str, commit_interval: float) -> None:
    import pandas as pd
    from feast import FeatureStore
    from feast.data_source import PushMode
    from quixstreams import Application
    from quixstreams.models.topics import TopicConfig
    from quixstreams.sinks import BatchingSink, SinkBatch
    from quixstreams.state import State

    store = FeatureStore(repo_path=str(repo))

    class FeastPush(BatchingSink):
        """At each checkpoint, one push of every changed member's latest features."""

        def __init__(self) -> None:
            super().__init__()
            self.latest: dict[str, dict[str, Any]] = {}
            self.pushed = 0

        def write(self, batch: SinkBatch) -> None:
            for item in batch:
                self.latest[item.value["member_id"]] = item.value
            self.pushed += batch.size

        def flush(self) -> None:
            super().flush()  # write() for each partition's batch
            if not self.latest:
                return
            frame = pd.DataFrame.from_records(list(self.latest.values()))
            # Processing time: Feast's Redis store skips a row whose timestamp is not newer
            # than the one it holds, and event times of one member can tie or go back.
            frame["event_timestamp"] = pd.Timestamp.now(tz="UTC")
            store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
            self.latest.clear()
            print(json.dumps({"pushed": self.pushed}), flush=True)

    def count(value: dict[str, Any], state: State) -> dict[str, Any]:
        buckets: dict[str, dict[str, int]] = state.get("buckets") or {}
        bucket = str(int(float(value["ts"]) // BUCKET))
        counts = buckets.setdefault(bucket, {})
        counts[value["action"]] = counts.get(value["action"], 0) + 1
        now = time.time()
        oldest = int((now - WINDOWS[-1][1]) // BUCKET) - 1
        buckets = {b: c for b, c in buckets.items() if int(b) >= oldest}
        state.set("buckets", buckets)
        return {"member_id": value["member_id"], **window_counts(buckets, now)}

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"peer-stack-{int(time.time())}",
        auto_offset_reset="earliest",
        state_dir=tempfile.mkdtemp(prefix="quix-feast-state-"),
        use_changelog_topics=True,
        commit_interval=commit_interval,
    )
    # The embedded broker does not report these; Quix's topic manager needs them to
    # create the changelog topic.
    retention = {"retention.ms": str(7 * 86_400_000), "retention.bytes": "-1"}
    topic = app.topic(
        topic_name,
        value_deserializer="json",
        key_deserializer="str",
        config=TopicConfig(num_partitions=4, replication_factor=1, extra_config=retention),
    )
    sdf = app.dataframe(topic)
    sdf = sdf.apply(count, stateful=True)
    sdf.sink(FeastPush())
    print(json.dumps({"ready": True}), flush=True)
    app.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    applying = commands.add_parser("apply", help="write and register the feature repo")
    applying.add_argument("repo", type=Path)
    applying.add_argument("redis_port", type=int)
    streaming = commands.add_parser("stream", help="run the Quix Streams app")
    streaming.add_argument("repo", type=Path)
    streaming.add_argument("bootstrap")
    streaming.add_argument("topic")
    streaming.add_argument(
        "--commit-interval",
        type=float,
        default=0.1,
        help="seconds between Quix checkpoints, each one push to Feast (Quix's default: 5)",
    )
    args = parser.parse_args()
    if args.command == "apply":
        apply(args.repo, args.redis_port)
    else:
        stream(args.repo, args.bootstrap, args.topic, args.commit_interval)


if __name__ == "__main__":
    main()
