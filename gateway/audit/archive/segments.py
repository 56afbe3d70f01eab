"""The segments to archive, read back from the gateway's own audit files.

A segment is the exact lines of one chain from a given seq up to and including the next
`audit.checkpoint` record. The uploader reads them from the files (rotated `<path>.NNNNNN`,
oldest first, then the live `<path>`) rather than being handed them, so a restart, a crash or
a worker that fell behind reads the very same bytes, and the gateway keeps nothing in memory
for the archive.

Reading goes on from where the last segment ended (the file's device and inode, and the
offset), so archiving costs one read of each line; only a fresh start scans for its first seq.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import NamedTuple

CHECKPOINT_EVENT = "audit.checkpoint"
_ROTATED_DIGITS = 6
_MAX_LINE = 16 * 1024 * 1024
_TAIL = 1 << 20  # bytes read back from the end of a file to find its last record


class SegmentError(Exception):
    """The local files do not hold the records asked for as one chain (logged, retried)."""


class Segment(NamedTuple):
    chain: str
    first: int
    last: int
    lines: bytes
    note: str | None
    """The checkpoint's signed note, when it has one."""
    tree_size: int


class _Start(NamedTuple):
    chain: str | None
    seq: int


def log_files(path: str) -> list[str]:
    """The files of a log, oldest first: the rotated ones, then the live one."""
    rotated = sorted(glob.glob(glob.escape(path) + "." + "[0-9]" * _ROTATED_DIGITS))
    return [*rotated, path]


class LocalLines:
    """Segments of one log's chains, read from its files."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._starts: dict[tuple[int, int], _Start] = {}  # (dev, ino) -> first record
        self._cursor: tuple[int, int, int, int] | None = None  # dev, ino, offset, next seq

    def head(self) -> tuple[str, int] | None:
        """The chain and seq of the last whole record in the files (what a start resumes)."""
        for path in reversed(log_files(self.path)):
            try:
                with open(path, "rb") as handle:
                    size = handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, size - _TAIL))
                    tail = handle.read()
            except OSError:
                continue
            for raw in reversed(tail.split(b"\n")[:-1]):
                try:
                    record = _parse(raw)
                except SegmentError:
                    continue
                chain, seq = record.get("chain"), record.get("seq")
                if isinstance(chain, str) and isinstance(seq, int):
                    return chain, seq
                return None  # an earlier version's record: nothing to archive
        return None

    def first_seq(self, chain: str) -> int:
        """The first seq of `chain` in the local files (1 unless older files were deleted)."""
        files = self._chain_files(chain)
        if not files:
            raise SegmentError(f"no local audit file holds chain {chain}")
        return min(start.seq for _, _, start in files)

    def next_segment(self, chain: str, first: int, upto: int) -> Segment | None:
        """The records of `chain` from seq `first` through the first checkpoint at or before
        seq `upto`; None while no such checkpoint is in the files."""
        lines: list[bytes] = []
        expected = first
        for raw, offset, ident in self._lines_from(chain, first):
            record = _parse(raw)
            seq = record.get("seq")
            if record.get("chain") != chain or seq != expected:
                raise SegmentError(
                    f"the local audit files do not hold chain {chain} contiguously at seq "
                    f"{expected} (found seq {seq!r} of chain {record.get('chain')!r})")
            if expected > upto:
                return None
            lines.append(raw)
            expected += 1
            if record.get("event") == CHECKPOINT_EVENT:
                self._cursor = (*ident, offset, expected)
                note = record.get("note")
                size = record.get("tree_size")
                return Segment(chain, first, seq, b"".join(lines),
                               note if isinstance(note, str) else None,
                               size if isinstance(size, int) else seq - 1)
        return None

    def _lines_from(self, chain: str, first: int) -> Iterator[tuple[bytes, int, tuple[int, int]]]:
        """Each whole line from seq `first` on, with the offset after it and its file."""
        files = self._chain_files(chain)
        start_index, start_offset = 0, 0
        cursor = self._cursor
        found_cursor = False
        if cursor is not None and cursor[3] == first:
            for index, (_, ident, _) in enumerate(files):
                if ident == cursor[:2]:
                    start_index, start_offset, found_cursor = index, cursor[2], True
        if not found_cursor:
            candidates = [i for i, (_, _, start) in enumerate(files) if start.seq <= first]
            start_index = candidates[-1] if candidates else 0
        skipping = not found_cursor
        for path, ident, _ in files[start_index:]:
            try:
                handle = open(path, "rb")  # closed below, across yields
            except FileNotFoundError:
                continue  # deleted or rotated meanwhile; the next call finds it again
            with handle:
                if (os.fstat(handle.fileno()).st_dev, os.fstat(handle.fileno()).st_ino) != ident:
                    raise SegmentError("the audit files changed while being read")
                handle.seek(start_offset)
                start_offset = 0
                offset = handle.tell()
                while raw := handle.readline(_MAX_LINE):
                    if not raw.endswith(b"\n"):
                        return  # a line being written, or torn: not durable yet
                    offset += len(raw)
                    if skipping:
                        seq = _parse(raw).get("seq")
                        if not isinstance(seq, int) or seq < first:
                            continue
                        skipping = False
                    yield raw, offset, ident

    def _chain_files(self, chain: str) -> list[tuple[str, tuple[int, int], _Start]]:
        files = []
        for path in log_files(self.path):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            ident = (st.st_dev, st.st_ino)
            start = self._starts.get(ident)
            if start is None:
                start = _first_record(path)
                if start is None:
                    continue  # empty (just rotated)
                self._starts[ident] = start
            if start.chain == chain:
                files.append((path, ident, start))
        return files


def _first_record(path: str) -> _Start | None:
    try:
        with open(path, "rb") as handle:
            raw = handle.readline(_MAX_LINE)
    except OSError:
        return None
    if not raw.endswith(b"\n"):
        return None
    record = _parse(raw)
    seq, chain = record.get("seq"), record.get("chain")
    if not isinstance(seq, int):
        return None
    return _Start(chain if isinstance(chain, str) else None, seq)


def _parse(raw: bytes) -> dict[str, object]:
    try:
        record = json.loads(raw)
    except ValueError:
        raise SegmentError("a line of the local audit files is not JSON") from None
    if not isinstance(record, dict):
        raise SegmentError("a line of the local audit files is not a record")
    return record
