"""`chroma-sync-gateway audit query`: who cancelled what, from verified audit records.

One row per `cancel.result` record that matches every filter given, oldest first (by `ts`,
then chain and seq), with the columns `COLUMNS`. The filters compare the result record's own
fields; `--since` is inclusive and `--until` exclusive, both RFC 3339. The caller feeds it the
records that verified (`Query.add` per record); rows are written only when everything did.

Formats: `jsonl` (one JSON object per row with exactly the columns), `csv` (a header line,
then RFC 4180 rows: CRLF line ends, fields quoted when needed, null as an empty field) and
`table` (aligned columns for a person; null as `-`, control characters escaped, long values
cut).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, TextIO

from gateway.audit import compiled
from gateway.audit.row_runs import RowRuns, Rows, row_of

COLUMNS = ("ts", "chain", "seq", "team", "key_id", "invocation_id", "database", "collection",
           "source_id", "outcome", "status", "error", "attempts", "batch_id", "request_id")
FORMATS = ("table", "jsonl", "csv")
RESULT_EVENT = "cancel.result"
_TABLE_WIDTH = 64
_CSV_BATCH = 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NEVER = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_CHAIN_COLUMN, _SEQ_COLUMN = COLUMNS.index("chain"), COLUMNS.index("seq")

Row = tuple[Any, ...]


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (or a date: its midnight, UTC); ValueError names what is wrong."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!a} is not an RFC 3339 time (e.g. 2026-11-28T12:00:00Z)") from None
    if parsed.tzinfo is None:
        if "T" in value.upper() or " " in value:
            raise ValueError(f"{text!a} has no time zone (add Z or an offset such as +01:00)")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _record_time(record: Mapping[str, Any]) -> datetime | None:
    ts = record.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    team: str | None = None
    key_id: str | None = None
    invocation: str | None = None
    database: str | None = None
    collection: str | None = None
    source: str | None = None
    outcomes: frozenset[str] = frozenset()
    batch: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def needles(self) -> tuple[bytes, ...]:
        """Bytes every matching record's line holds: the event, and each exact-match filter as
        its canonical member (`"team":"billing"`), so most lines are passed over unparsed."""
        wanted = [("event", RESULT_EVENT), ("team", self.team), ("key_id", self.key_id),
                  ("database", self.database), ("collection", self.collection),
                  ("batch_id", self.batch)]
        return tuple(json.dumps({name: value}, ensure_ascii=False, separators=(",", ":"))
                     [1:-1].encode() for name, value in wanted if value is not None)

    @cached_property
    def exact(self) -> tuple[tuple[str, str], ...]:
        """The filters a field must equal, by field name."""
        return tuple((name, wanted) for name, wanted in (
            ("team", self.team), ("key_id", self.key_id), ("database", self.database),
            ("collection", self.collection), ("batch_id", self.batch)) if wanted is not None)

    def match(self, record: Mapping[str, Any]) -> bool:
        if record.get("event") != RESULT_EVENT:
            return False
        for name, wanted in self.exact:
            if record.get(name) != wanted:
                return False
        # Ids are compared as the gateway records them: lowercase (UUIDs in canonical form).
        for name, wanted_id in (("invocation_id", self.invocation), ("source_id", self.source)):
            value = record.get(name)
            if wanted_id is not None and (not isinstance(value, str)
                                          or value.lower() != wanted_id.strip().lower()):
                return False
        if self.outcomes and record.get("outcome") not in self.outcomes:
            return False
        if self.since is not None or self.until is not None:
            ts = _record_time(record)
            if ts is None:
                return False
            if self.since is not None and ts < self.since:
                return False
            if self.until is not None and ts >= self.until:
                return False
        return True


class Query:
    """The rows of the records that match, with their sort keys (`row_runs`): in memory, or
    past `row_runs.RUN_ROWS` in sorted runs in `folder` (which the caller removes)."""

    def __init__(self, filters: Filters, folder: str | None = None) -> None:
        self.filters = filters
        self._runs = RowRuns(folder)

    @property
    def rows(self) -> Rows:
        return self._runs.rows

    def add(self, record: Mapping[str, Any], chain: str) -> None:
        """One verified record of `chain` (its id, or the file's name for an old log)."""
        if not self.filters.match(record):
            return
        values = tuple(map(record.get, COLUMNS))
        if values[_CHAIN_COLUMN] != chain:  # an old log's record: its file's name instead
            values = (*values[:_CHAIN_COLUMN], chain, *values[_CHAIN_COLUMN + 1:])
        seq = values[_SEQ_COLUMN]
        ts = _record_time(record)
        self._runs.add((_NEVER if ts is None else (ts - _EPOCH) // _MICROSECOND, chain,
                        seq if isinstance(seq, int) else 0, values))

    def sorted_rows(self) -> list[Row]:
        return list(map(row_of, self.rows.sorted()))


def write(rows: Iterable[Row], fmt: str, out: TextIO) -> None:
    """The rows in `fmt`; `csv` and `jsonl` stream them (a table is measured first)."""
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(dict(zip(COLUMNS, row, strict=True))) + "\n")
    elif fmt == "csv":
        # A batch of rows to each write: a text stream's write costs as much as a row's CSV.
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        rows = iter(rows)
        csv_rows = compiled.speedups.csv_rows if compiled.speedups is not None else None
        out.write(",".join(COLUMNS) + "\r\n")
        while batch := list(itertools.islice(rows, _CSV_BATCH)):
            text = csv_rows(batch) if csv_rows is not None else None
            if text is None:  # a value csv_rows leaves to the csv module
                writer.writerows(batch)  # None: an empty field
                text = buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
            out.write(text)
    elif fmt == "table":
        _table(rows, out)
    else:
        raise ValueError(f"unknown format {fmt!a} (one of {', '.join(FORMATS)})")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value)
    # Attacker-chosen text must not drive the reader's terminal.
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return shown if len(shown) <= _TABLE_WIDTH else shown[: _TABLE_WIDTH - 3] + "..."


def _table(rows: Iterable[Row], out: TextIO) -> None:
    cells = [list(COLUMNS)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    for line in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                  + "\n")
