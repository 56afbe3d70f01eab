"""What the audit tools read: files (plain, gzip, CRI), folders without the gateway's lock and
state files, stdin, and archive URLs (a folder archive here; S3 in tests/audit/archive)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from gateway.audit import inputs
from gateway.audit.archive import location, opening
from tests.audit.archive.chains import ChainFiles


def read_all(items: list[inputs.Input]) -> list[tuple[str, bool, list[bytes]]]:
    out = []
    for item in items:
        with item.open() as handle:
            lines = [line for _, line in inputs.records(handle)] if not item.note else [
                handle.read()]
        out.append((item.name, item.note, lines))
    return out


def test_a_folder_is_read_recursively_without_lock_state_and_temporary_files(
        tmp_path: Path) -> None:
    (tmp_path / "pod-a").mkdir()
    log = ChainFiles(tmp_path / "pod-a" / "audit.jsonl")
    log.add(2)
    log.rotate()
    log.add(1)
    for skipped in ("audit.jsonl.lock", "audit.jsonl.state", ".hidden", "x.tmp"):
        (tmp_path / "pod-a" / skipped).write_text("not records\n")
    found = inputs.expand([str(tmp_path)])
    assert [Path(i.name).name for i in found] == ["audit.jsonl", "audit.jsonl.000001"]
    assert sum(len(lines) for *_, lines in read_all(found)) == log.seq


def test_gzip_and_cri_files_come_out_as_the_audit_lines(tmp_path: Path) -> None:
    line = b'{"seq":1,"event":"x"}'
    (tmp_path / "0.log.20261128-120000.gz").write_bytes(gzip.compress(
        b"2026-11-28T12:00:00.1Z stdout P " + line[:5] + b"\n"
        b"2026-11-28T12:00:00.2Z stderr F {\"event\":\"log\"}\n"
        b"2026-11-28T12:00:00.3Z stdout F " + line[5:] + b"\n"))
    (found,) = inputs.expand([str(tmp_path / "0.log.20261128-120000.gz")])
    assert read_all([found])[0][2] == [line + b"\n"]


def test_stdin_is_one_input() -> None:
    (found,) = inputs.expand(["-"], stdin=io.BufferedReader(io.BytesIO(b'{"a":1}\n')))
    assert read_all([found]) == [("-", False, [b'{"a":1}\n'])]


def test_an_archive_url_lists_segments_and_checkpoint_notes(tmp_path: Path) -> None:
    archive = opening.open_store(f"file://{tmp_path}/archive")
    chain = "c" * 32
    archive.create(location.segment_name(chain, 1, 2), b'{"seq":1}\n{"seq":2}\n')
    archive.create(location.checkpoint_name(chain, 1), b"origin\n1\nroot\n\n- sig\n")
    archive.create("README", b"not ours\n")
    got = read_all(inputs.expand([f"file://{tmp_path}/archive"]))
    assert [(Path(n).name, note) for n, note, _ in got] == [
        (f"{1:020d}-{2:020d}.jsonl", False), (f"{1:020d}", True)]
    # The same archive given as a folder reads the same way.
    as_folder = read_all(inputs.expand([str(tmp_path / "archive")]))
    assert [(Path(n).name, note) for n, note, _ in as_folder] == [
        ("README", False), (f"{1:020d}-{2:020d}.jsonl", False), (f"{1:020d}", True)]


@pytest.mark.parametrize(("argument", "message"), [
    ("missing.jsonl", "no such file"),
    ("file:///nonexistent-archive-folder", "no such folder"),
    ("s3://UPPER/x", "valid bucket"),
])
def test_arguments_that_cannot_be_read_are_usage_errors(
        tmp_path: Path, argument: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(inputs.InputError, match=message):
        inputs.expand([argument])


def test_a_file_given_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    with pytest.raises(inputs.InputError, match="given twice"):
        inputs.expand([str(tmp_path / "a.jsonl"), str(tmp_path)])
