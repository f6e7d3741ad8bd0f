"""Erasure records, the erasure marker in member state, and leaving erased examples out."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nearline.agents.erasures import Erasure, InvalidMemberId, check_member_id, latest_by_member
from nearline.app.exporting import without_erased
from nearline.cli import main
from nearline.foundation import codec
from nearline.model.dataset import ExampleSet, write_examples
from nearline.simulation.examples import EXAMPLES_WORLD, generate_examples
from nearline.tables.changelog import LocalTable
from nearline.tables.member_state import MemberState, RecentAction, StatePolicy, erased_key
from nearline.tables.online_store import OnlineStore

POLICY = StatePolicy(
    windows=(3600.0,),
    retention=345600.0,
    bucket=60.0,
    max_recent_actions=100,
    actions_of_interest=("click",),
)
NOW = 1_764_400_000.0


def test_member_ids_are_checked_as_actions_check_them() -> None:
    assert check_member_id("member-1") == "member-1"
    for bad, why in (("", "empty"), ("x" * 257, "over the limit"), ("a\0b", "control")):
        with pytest.raises(InvalidMemberId, match=why):
            check_member_id(bad)
    with pytest.raises(InvalidMemberId):
        Erasure.new("", "test")


def test_an_erasure_round_trips_and_the_latest_per_member_wins() -> None:
    first = Erasure.new("m", "cli:me", now=NOW)
    assert Erasure.decode(first.encode()) == first
    later = Erasure.new("m", "api", now=NOW + 1)
    other = Erasure.new("n", "api", now=NOW)
    assert latest_by_member([later, first, other]) == {"m": later, "n": other}


def test_an_erased_member_reads_as_erased_and_starts_again_from_zero(tmp_path: Path) -> None:
    store = OnlineStore(LocalTable(str(tmp_path / "members"), 1), POLICY, 1)

    def apply(state: MemberState, n: int, ts: float) -> None:
        action = RecentAction(f"e{n}", "item", "click", ts)
        state.apply(action, offset=n, applied_at=ts, policy=POLICY)

    async def run() -> None:
        state = MemberState()
        for n in range(20):  # several chunks
            apply(state, n, NOW - 100 + n)
            await store.write({0: {b"m": state}})
            state = store.load(0, b"m") or MemberState()
        marker = codec.dumps({"erasure_id": "x1", "erased_at": NOW})
        async with store.write_lock:
            deleted, acknowledged = await store.erase({0: {b"m": (marker, NOW)}})
        await acknowledged
        assert deleted > 1
        assert [k for k, _ in store.table.scan(0, b"m", b"m\x01")] == [erased_key(b"m")]
        assert store.load(0, b"m") is None  # nothing to decode: the marker is no state
        erased = store.features("m", NOW)
        assert erased["erased"] == {"erasure_id": "x1", "erased_at": NOW}
        assert erased["known"] is False and erased["recent_actions"] == []
        # A later event: the member from zero, still marked as erased before.
        state = MemberState()
        apply(state, 100, NOW + 1)
        await store.write({0: {b"m": state}})
        again = store.features("m", NOW + 2)
        assert [a["event_id"] for a in again["recent_actions"]] == ["e100"]
        assert again["counts"]["1h"]["click"] == 1 and again["erased"]["erasure_id"] == "x1"
        assert store.erased_marker(0, b"m") == marker
        # Erased again (a reconcile) holding only later events: they stay, marked.
        async with store.write_lock:
            deleted, acknowledged = await store.erase({0: {b"m": (marker, NOW)}})
        await acknowledged
        assert deleted == 0
        assert [a["event_id"] for a in store.features("m", NOW + 2)["recent_actions"]] == ["e100"]
        # A later erasure takes them too.
        async with store.write_lock:
            deleted, acknowledged = await store.erase({0: {b"m": (marker, NOW + 1)}})
        await acknowledged
        assert deleted == 1 and store.features("m", NOW + 2)["recent_actions"] == []

    asyncio.run(run())


def test_examples_of_erased_members_up_to_their_erasure_are_left_out() -> None:
    members = np.array(["gone", "gone", "kept", "gone"], dtype=object)
    examples = ExampleSet(
        request_id=np.array(["r1", "r2", "r3", "r4"], dtype=object),
        member_id=members,
        ts=np.array([NOW - 10, NOW, NOW - 10, NOW + 10]),
        model_version=np.array(["v"] * 4, dtype=object),
        item_id=np.array(["i"] * 4, dtype=object),
        features=np.zeros((4, 2), dtype=np.float32),
        label=np.zeros(4, dtype=np.int8),
    )
    kept, left_out = without_erased(examples, {"gone": Erasure("x", "gone", NOW, "test")})
    assert left_out == 2 and list(kept.request_id) == ["r3", "r4"]
    assert without_erased(examples, {}) == (examples, 0)


def test_train_leaves_out_members_erased_since_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = generate_examples(replace(EXAMPLES_WORLD, n_requests=60, seed=1))
    path = tmp_path / "examples.parquet"
    write_examples(path, examples)
    member = str(examples.member_id[0])
    erased = int((examples.member_id == member).sum())
    erasures = {member: Erasure("x", member, float(examples.ts.max()), "test")}

    async def read_erasures(reader: object, topic: object) -> dict[str, Erasure]:
        return erasures  # the erasures topic, read after the file was written

    monkeypatch.setattr("nearline.agents.erasures.read_erasures", read_erasures)
    for name in ("NEARLINE_MODEL_DIR", "NEARLINE_EMBEDDING_DIM", "NEARLINE_WINDOWS"):
        monkeypatch.delenv(name, raising=False)
    args = ["train", str(path), "--model-dir", str(tmp_path / "models"), "--max-epochs", "1"]
    result = CliRunner().invoke(main, args)
    assert f"left out {erased} examples of erased members" in result.output, result.output
    skipped = CliRunner().invoke(main, [*args, "--skip-erasure-check", "--force"])
    assert "left out" not in skipped.output and skipped.exit_code == 0, skipped.output
