"""docs/audit-fleet.md: its DuckDB query, as written, over an archive folder the uploader
wrote, finds the same cancels as `audit query`."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import duckdb
import pytest

from gateway.audit.archive import opening
from gateway.audit.archive.segments import LocalLines
from gateway.audit.archive.uploader import Uploader
from gateway.audit.query import Filters
from gateway.audit.verify_fleet import run_query
from tests.audit.archive.chains import ChainFiles

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit-fleet.md"


def duckdb_query() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### DuckDB"):]
    found = re.search(r"```sql\n(.*?)```", section, re.S)
    assert found is not None
    return found[1]


def test_the_documented_duckdb_query_reads_the_archive_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for n, team in enumerate(("billing", "search", "billing")):
        (tmp_path / f"pod-{n}").mkdir()
        log = ChainFiles(tmp_path / f"pod-{n}" / "audit.jsonl")
        for _ in range(3):
            log.add(7, team=team)
            log.add(2, team="other")
            log.checkpoint()
        uploader = Uploader(opening.open_store(f"file://{tmp_path}/archive"),
                            LocalLines(str(log.path)), lambda report: None)
        uploader.durable(log.chain, log.seq)
        while uploader.step():
            pass
    monkeypatch.chdir(tmp_path)
    duckdb.sql(f"COPY ({duckdb_query()}) TO 'duck.csv' (HEADER)")
    with open("duck.csv", newline="") as handle:
        duck = [(row["chain"], int(row["seq"])) for row in csv.DictReader(handle)]

    out, err = io.StringIO(), io.StringIO()
    assert run_query([f"file://{tmp_path}/archive"], Filters(team="billing"), "csv", [],
                     False, 1, out, err) == 0, err.getvalue()
    ours = [(row["chain"], int(row["seq"]))
            for row in csv.DictReader(io.StringIO(out.getvalue(), newline=""))]
    assert len(ours) == 42
    assert duck == ours
