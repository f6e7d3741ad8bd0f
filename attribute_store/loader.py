"""Load item or member attributes from JSONL, CSV or Parquet files, in batches, into a sink.

File shapes (one record per line or row):

- **JSONL**: the record as a JSON object, e.g. ``{"item_id": "j1", "embedding": [...],
  "geo": {"lat": 52.5, "lon": 13.4, "region": "Berlin"}, "category": "engineering"}``;
  categorical attributes at the top level or under ``"attributes"``.
- **CSV** (with a header): an id column (``item_id`` / ``member_id``); ``embedding`` as a
  JSON array (``"[0.1, 0.2]"``) or numbers separated by ``;`` or spaces; ``lat``, ``lon``,
  ``region`` columns make the geo; every other column is a categorical attribute, kept
  as the string it is. An empty cell means "not set".
- **Parquet**: the same columns as CSV with their Parquet types (``embedding`` a list of
  floats, or a string as in CSV), or ``geo`` as a struct column.

A bad record is reported with its line (JSONL, CSV: the line in the file) or row (Parquet:
1-based row number) and skipped; the rest is handed to the sink in batches.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from nearline.attribute_store.exceptions import AttributeStoreError, InvalidRecord
from nearline.attribute_store.schema import AttributeRecord, Kind, validate_record
from nearline.foundation import codec
from nearline.foundation.extras import requires_extra

__all__ = [
    "FORMATS",
    "LoadFailed",
    "LoadSummary",
    "Sink",
    "detect_format",
    "load_file",
    "read_rows",
]

log = logging.getLogger(__name__)

Format = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet")
_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GEO_COLUMNS = ("lat", "lon", "region")
_SEPARATORS = re.compile(r"[;\s]+")

#: Where validated records go: an attribute store's ``put_many``, or a topic producer.
Sink = Callable[[list[AttributeRecord]], Awaitable[None]]
Row = Mapping[str, Any] | InvalidRecord


@dataclass
class LoadSummary:
    """What a load did: records loaded, records skipped, and why (line, reason)."""

    loaded: int = 0
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


class LoadFailed(AttributeStoreError):
    """The sink failed part way through a load; ``summary`` counts what was loaded before.

    Batches before the failing one are loaded; the failing batch is written as a whole or
    not at all (the sink's own guarantee), so the load can simply be run again.
    """

    def __init__(self, message: str, summary: LoadSummary) -> None:
        super().__init__(message)
        self.summary = summary


def detect_format(path: Path | str) -> Format:
    """The file format from the file name's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        known = ", ".join(sorted(_SUFFIXES))
        raise ValueError(f"{path}: cannot tell the format from {suffix!r}; use one of {known}")
    return _SUFFIXES[suffix]


async def load_file(
    path: Path | str,
    sink: Sink,
    *,
    embedding_dim: int,
    kind: Kind = "items",
    file_format: Format | None = None,
    batch_size: int = 1000,
    progress: bool = True,
    max_errors: int = 1000,
) -> LoadSummary:
    """Validate every record of ``path`` and hand the good ones to ``sink`` in batches.

    Each batch goes to the sink whole, so with a store's ``put_many`` a batch is written
    entirely or not at all. If the sink fails, :class:`LoadFailed` carries the summary of
    what was loaded before; loading is idempotent (upserts), so the file can be loaded
    again. ``errors`` keeps the first ``max_errors`` reasons; ``skipped`` counts them all.
    """
    path = Path(path)
    file_format = file_format or detect_format(path)
    summary = LoadSummary()
    batch: list[AttributeRecord] = []
    first_line = 0
    total = _parquet_rows_count(path) if file_format == "parquet" else None

    async def flush(last_line: int) -> None:
        try:
            await sink(batch)
        except Exception as exc:
            raise LoadFailed(
                f"{path}: loading stopped at lines {first_line}-{last_line} after "
                f"{summary.loaded} records were loaded: {exc}",
                summary,
            ) from exc
        summary.loaded += len(batch)
        batch.clear()

    line = 0
    with tqdm(total=total, unit=" records", desc=path.name, disable=not progress) as bar:
        for line, row in read_rows(path, file_format, kind):
            bar.update(1)
            try:
                if isinstance(row, InvalidRecord):
                    raise row
                record = validate_record(kind, row, embedding_dim)
            except InvalidRecord as exc:
                summary.skipped += 1
                if len(summary.errors) < max_errors:
                    summary.errors.append((line, exc.reason))
                continue
            if not batch:
                first_line = line
            batch.append(record)
            if len(batch) >= batch_size:
                await flush(line)
        if batch:
            await flush(line)
    log.info(
        "attributes loaded",
        extra={"path": str(path), "loaded": summary.loaded, "skipped": summary.skipped},
    )
    return summary


def read_rows(
    path: Path | str, file_format: Format, kind: Kind = "items"
) -> Iterator[tuple[int, Row]]:
    """``(line or row number, raw record)`` pairs; an unreadable one is an InvalidRecord."""
    path = Path(path)
    if file_format == "jsonl":
        yield from _jsonl_rows(path)
    elif file_format == "csv":
        yield from _csv_rows(path, kind)
    elif file_format == "parquet":
        yield from _parquet_rows(path, kind)
    else:
        raise ValueError(f"unknown format {file_format!r}; use one of {', '.join(FORMATS)}")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Row]]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield number, codec.loads(line)
            except codec.DecodeError as exc:
                yield number, InvalidRecord(f"bad JSON: {exc}")


