"""A proof index knows its files by inode, size, time and their first and last bytes."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from gateway.audit import index_sources as sources


def test_a_file_is_the_same_grown_or_changed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"a" * 10000)
    known = sources.identify(str(path), 3, consumed=10000, lines=1)
    assert sources.compare(known, str(path)) == (sources.SAME, known)
    with open(path, "ab") as grown:
        grown.write(b"b" * 10)
    state, now = sources.compare(known, str(path))
    assert state == sources.GROWN and now is not None
    assert (now.id, now.size, now.consumed, now.lines) == (3, 10010, 10000, 1)
    moved = tmp_path / "audit.jsonl.000001"
    os.rename(path, moved)
    assert sources.compare(now, str(moved)) == (sources.SAME, sources.SourceFile(
        **{**now.to_json(), "path": str(moved)}))
    for edit in (b"X", b"a" * 9999 + b"X"):  # first bytes, last bytes
        moved.write_bytes(edit + (b"a" * 10010)[len(edit):])
        assert sources.compare(now, str(moved)) == (sources.CHANGED, None)


def test_a_touched_file_of_the_same_size_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"a" * 20000)
    known = sources.identify(str(path), 0)
    path.write_bytes(b"a" * 9000 + b"X" + b"a" * 10999)  # the middle only
    os.utime(path, ns=(known.mtime_ns + 10**9, known.mtime_ns + 10**9))
    assert sources.compare(known, str(path))[0] == sources.CHANGED


def test_a_gzip_file_never_grows_and_reads_uncompressed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"seq":1}\n'))
    known = sources.identify(str(path), 0)
    assert known.gzip
    with sources.open_records(known) as stream:
        assert stream.read() == b'{"seq":1}\n'
    with open(path, "ab") as grown:
        grown.write(gzip.compress(b'{"seq":2}\n'))
    assert sources.compare(known, str(path))[0] == sources.CHANGED


def test_entries_round_trip_and_odd_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x\n")
    known = sources.identify(str(path), 1)
    assert sources.SourceFile.from_json(known.to_json()) == known
    for bad in ({**known.to_json(), "size": -1}, {**known.to_json(), "extra": 1},
                {**known.to_json(), "gzip": 1}, []):
        try:
            sources.SourceFile.from_json(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
