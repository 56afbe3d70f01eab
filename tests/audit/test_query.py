"""`audit query`'s rows, filters and formats, checked against records written here."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit import chain as audit_chain
from gateway.audit.query import COLUMNS, Filters, Query, parse_time, write

CHAIN_A, CHAIN_B = "a" * 32, "b" * 32


def result(seq: int, ts: str, **fields: Any) -> dict[str, Any]:
    return {"ts": ts, "event": "cancel.result", "seq": seq, "chain": CHAIN_A,
            "request_id": f"req-{seq}", "invocation_id": f"0000000{seq}-0000-4000-8000-"
            f"000000000000", "team": "billing", "key_id": "k1", "client": "10.0.0.1",
            "outcome": "cancelled", "status": 200, "upstream_status": 200, "error": None,
            "duration_ms": 2.0, "database": "db1", "collection": "c1",
            "source_id": "5d3d2a1e-0000-4000-8000-00000000000a", "attempts": 1, **fields}


RECORDS = [
    (result(2, "2026-11-28T12:00:02.000Z"), CHAIN_A),
    ({"ts": "2026-11-28T12:00:01.000Z", "event": "cancel.attempt", "seq": 1,
      "outcome": "pending", "team": "billing"}, CHAIN_A),
    (result(5, "2026-11-28T12:00:01.500Z", team="search", key_id="k9", outcome="forbidden",
            status=403, error="forbidden", attempts=0), CHAIN_B),
    (result(3, "2026-11-28T12:00:03.000Z", batch_id="batch-1", database="db2",
            outcome="not_found", status=404, error="not_found"), CHAIN_A),
    (result(4, "2026-11-28T12:00:03.000Z", batch_id="batch-1", collection="c2"), CHAIN_B),
]


def rows(**filters: Any) -> list[tuple[Any, ...]]:
    query = Query(Filters(**filters))
    for record, chain in RECORDS:
        query.add(record, chain)
    return query.sorted_rows()


def seqs(found: list[tuple[Any, ...]]) -> list[tuple[str, int]]:
    return [(row[1][0], row[2]) for row in found]


def test_rows_are_results_only_oldest_first_then_by_chain() -> None:
    assert seqs(rows()) == [("b", 5), ("a", 2), ("a", 3), ("b", 4)]


@pytest.mark.parametrize(("filters", "expected"), [
    ({"team": "search"}, [("b", 5)]),
    ({"key_id": "k1"}, [("a", 2), ("a", 3), ("b", 4)]),
    ({"invocation": "00000003-0000-4000-8000-000000000000".upper()}, [("a", 3)]),
    ({"database": "db2"}, [("a", 3)]),
    ({"collection": "c2"}, [("b", 4)]),
    ({"source": "5D3D2A1E-0000-4000-8000-00000000000A"}, [("b", 5), ("a", 2), ("a", 3),
                                                         ("b", 4)]),
    ({"outcomes": frozenset({"forbidden", "not_found"})}, [("b", 5), ("a", 3)]),
    ({"batch": "batch-1"}, [("a", 3), ("b", 4)]),
    ({"since": parse_time("2026-11-28T12:00:02Z")}, [("a", 2), ("a", 3), ("b", 4)]),
    ({"until": parse_time("2026-11-28T13:00:02+01:00")}, [("b", 5)]),  # exclusive
    ({"team": "billing", "outcomes": frozenset({"cancelled"}), "batch": "batch-1"},
     [("b", 4)]),
    ({"team": "nobody"}, []),
])
def test_each_filter_keeps_exactly_the_matching_results(
        filters: dict[str, Any], expected: list[tuple[str, int]]) -> None:
    assert seqs(rows(**filters)) == expected


def test_jsonl_rows_have_exactly_the_columns() -> None:
    out = io.StringIO()
    write(rows(team="search"), "jsonl", out)
    (line,) = out.getvalue().splitlines()
    parsed = json.loads(line)
    assert tuple(parsed) == COLUMNS
    assert parsed["chain"] == CHAIN_B and parsed["status"] == 403 and parsed["batch_id"] is None


def test_a_row_names_the_chain_it_was_verified_in_or_an_old_logs_file() -> None:
    query = Query(Filters())
    old = {k: v for k, v in result(1, "2026-11-28T12:00:00.000Z").items() if k != "chain"}
    query.add(old, "audit-2025.jsonl")
    query.add(result(2, "2026-11-28T12:00:01.000Z"), CHAIN_A)
    query.add(result(3, "2026-11-28T12:00:02.000Z"), CHAIN_B)  # the record says A: B verified it
    column = COLUMNS.index("chain")
    assert [row[column] for row in query.sorted_rows()] == ["audit-2025.jsonl", CHAIN_A, CHAIN_B]


@pytest.mark.usefixtures("each_way")
def test_csv_is_rfc_4180_with_a_header_and_quoted_fields() -> None:
    query = Query(Filters())
    query.add(result(1, "2026-11-28T12:00:00.000Z", collection='we,ird "name"\nline'), CHAIN_A)
    out = io.StringIO(newline="")
    write(query.sorted_rows(), "csv", out)
    text = out.getvalue()
    assert text.startswith(",".join(COLUMNS) + "\r\n")
    assert '"we,ird ""name""\nline"' in text
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[1][COLUMNS.index("collection")] == 'we,ird "name"\nline'
    assert parsed[1][COLUMNS.index("batch_id")] == ""  # null


def test_the_table_aligns_columns_and_escapes_control_characters() -> None:
    query = Query(Filters())
    query.add(result(1, "2026-11-28T12:00:00.000Z", team="evil\x1b[2J"), CHAIN_A)
    out = io.StringIO()
    write(query.sorted_rows(), "table", out)
    header, line = out.getvalue().splitlines()
    assert "\x1b" not in line and "evil\\x1b[2J" in line
    assert header.index("team") == line.index("evil")
    assert line.split()[COLUMNS.index("batch_id")] == "-"


def test_times_without_a_zone_are_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        parse_time("2026-11-28T12:00:00")
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("yesterday")
    assert parse_time("2026-11-28").isoformat() == "2026-11-28T00:00:00+00:00"


@given(team=st.text(max_size=12), key=st.text(max_size=12), batch=st.one_of(st.none(),
       st.text(max_size=12)))
def test_every_record_a_filter_matches_holds_its_needles_in_its_canonical_line(
        team: str, key: str, batch: str | None) -> None:
    record = {"event": "cancel.result", "team": team, "key_id": key, "batch_id": batch,
              "seq": 1, "database": "db"}
    filters = Filters(team=team, key_id=key, batch=batch, database="db")
    try:
        line = audit_chain.canonical(record)
    except UnicodeEncodeError:
        return
    assert filters.match(record)
    needles = filters.needles()
    assert len(needles) == 4 + (batch is not None)
    assert all(needle in line for needle in needles)
    other = Filters(team=team + "x")
    assert not all(needle in line for needle in other.needles())


@pytest.mark.usefixtures("each_way")
def test_csv_writes_every_kind_of_value_as_the_csv_module_does() -> None:
    query = Query(Filters())
    values = ["plain", "", 'q"uote', "a,b", "cr\rlf\n", "caf\u00e9", "tab\there", " lead",
              True, 1.5, -(2**70), 2**62, 0, None, ["x", 1], {"k": "v"}]
    for n, value in enumerate(values, start=1):
        query.add(result(n, f"2026-11-28T12:00:{n:02d}.000Z", collection=value,
                         attempts=value), CHAIN_A)
    found = query.sorted_rows()
    for batch in (found, found[:1], []):
        out, expected = io.StringIO(newline=""), io.StringIO(newline="")
        write(batch, "csv", out)
        writer = csv.writer(expected, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        writer.writerows(batch)
        assert out.getvalue() == expected.getvalue()


def test_rows_sort_by_the_instant_whatever_the_offset_written() -> None:
    query = Query(Filters())
    query.add(result(1, "2026-11-28T12:30:00Z"), CHAIN_A)
    query.add(result(2, "2026-11-28T13:00:00+01:00"), CHAIN_A)  # 12:00 UTC
    query.add(result(3, "2026-11-28T12:00:00.000001Z"), CHAIN_A)
    query.add(result(4, "not a time"), CHAIN_A)  # no time: first
    assert [row[2] for row in query.sorted_rows()] == [4, 2, 3, 1]
