"""The peer: per-member windowed counts with Quix Streams (RocksDB state, changelog on).

Run as a process of its own by the suite (``python -m bench``):
``python -m bench.peer_quix BOOTSTRAP TOPIC N``.
Prints one JSON line: actions, seconds from the first record to the N-th, actions/s.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from typing import Any

from quixstreams import Application


def main() -> None:
    bootstrap, topic_name, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"peer-{int(time.time())}",
        auto_offset_reset="earliest",
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        use_changelog_topics=True,
    )
    topic = app.topic(
        topic_name,
        value_deserializer="json",
        # Event time decides the window, as in nearline.
        timestamp_extractor=lambda value, headers, ts, kind: int(value["ts"] * 1000),
    )
    seen = {"n": 0, "first": 0.0}

    def count(value: Any) -> None:
        if seen["n"] == 0:
            seen["first"] = time.perf_counter()
        seen["n"] += 1
        if seen["n"] >= expected:
            seconds = time.perf_counter() - seen["first"]
            print(
                json.dumps(
                    {
                        "actions": expected,
                        "seconds": round(seconds, 2),
                        "actions_per_s": round(expected / seconds),
                    }
                ),
                flush=True,
            )
            app.stop()

    sdf = app.dataframe(topic)
    sdf = sdf.tumbling_window(duration_ms=3_600_000).count().current()
    sdf = sdf.update(count)
    app.run()


if __name__ == "__main__":
    main()
