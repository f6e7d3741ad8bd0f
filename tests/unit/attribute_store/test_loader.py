"""Loading attribute files: good records in batches, bad ones reported by line and skipped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nearline.attribute_store import (
    AttributeRecord,
    EmbeddedAttributeStore,
    ItemAttributes,
    LoadFailed,
    LoadSummary,
    detect_format,
    load_file,
)

DIM = 3


class ListSink:
    """Collects the batches a load hands over."""

    def __init__(self) -> None:
        self.batches: list[list[AttributeRecord]] = []

    async def __call__(self, records: list[AttributeRecord]) -> None:
        self.batches.append(list(records))

    @property
    def ids(self) -> list[str]:
        return [record.id for batch in self.batches for record in batch]


def load(path: Path, sink: ListSink, **options: object) -> LoadSummary:
    return asyncio.run(
        load_file(path, sink, embedding_dim=DIM, progress=False, **options)  # type: ignore[arg-type]
    )


def test_jsonl_good_lines_load_and_bad_ones_are_reported_by_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"item_id": "j1", "embedding": [1, 2, 3], "category": "eng"}),
                json.dumps({"item_id": "j2", "embedding": [1, 2]}),
                "",  # blank lines are skipped but still counted as lines
                '{"item_id": "j3", "embedding": [1, 2, NaN]}',
                json.dumps({"embedding": [1, 2, 3]}),
                '{"item_id": "j5",',
                json.dumps({"item_id": "j6", "geo": {"lat": 10, "lon": 20, "region": "X"}}),
            ]
        )
        + "\n"
    )
    sink = ListSink()
    summary = load(path, sink)
    assert sink.ids == ["j1", "j6"]
    assert (summary.loaded, summary.skipped) == (2, 4)
    lines = [line for line, _ in summary.errors]
    assert lines == [2, 4, 5, 6]
    reasons = dict(summary.errors)
    assert reasons[2] == "embedding has dimension 2, expected 3"
    assert reasons[4].startswith("bad JSON")
    assert reasons[5] == "item_id is missing"


def test_csv_embedding_forms_geo_columns_and_categoricals(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "item_id,embedding,lat,lon,region,category,seniority\n"
        'j1,"[0.1, 0.2, 0.3]",52.5,13.4,Berlin,eng,senior\n'
        "j2,0.1;0.2;0.3,,,,eng,\n"
        "j3,0.1 0.2 0.3,,,Remote,,\n"
        "j4,0.1;nan;0.3,,,,eng,\n"
        "j5,0.1;0.2;0.3,95,13.4,,eng,\n"
        ",0.1;0.2;0.3,,,,eng,\n"
        'j7,"0.1;\n0.2;0.3",,,,"multi\nline",\n'
        "j8,0.1;0.2;0.3,1,2,,eng\n"
        "j9,0.1;x;0.3,,,,eng,\n"
    )
    sink = ListSink()
    summary = load(path, sink)
    assert sink.ids == ["j1", "j2", "j3", "j7"]
    by_id = {record.id: record for batch in sink.batches for record in batch}
    j1 = by_id["j1"]
    assert isinstance(j1, ItemAttributes)
    assert j1.as_flat_dict() == {
        "embedding": [0.1, 0.2, 0.3],
        "geo": {"lat": 52.5, "lon": 13.4, "region": "Berlin"},
        "category": "eng",
        "seniority": "senior",
    }
    assert by_id["j2"].as_flat_dict() == {"embedding": [0.1, 0.2, 0.3], "category": "eng"}
    assert by_id["j3"].as_flat_dict()["geo"] == {"region": "Remote"}
    assert by_id["j7"].as_flat_dict()["category"] == "multi\nline"
    # Lines of the file: the header is line 1 and j7 spans lines 8-10, so j8 is on 11.
    assert summary.errors == [
        (5, "embedding[1] is nan (must be finite)"),
        (6, "geo.lat is 95.0, outside [-90, 90]"),
        (7, "item_id is missing"),
        (11, "the row has fewer fields than the header"),
        (12, "embedding value 'x' is not a number"),
    ]


def test_parquet_rows_with_list_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    table = pa.table(
        {
            "item_id": ["j1", "j2", None, "j4"],
            "embedding": [[1.0, 2.0, 3.0], [1.0, 2.0], [1.0, 2.0, 3.0], None],
            "lat": [52.5, None, None, None],
            "lon": [13.4, None, None, None],
            "company": ["acme", "b", "c", None],
            "years": [3, 4, 5, 6],
        }
    )
    pq.write_table(table, path)
    sink = ListSink()
    summary = load(path, sink)
    assert sink.ids == ["j1", "j4"]
    j1 = sink.batches[0][0]
    assert j1.as_flat_dict() == {
        "embedding": [1.0, 2.0, 3.0],
        "geo": {"lat": 52.5, "lon": 13.4},
        "company": "acme",
        "years": 3,
    }
    assert summary.errors == [
        (2, "embedding has dimension 2, expected 3"),
        (3, "item_id is missing"),
    ]


def test_members_load_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "members.csv"
    path.write_text("member_id,seniority,industry\nm1,senior,it\nm2,,\n")
    sink = ListSink()
    summary = load(path, sink, kind="members")
    assert summary.loaded == 2
    assert [record.as_flat_dict() for record in sink.batches[0]] == [
        {"seniority": "senior", "industry": "it"},
        {},
    ]


def test_records_go_to_the_sink_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"item_id": f"j{n}"}) + "\n" for n in range(7)))
    sink = ListSink()
    assert load(path, sink, batch_size=3).loaded == 7
    assert [len(batch) for batch in sink.batches] == [3, 3, 1]


def test_a_failing_sink_stops_the_load_and_nothing_is_half_written(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"item_id": f"j{n}"}) + "\n" for n in range(10)))
    store = EmbeddedAttributeStore.in_data_dir(tmp_path)
    calls = 0

    async def flaky_sink(records: list[AttributeRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("broker went away")
        await store.put_many(records)

    async def scenario() -> tuple[LoadFailed, dict[str, ItemAttributes]]:
        with pytest.raises(LoadFailed) as caught:
            await load_file(path, flaky_sink, embedding_dim=DIM, batch_size=4, progress=False)
        found = await store.get_many([f"j{n}" for n in range(10)])
        await store.close()
        return caught.value, found

    failure, found = asyncio.run(scenario())
    assert failure.summary.loaded == 4
    assert "lines 5-8" in str(failure) and "broker went away" in str(failure)
    # The first batch is in, the failing batch is wholly absent, nothing after it was tried.
    assert sorted(found) == ["j0", "j1", "j2", "j3"]


def test_a_bad_record_never_reaches_the_store(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(
        json.dumps({"item_id": "j1", "embedding": [1, 2, 3]})
        + "\n"
        + json.dumps({"item_id": "j2", "embedding": [1, 2, 3, 4]})
        + "\n"
    )
    store = EmbeddedAttributeStore.in_data_dir(tmp_path)

    async def scenario() -> dict[str, ItemAttributes]:
        await load_file(path, store.put_many, embedding_dim=DIM, progress=False)
        found = await store.get_many(["j1", "j2"])
        await store.close()
        return found

    assert list(asyncio.run(scenario())) == ["j1"]


def test_errors_are_capped_but_all_skips_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text("{}\n" * 20)
    summary = load(path, ListSink(), max_errors=5)
    assert summary.skipped == 20 and len(summary.errors) == 5


def test_the_progress_bar_shows_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"item_id": "j1"}) + "\n")
    load(path, ListSink())
    assert capsys.readouterr().err == ""
    asyncio.run(load_file(path, ListSink(), embedding_dim=DIM, progress=True))
    assert "items.jsonl" in capsys.readouterr().err


def test_the_format_comes_from_the_suffix() -> None:
    assert detect_format("a.ndjson") == "jsonl"
    assert detect_format("a.PARQUET") == "parquet"
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format("a.xlsx")
