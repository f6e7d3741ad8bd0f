"""Background action load from a process of its own, paced to a steady rate.

Run: ``python -m bench.load BOOTSTRAP TOPIC --rate 5000 --seconds 12``. Prints one JSON line
once connected (``{"ready": true}``), produces ``rate`` actions per second in a batch every
few milliseconds for ``seconds``, then prints one JSON line: actions sent and delivered,
and the achieved rate (delivered actions per second, first send to last acknowledgement).
With ``--oracle FILE`` it also writes what the broker acknowledged, per member and action
type: what the online store must count, no more and no less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from confluent_kafka import KafkaError, Message, Producer

from nearline.app.traffic import generate_actions
from nearline.foundation.kafka import partition_for_key

#: Seconds between two batches: the pacing granularity, and the most a batch waits.
TICK = 0.005


def produce_paced(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    members: int,
    seed: int,
    oracle: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Produce actions at ``rate`` per second for ``seconds``; counts what the broker acked."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    partitions = len(producer.list_topics(topic, timeout=10).topics[topic].partitions)
    print(json.dumps({"ready": True}), flush=True)
    acked = {"delivered": 0, "failed": 0, "last": 0.0}

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        acked["failed" if error else "delivered"] += 1
        acked["last"] = time.perf_counter()

    def delivered(member: str, action: str) -> Callable[[KafkaError | None, Message], None]:
        def counted(error: KafkaError | None, message: Message) -> None:
            on_delivery(error, message)
            if error is None and oracle is not None:
                counts = oracle.setdefault(member, {})
                counts[action] = counts.get(action, 0) + 1

        return counted

    actions = generate_actions(None, members=members, seed=seed)
    sent = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        while sent < int(elapsed * rate):
            event = next(actions)
            key = event.member_id.encode()
            producer.produce(
                topic,
                event.to_json(),
                key,
                partition_for_key(key, partitions),
                on_delivery=delivered(event.member_id, event.action),
            )
            sent += 1
        producer.poll(0)
        time.sleep(TICK)
    producer.flush(30)
    span = max(acked["last"], started + seconds) - started
    return {
        "rate": rate,
        "sent": sent,
        "delivered": acked["delivered"],
        "failed": acked["failed"],
        "seconds": round(span, 2),
        "achieved_rate": round(acked["delivered"] / span),
    }


class BenchProcess:
    """``python -m bench.<module>`` in a process of its own: it prints one JSON line once it
    is ready and one with its result when done; it may read lines from its stdin."""

    def __init__(self, process: subprocess.Popen[str], module: str) -> None:
        self.process = process
        self.module = module

    @classmethod
    async def launch(cls, module: str, *args: str) -> Self:
        """Start it and wait until it is ready (its first line)."""
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert process.stdout is not None
        if not await asyncio.to_thread(process.stdout.readline):
            _, err = process.communicate()
            raise RuntimeError(f"{module} did not start: {err[-2000:]}")
        return cls(process, module)

    def tell(self, line: str) -> None:
        """Write one line to its stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    async def result(self) -> dict[str, Any]:
        """Wait for it to finish; its closing JSON line."""
        out, err = await asyncio.to_thread(self.process.communicate)
        if self.process.returncode:
            raise RuntimeError(f"{self.module} failed: {err[-2000:]}")
        return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


class LoadProcess(BenchProcess):
    """``python -m bench.load`` running in a process of its own."""

    @classmethod
    async def start(
        cls, bootstrap: str, topic: str, rate: float, seconds: float, *options: str
    ) -> LoadProcess:
        """Start it and wait until it is connected (its ``{"ready": true}`` line)."""
        return await cls.launch(
            "bench.load", bootstrap, topic, "--rate", str(rate), "--seconds", str(seconds), *options
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap", help="host:port of the broker")
    parser.add_argument("topic")
    parser.add_argument("--rate", type=float, default=5000.0, help="actions per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--members", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--oracle", help="write the acknowledged actions per member here (JSON)")
    args = parser.parse_args()
    oracle: dict[str, dict[str, int]] | None = {} if args.oracle else None
    result = produce_paced(
        args.bootstrap, args.topic, args.rate, args.seconds, args.members, args.seed, oracle
    )
    if args.oracle:
        with open(args.oracle, "w") as out:
            json.dump(oracle, out)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
