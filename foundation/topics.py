"""Creating nearline's topics with the partitions and configs each one needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from nearline.foundation.kafka import client_options
from nearline.foundation.settings import Settings

__all__ = ["EnsuredTopics", "TopicSpec", "ensure_topics", "topic_specs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic nearline reads or writes, except the changelogs Faust creates itself."""
    n, r = settings.topic_partitions, settings.topic_replication
    # Keep raw actions a little longer than the state they feed, so a replay can rebuild it.
    retention_ms = str(int(settings.retention * 1000 * 1.25))
    return [
        TopicSpec(settings.topic_actions, n, r, {"retention.ms": retention_ms}),
        # Forwards keep their producer's timestamp (the event time of an action without ts).
        TopicSpec(
            settings.topic_repartition,
            n,
            r,
            {"retention.ms": retention_ms, "message.timestamp.type": "CreateTime"},
        ),
        TopicSpec(settings.topic_dlq, n, r, {"retention.ms": str(14 * 86400 * 1000)}),
        TopicSpec(settings.topic_item_attributes, n, r, {"cleanup.policy": "compact"}),
        TopicSpec(
            f"{settings.topic_item_attributes}.dlq", n, r, {"retention.ms": str(14 * 86400 * 1000)}
        ),
        TopicSpec(settings.topic_recommendations_log, n, r, {"retention.ms": retention_ms}),
        TopicSpec(settings.topic_training_examples, n, r, {"retention.ms": retention_ms}),
        # The durable record of erasures, one per member: never deleted, only compacted.
        # Co-partitioned with the actions, so a member's erasure is on its owner's partition.
        TopicSpec(settings.topic_erasures, n, r, {"cleanup.policy": "compact"}),
    ]


@dataclass(frozen=True)
class EnsuredTopics:
    created: list[str]
    present: set[str]  # every topic on the cluster afterwards


async def ensure_topics(settings: Settings) -> EnsuredTopics:
    """Create the topics that do not exist yet; say which were created and which exist."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    created: list[str] = []
    try:
        present = set(await admin.list_topics())
        for spec in topic_specs(settings):
            if spec.name in present:
                continue
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            spec.name, spec.partitions, spec.replication, topic_configs=spec.config
                        )
                    ]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:  # another worker won the race
                pass
    finally:
        await admin.close()
    if created:
        log.info("created topics %s", ", ".join(created))
    return EnsuredTopics(created, present | set(created))
