"""The uploader: segments cut at checkpoints with their notes, resumed from the archive,
nothing skipped on a failure, retried with a growing backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.audit.archive import location, opening, store
from gateway.audit.archive.segments import LocalLines
from gateway.audit.archive.uploader import BACKOFF_START, Uploader
from tests.audit.archive.chains import ChainFiles


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(uploader: Uploader) -> None:
    for _ in range(1000):
        if not uploader.step():
            return
    raise AssertionError("the uploader never went idle")


def archive_of(tmp_path: Path) -> store.Store:
    return opening.open_store(f"file://{tmp_path}/archive")


def files_in(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_each_checkpoint_closes_one_segment_of_the_exact_lines_and_its_note(
        tmp_path: Path) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")
    log.add(4)
    first_cp = log.checkpoint()
    log.add(3)
    log.rotate()  # the second segment spans two files
    log.add(2)
    second_cp = log.checkpoint(signed=False)
    log.add(5)  # after the last checkpoint: not archived yet
    reports: list[dict[str, Any]] = []
    uploader = Uploader(archive_of(tmp_path), LocalLines(str(log.path)), reports.append)
    uploader.durable(log.chain, log.seq)
    drain(uploader)

    c = log.chain
    assert files_in(tmp_path / "archive") == {
        location.segment_name(c, 1, first_cp): log.text(1, first_cp),
        location.checkpoint_name(c, first_cp - 1):
            f"chroma-sync-gateway/{c}\n{first_cp - 1}\nroot=\n\n— key sig\n".encode(),
        location.segment_name(c, first_cp + 1, second_cp): log.text(first_cp + 1, second_cp),
    }
    assert uploader.archived(c) == second_cp
    assert [r.get("archived") for r in reports if "archived" in r] == [
        0, first_cp, second_cp]


def test_a_restart_resumes_after_the_last_segment_in_the_archive(tmp_path: Path) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")
    log.add(3)
    first_cp = log.checkpoint()
    first = Uploader(archive_of(tmp_path), LocalLines(str(log.path)), lambda r: None)
    first.durable(log.chain, log.seq)
    drain(first)
    log.add(2)
    second_cp = log.checkpoint()

    puts: list[str] = []
    archive = archive_of(tmp_path)
    original = archive.create

    def counting(name: str, data: bytes) -> bool:
        puts.append(name)
        return original(name, data)

    archive.create = counting  # type: ignore[method-assign]
    later = Uploader(archive, LocalLines(str(log.path)), lambda r: None)
    later.durable(log.chain, second_cp)
    drain(later)
    assert puts == [location.checkpoint_name(log.chain, second_cp - 1),
                    location.segment_name(log.chain, first_cp + 1, second_cp)]


def test_a_note_put_before_a_crash_is_put_again_as_the_same_bytes(tmp_path: Path) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")
    log.add(2)
    cp = log.checkpoint()
    archive = archive_of(tmp_path)
    note = f"chroma-sync-gateway/{log.chain}\n{cp - 1}\nroot=\n\n— key sig\n".encode()
    archive.create(location.checkpoint_name(log.chain, cp - 1), note)  # then the crash
    reports: list[dict[str, Any]] = []
    uploader = Uploader(archive, LocalLines(str(log.path)), reports.append)
    uploader.durable(log.chain, cp)
    drain(uploader)
    assert [r["outcome"] for r in reports if "outcome" in r] == ["already_there", "created"]
    assert uploader.archived(log.chain) == cp


def test_a_name_taken_by_other_bytes_is_never_overwritten_and_holds_the_chain(
        tmp_path: Path) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")
    log.add(2)
    cp = log.checkpoint(signed=False)
    log.add(2)
    log.checkpoint(signed=False)
    archive = archive_of(tmp_path)
    taken = location.segment_name(log.chain, 1, cp)
    archive.create(taken, b"someone else's bytes\n")
    clock = Clock()
    reports: list[dict[str, Any]] = []
    uploader = Uploader(archive, LocalLines(str(log.path)), reports.append, clock)
    uploader.durable(log.chain, log.seq)
    drain(uploader)
    assert reports[-1]["upload"] == "conflict"
    assert "other content" in reports[-1]["problem"]
    clock.now += 3600
    drain(uploader)
    assert (tmp_path / "archive" / taken).read_bytes() == b"someone else's bytes\n"
    assert uploader.archived(log.chain) == 0  # nothing after it was put either
    assert [r["upload"] for r in reports if "upload" in r] == ["conflict", "conflict"]


def test_failures_back_off_doubling_and_nothing_is_skipped(tmp_path: Path) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")
    log.add(2)
    cp = log.checkpoint()
    (tmp_path / "archive").write_bytes(b"")  # a file where the folder should be
    clock = Clock()
    reports: list[dict[str, Any]] = []
    uploader = Uploader(archive_of(tmp_path), LocalLines(str(log.path)), reports.append, clock)
    uploader.durable(log.chain, cp)
    assert uploader.step() and reports.pop()["resumed"]
    delays = []
    for _ in range(4):
        assert uploader.step()
        delays.append(reports[-1]["retry_in"])
        assert not uploader.step()  # not before the backoff
        clock.now += reports[-1]["retry_in"] + 0.001  # it is rounded to ms
    assert all(r["upload"] == "failure" for r in reports)
    for n, delay in enumerate(delays):
        assert BACKOFF_START * 2**n * 0.8 <= delay <= BACKOFF_START * 2**n * 1.2
    (tmp_path / "archive").unlink()
    drain(uploader)
    assert uploader.archived(log.chain) == cp


def test_a_retained_suffix_is_archived_from_its_first_local_record(tmp_path: Path) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")
    log.add(3)
    log.checkpoint()
    log.rotate()
    log.add(3)
    cp = log.checkpoint()
    (tmp_path / "audit.jsonl.000001").unlink()  # deleted by audit.keep_files, never archived
    uploader = Uploader(archive_of(tmp_path), LocalLines(str(log.path)), lambda r: None)
    uploader.durable(log.chain, cp)
    drain(uploader)
    assert list(archive_of(tmp_path).names()) == [
        location.segment_name(log.chain, 6, cp),
        location.checkpoint_name(log.chain, cp - 1)]


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_a_long_chain_arrives_whole_in_either_store(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        url = f"s3://{request.getfixturevalue('bucket')}/fleet"
    else:
        url = f"file://{tmp_path}/archive"
    log = ChainFiles(tmp_path / "audit.jsonl")
    for n in range(20):
        log.add(25)
        log.checkpoint()
        if n % 7 == 6:
            log.rotate()
    archive = opening.open_store(url)
    uploader = Uploader(archive, LocalLines(str(log.path)), lambda r: None)
    uploader.durable(log.chain, log.seq)
    drain(uploader)
    segments = sorted(n for n in archive.names(log.chain + "/") if n.endswith(".jsonl"))
    assert len(segments) == 20
    assert b"".join(archive.read(n) for n in segments) == log.text(1, log.seq)