def _csv_rows(path: Path, kind: Kind) -> Iterator[tuple[int, Row]]:
    with path.open(newline="", encoding="utf-8") as text:
        reader = csv.DictReader(text)
        for row in reader:
            # line_num is the file line the row ended on (a quoted cell may span lines).
            number = reader.line_num
            if None in row:
                yield number, InvalidRecord("the row has more fields than the header")
            elif any(value is None for value in row.values()):
                yield number, InvalidRecord("the row has fewer fields than the header")
            else:
                yield number, _from_columns(row, kind, from_text=True)


def _parquet() -> Any:
    """pyarrow.parquet, imported by the first Parquet load: only those pay for pyarrow."""
    with requires_extra("Loading a Parquet file"):
        import pyarrow.parquet as pq
    return pq


def _parquet_rows(path: Path, kind: Kind) -> Iterator[tuple[int, Row]]:
    pq = _parquet()
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield number, _from_columns(row, kind, from_text=False)


def _parquet_rows_count(path: Path) -> int:
    pq = _parquet()
    return int(pq.ParquetFile(path).metadata.num_rows)


def _from_columns(row: Mapping[str, Any], kind: Kind, *, from_text: bool) -> Row:
    """A raw record from a table row: empty cells dropped, embedding and geo assembled."""
    cells = {
        name: value
        for name, value in row.items()
        if value is not None and not (isinstance(value, str) and not value.strip())
    }
    if kind != "items":
        return cells
    try:
        if "embedding" in cells:
            cells["embedding"] = _embedding_cell(cells["embedding"])
        geo = {name: cells.pop(name) for name in _GEO_COLUMNS if name in cells}
        if from_text:
            for name in ("lat", "lon"):
                if name in geo:
                    geo[name] = _number_cell(name, geo[name])
    except InvalidRecord as exc:
        return exc
    if geo:
        if "geo" in cells:
            return InvalidRecord("geo is given both as a geo column and as lat/lon/region")
        cells["geo"] = geo
    return cells


def _embedding_cell(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # a Parquet list column: validation checks it
    text = value.strip()
    if text.startswith("["):
        try:
            return codec.loads(text)
        except codec.DecodeError as exc:
            raise InvalidRecord(f"embedding is not a JSON array: {exc}") from None
    return [_number_cell("embedding", part) for part in _SEPARATORS.split(text) if part]


def _number_cell(name: str, text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise InvalidRecord(f"{name} value {text!r} is not a number") from None
