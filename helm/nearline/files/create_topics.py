"""Create nearline's topics before install/upgrade (Helm hook); existing topics are checked."""

import asyncio
import json
import os
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.helpers import create_ssl_context

TOPIC_ALREADY_EXISTS = 36


def admin_client(timeout_ms):
    """An admin client configured from the same NEARLINE_* variables as the workers."""
    protocol = os.environ.get("NEARLINE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    brokers = [
        url.strip().split("://", 1)[-1]
        for url in os.environ["NEARLINE_BROKER_URL"].split(",")
        if url.strip()
    ]
    options = {
        "bootstrap_servers": brokers,
        "security_protocol": protocol,
        "request_timeout_ms": timeout_ms,
    }
    if protocol.startswith("SASL"):
        options["sasl_mechanism"] = os.environ.get("NEARLINE_KAFKA_SASL_MECHANISM", "PLAIN")
        options["sasl_plain_username"] = os.environ.get("NEARLINE_KAFKA_SASL_USERNAME")
        options["sasl_plain_password"] = os.environ.get("NEARLINE_KAFKA_SASL_PASSWORD")
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=os.environ.get("NEARLINE_KAFKA_SSL_CAFILE") or None,
            certfile=os.environ.get("NEARLINE_KAFKA_SSL_CERTFILE") or None,
            keyfile=os.environ.get("NEARLINE_KAFKA_SSL_KEYFILE") or None,
        )
    return AIOKafkaAdminClient(**options)


async def provision(admin, spec, increase, timeout_ms):
    """Create missing topics; return the problems found with existing ones."""
    # Metadata for all topics: asking for named topics would let a broker with
    # auto.create.topics.enable create them with its default partition count.
    described = await admin.describe_topics()
    existing = {
        meta["topic"]: len(meta["partitions"])
        for meta in described
        if meta["error_code"] == 0 and meta["partitions"]
    }
    problems = []
    missing = [topic for topic in spec if topic["name"] not in existing]
    if missing:
        response = await admin.create_topics(
            [
                NewTopic(
                    name=topic["name"],
                    num_partitions=topic["partitions"],
                    replication_factor=topic["replication"],
                    topic_configs={k: str(v) for k, v in topic["config"].items()},
                )
                for topic in missing
            ],
            timeout_ms=timeout_ms,
        )
        for name, code, *rest in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                problems.append(f"{name}: create failed with error code {code} {rest}")
            elif code == 0:
                print(f"created {name}", flush=True)
    for topic in spec:
        have = existing.get(topic["name"])
        if have is None:
            continue
        want = topic["partitions"]
        if have == want:
            print(f"exists {topic['name']} ({have} partitions)", flush=True)
        elif have < want and increase:
            try:
                await admin.create_partitions({topic["name"]: NewPartitions(total_count=want)})
            except Exception as exc:  # the broker's refusal is reported, not a traceback
                problems.append(f"{topic['name']}: adding partitions failed: {exc!r}")
            else:
                print(f"increased {topic['name']} from {have} to {want} partitions", flush=True)
        elif have < want or topic.get("copartitioned"):
            problems.append(
                f"{topic['name']} has {have} partitions but the chart says {want}; "
                "partitions decide which worker owns a member, so change them only together "
                "with a new nearline.appId (set topicsJob.increasePartitions=true to add them)"
            )
        else:
            print(f"exists {topic['name']} ({have} partitions, more than {want})", flush=True)
    return problems


async def main():
    spec = json.loads(os.environ["TOPICS_SPEC"])
    increase = os.environ.get("TOPICS_INCREASE_PARTITIONS", "false") == "true"
    timeout_ms = int(float(os.environ.get("TOPICS_TIMEOUT_SECONDS", "30")) * 1000)
    admin = admin_client(timeout_ms)
    await admin.start()
    try:
        problems = await provision(admin, spec, increase, timeout_ms)
    finally:
        await admin.close()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr, flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
