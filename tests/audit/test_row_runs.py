"""`audit query`'s rows: sorted runs on disk past a limit, merged back in time order."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.audit import row_runs
from gateway.audit.query import Filters
from gateway.audit.row_runs import RowRuns, merged
from gateway.audit.verify_fleet import run_query
from tests.audit.signed_logs import ChainBuilder

T0 = (datetime(2026, 11, 28, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    microseconds=1)
"""A key's time: microseconds since 1970."""


def keyed(chain: str, seq: int, seconds: int) -> row_runs.Keyed:
    return (T0 + seconds * 1_000_000, chain, seq, (chain, seq))


def test_past_the_limit_rows_go_to_sorted_runs_and_come_back_in_order(tmp_path: Path) -> None:
    rng = random.Random(3)
    runs = RowRuns(str(tmp_path), limit=10)
    items = [keyed("a", n, rng.randrange(50)) for n in range(95)]
    for item in items:
        runs.add(item)
    assert len(runs.rows.runs) == 9 and len(runs.rows.memory) == 5
    assert len(list(tmp_path.iterdir())) == 9
    assert list(runs.rows.sorted()) == sorted(items, key=lambda i: i[:3])


def test_without_a_folder_rows_stay_in_memory() -> None:
    runs = RowRuns(None, limit=2)
    for n in range(5):
        runs.add(keyed("a", n, 5 - n))
    assert runs.rows.runs == [] and len(runs.rows.memory) == 5
    assert [i[2] for i in runs.rows.sorted()] == [4, 3, 2, 1, 0]


def test_chains_merge_by_time_then_chain_then_seq(tmp_path: Path) -> None:
    a, b = RowRuns(str(tmp_path), limit=3), RowRuns(str(tmp_path), limit=3)
    for n in range(7):
        a.add(keyed("a", n, 2 * n))
        b.add(keyed("b", n, 2 * n + 1 if n % 2 else 2 * n))
    got = [(i[1], i[2]) for i in merged([b.rows, a.rows])]
    assert got[:4] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert len(got) == 14


def test_a_query_spilling_runs_prints_what_an_in_memory_one_prints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "fleet"
    folder.mkdir()
    for n in range(3):
        chain = ChainBuilder(signer=None, instance=f"pod-{n}")
        chain.cancels(40, checkpoint_every=9)
        chain.write(folder / f"pod-{n}.jsonl")

    def query() -> str:
        out, err = io.StringIO(), io.StringIO()
        assert run_query([str(folder)], Filters(), "csv", [], False, 1, out, err) == 0, err
        return out.getvalue()

    in_memory = query()
    spilled: list[str] = []
    original = RowRuns.__init__

    def small(self: RowRuns, where: str | None, limit: int = 0) -> None:
        original(self, where, 4)
        if where is not None:
            spilled.append(where)

    monkeypatch.setattr(RowRuns, "__init__", small)
    assert query() == in_memory
    assert in_memory.count("\r\n") == 1 + 3 * 40
    assert spilled and not Path(spilled[0]).exists()  # the run files went with their folder


def test_rows_are_ordered_by_time_chain_and_seq_alone_and_never_compared(
        tmp_path: Path) -> None:
    # Columns may hold None beside strings: sorting must never fall through to the row itself.
    tie = (T0, "a", 1)
    runs = RowRuns(str(tmp_path), limit=2)
    for row in ((None, 1), ("x", 2), (None, 3), ("y", 4), (None, 5)):
        runs.add((*tie, row))
    other = RowRuns(None)
    other.add((T0, "a", 1, ("z", 6)))
    rows = [row for *_, row in merged([runs.rows, other.rows])]
    assert sorted(rows, key=lambda row: row[1]) == [
        (None, 1), ("x", 2), (None, 3), ("y", 4), (None, 5), ("z", 6)]


def test_rows_kept_in_memory_with_equal_keys_are_never_compared() -> None:
    runs = RowRuns(None)
    for row in ((None, 1), ("x", 2), (None, 3)):
        runs.add((T0, "a", 1, row))
    assert sorted(row[1] for *_, row in runs.rows.sorted()) == [1, 2, 3]


def test_a_run_longer_than_a_batch_comes_back_whole(tmp_path: Path) -> None:
    runs = RowRuns(str(tmp_path), limit=2500)  # three batches of 1,024 rows on disk
    items = [keyed("a", n, n) for n in range(2600)]
    for item in items:
        runs.add(item)
    assert len(runs.rows.runs) == 1
    assert list(runs.rows.sorted()) == items
    assert [p.name[:5] for p in tmp_path.iterdir()] == ["rows-"]


@pytest.mark.parametrize(("limit", "seconds"), [
    (2, [0, 10, 5, 20]),  # the second run starts before the first ends
    (3, [0, 30, 10, 20, 40, 50]),  # the first run's last row is its largest, not its second
    (2, [10, 20, 5]),  # the rows still in memory start before the run ends
])
def test_runs_that_overlap_in_time_are_merged_not_read_in_turn(
        tmp_path: Path, limit: int, seconds: list[int]) -> None:
    runs = RowRuns(str(tmp_path), limit=limit)
    items = [keyed("a", n, s) for n, s in enumerate(seconds)]
    for item in items:
        runs.add(item)
    assert list(runs.rows.sorted()) == sorted(items, key=lambda i: i[:3])


def test_runs_in_time_order_are_read_in_turn_ties_kept_in_order(tmp_path: Path) -> None:
    runs = RowRuns(str(tmp_path), limit=2)
    items = [keyed("a", 1, s) for s in (0, 1, 1, 1, 1, 2, 3)]  # equal keys across runs
    items = [(*item[:3], (n,)) for n, item in enumerate(items)]
    for item in items:
        runs.add(item)
    assert list(runs.rows.sorted()) == items


def test_merged_runs_never_compare_rows_when_their_keys_tie(tmp_path: Path) -> None:
    runs = RowRuns(str(tmp_path), limit=2)
    for item in ((T0 + 1, "a", 1, (None, 1)), (T0 + 1, "a", 1, ("x", 2)),
                 (T0, "a", 1, (None, 3)), (T0 + 1, "a", 1, ("y", 4))):  # out of order: merged
        runs.add(item)
    assert [row[1] for *_, row in runs.rows.sorted()] == [3, 1, 2, 4]


def test_every_kind_of_value_a_record_holds_survives_a_run_on_disk(tmp_path: Path) -> None:
    row = ("caf\u00e9", None, True, 1.5, -(2**70), [1, "x", None], {"k": [2.0]}, "")
    runs = RowRuns(str(tmp_path), limit=1)
    runs.add((T0, "a", 1, row))
    runs.add((T0 + 1, "a", 2, row))
    assert [r for *_, r in runs.rows.sorted()] == [row, row]
