"""Exporting the training-examples topic to a Parquet file the trainer reads."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import TopicPartition
from tqdm import tqdm

from nearline.agents.erasures import Erasure, read_erasures
from nearline.agents.outcomes import feature_set_id
from nearline.app.compose import erasures_topic, topic_reader_of
from nearline.foundation import codec
from nearline.foundation.kafka import topic_reader
from nearline.foundation.settings import Settings
from nearline.model.dataset import ExampleSet, write_examples
from nearline.model.feature_log import decode_matrix

__all__ = ["ExportError", "examples_to_set", "export_training", "read_topic", "without_erased"]


class ExportError(ValueError):
    """The examples cannot be exported as asked; the message says why."""


async def read_topic(settings: Settings, topic: str, idle: float = 2.0) -> list[bytes]:
    """Every value on ``topic`` from the beginning, stopping after ``idle`` quiet seconds."""
    consumer = topic_reader(settings)
    await consumer.start()
    values: list[bytes] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ExportError(f"topic {topic!r} does not exist (is NEARLINE_BROKER_URL right?)")
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        quiet_since = time.monotonic()
        with tqdm(unit=" records", desc=topic) as bar:
            while time.monotonic() - quiet_since < idle:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                got = [r.value for records in batch.values() for r in records if r.value]
                if got:
                    values.extend(got)
                    bar.update(len(got))
                    quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return values


def _rows(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The examples of one training-examples record: an example set, or one example."""
    if "item_ids" not in record:  # one example per record (written before example sets)
        yield record
        return
    matrix = decode_matrix(record["features"])
    for row, (item_id, label) in enumerate(zip(record["item_ids"], record["labels"], strict=True)):
        yield {**record, "item_id": item_id, "label": label, "features": matrix[row]}


def examples_to_set(records: Sequence[dict[str, Any]], feature_names: Sequence[str]) -> ExampleSet:
    """One row per (request, item), the last record winning; features must match."""
    expected = feature_set_id(feature_names)
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record.get("feature_set") != expected:
            raise ExportError(
                f"example of request {record.get('request_id')} was made with another feature "
                "set than this version of nearline computes; export with the version that made it"
            )
        for row in _rows(record):
            unique[(row["request_id"], row["item_id"])] = row
    rows = sorted(unique.values(), key=lambda r: (r["ts"], r["request_id"]))

    def strings(name: str) -> np.ndarray:
        return np.array([str(r[name]) for r in rows], dtype=object)

    features = np.array([r["features"] for r in rows], dtype=np.float32).reshape(
        len(rows), len(feature_names)
    )
    return ExampleSet(
        request_id=strings("request_id"),
        member_id=strings("member_id"),
        ts=np.array([r["ts"] for r in rows], dtype=np.float64),
        model_version=strings("model_version"),
        item_id=strings("item_id"),
        features=features,
        label=np.array([r["label"] for r in rows], dtype=np.int8),
        feature_names=tuple(feature_names),
    )


def without_erased(examples: ExampleSet, erasures: Mapping[str, Erasure]) -> tuple[ExampleSet, int]:
    """``examples`` without those of erased members requested at or before their erasure
    (later ones are of the member started from zero); and how many were left out."""
    if not erasures or not len(examples):
        return examples, 0
    erased_at = np.array(
        [
            erasure.requested_at if (erasure := erasures.get(str(m))) is not None else -np.inf
            for m in examples.member_id
        ],
        dtype=np.float64,
    )
    erased = examples.ts <= erased_at
    left_out = int(erased.sum())
    return (examples.take(~erased), left_out) if left_out else (examples, 0)


async def export_training(
    settings: Settings, out: Path, feature_names: Sequence[str]
) -> tuple[ExampleSet, int]:
    """The training-examples topic to ``out``, without erased members' examples (the
    erasures topic read now, after the examples): returns them and how many were left out."""
    values = await read_topic(settings, settings.topic_training_examples)
    examples = examples_to_set([codec.loads(v) for v in values], feature_names)
    examples, left_out = without_erased(
        examples, await read_erasures(topic_reader_of(settings), erasures_topic(settings))
    )
    write_examples(out, examples)
    return examples, left_out
