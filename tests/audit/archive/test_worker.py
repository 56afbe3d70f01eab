"""The archive worker as the gateway runs it (its own process, started by `Archiver`), against
a real S3 API on loopback behind a proxy that can take the store away."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit.archive.archiver import Archiver
from tests.audit.archive.chains import ChainFiles
from tests.audit.archive.conftest import Proxy, S3Server


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def archived_lines(server: S3Server, bucket: str, chain: str) -> bytes:
    objects = server.objects(bucket, f"fleet/{chain}/")
    return b"".join(data for name, data in sorted(objects.items()) if name.endswith(".jsonl"))


@pytest.fixture
def via_proxy(s3_server: S3Server, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_server.env(proxy.endpoint).items():
        monkeypatch.setenv(key, value)


def test_a_store_down_for_a_while_holds_the_archive_back_then_it_catches_up(
        tmp_path: Path, s3_server: S3Server, proxy: Proxy, bucket: str, via_proxy: None,
) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")
    results: Counter[str] = Counter()

    async def scenario() -> None:
        archiver = Archiver(f"s3://{bucket}/fleet", str(log.path),
                            on_upload=lambda result: results.update([result]))
        archiver.start()
        try:
            log.add(10)
            archiver.checkpoint_durable(log.chain, log.checkpoint())
            await until(lambda: archiver.archived_through(log.chain) == log.seq, 15, "archive")
            assert archiver.lag(log.chain) == 0

            proxy.down()
            for _ in range(3):
                log.add(10)
                archiver.checkpoint_durable(log.chain, log.checkpoint())
                await asyncio.sleep(0.5)
            await until(lambda: results["failure"] >= 2, 15, "failed uploads")
            behind = archiver.lag(log.chain)
            assert behind == 33  # three segments written, none archived

            proxy.up()
            await until(lambda: archiver.archived_through(log.chain) == log.seq, 30, "catch up")
            assert archiver.lag(log.chain) == 0
        finally:
            await archiver.close()

    asyncio.run(scenario())
    assert archived_lines(s3_server, bucket, log.chain) == log.text(1, log.seq)
    # Four segments and four notes; a note put before a failed segment is put again (the
    # same bytes: success) when the segment is retried.
    assert results["success"] >= 8
    assert results["conflict"] == 0


def test_a_worker_killed_mid_upload_is_restarted_and_resumes_from_the_archive(
        tmp_path: Path, s3_server: S3Server, proxy: Proxy, bucket: str, via_proxy: None,
) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")

    async def scenario() -> None:
        archiver = Archiver(f"s3://{bucket}/fleet", str(log.path))
        archiver.start()
        try:
            log.add(5)
            archiver.checkpoint_durable(log.chain, log.checkpoint())
            await until(lambda: archiver.archived_through(log.chain) == log.seq, 15, "archive")
            proxy.stall()  # the next PUT is sent and never answered
            log.add(5)
            archiver.checkpoint_durable(log.chain, log.checkpoint())
            await until(lambda: bool(proxy.held), 10, "an upload in flight")
            pid = archiver.worker_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await until(lambda: archiver.worker_pid not in (None, pid), 10, "a new worker")
            proxy.up()
            await until(lambda: archiver.archived_through(log.chain) == log.seq, 30, "resume")
        finally:
            await archiver.close()

    asyncio.run(scenario())
    assert archived_lines(s3_server, bucket, log.chain) == log.text(1, log.seq)


def test_at_close_the_worker_puts_what_is_due_then_exits(tmp_path: Path) -> None:
    log = ChainFiles(tmp_path / "audit.jsonl")
    log.add(3)
    cp = log.checkpoint()

    async def scenario() -> float:
        archiver = Archiver(f"file://{tmp_path}/archive", str(log.path))
        archiver.start()
        await until(lambda: archiver.worker_pid is not None, 10, "the worker")
        archiver.checkpoint_durable(log.chain, cp)
        started = time.monotonic()
        await archiver.close()
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert took < 5
    segment = tmp_path / "archive" / log.chain / f"{1:020d}-{cp:020d}.jsonl"
    assert segment.read_bytes() == log.text(1, cp)


def test_the_worker_takes_exactly_its_two_options_and_says_so_in_one_line() -> None:
    for argv in ([], ["--archive", "file:///x"], ["--audit-path", "a", "--archive", "b", "c"],
                 ["--audit-path", "a", "--bogus", "b"]):
        done = subprocess.run([sys.executable, "-m", "gateway.audit.archive.worker", *argv],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, argv
        assert done.stderr.count("\n") == 1 and "usage:" in done.stderr


def test_a_bad_archive_url_is_reported_for_the_gateway_to_log(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.audit.archive.worker", "--archive",
                           "ftp://nowhere/x", "--audit-path", str(tmp_path / "audit.jsonl")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr == ""
    report = json.loads(done.stdout)
    assert set(report) == {"unavailable"} and "ftp" in report["unavailable"]


def test_the_worker_loads_no_logging_library() -> None:
    code = ("import sys, gateway.audit.archive.worker as w; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('structlog', 'logging', 'argparse', 'dataclasses')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.stdout.strip() == "[]", done.stdout
