"""gateway.secrets.watch: polled files that never block the loop and never adopt a half-written
file."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest

from gateway.secrets import watch
from gateway.secrets.watch import WatchedFile, Watcher


def poll(file: WatchedFile) -> bool:
    return asyncio.run(file.poll())


def test_load_adopts_the_first_read_at_once(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"one")
    file = WatchedFile(str(tmp_path / "f"), what="thing")
    assert file.load() is True
    assert (file.content, file.problem) == (b"one", None)


def test_a_change_is_adopted_only_when_two_polls_agree(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    file = WatchedFile(str(path), what="thing")
    file.load()
    path.write_bytes(b"tw")  # caught half-written
    assert poll(file) is False and file.content == b"one"
    path.write_bytes(b"two")  # finished: differs from the first sighting, not yet agreed
    assert poll(file) is False and file.content == b"one"
    assert poll(file) is True and file.content == b"two"
    assert poll(file) is False


def test_a_change_reverted_before_the_second_poll_is_never_adopted(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    file = WatchedFile(str(path), what="thing")
    file.load()
    path.write_bytes(b"o")
    assert poll(file) is False
    path.write_bytes(b"one")
    assert poll(file) is False
    path.write_bytes(b"o")  # the old sighting was forgotten: this one needs agreement again
    assert poll(file) is False and file.content == b"one"


def test_a_missing_file_is_a_problem_after_two_polls(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    file = WatchedFile(str(path), what="thing")
    file.load()
    path.unlink()
    assert poll(file) is False
    assert poll(file) is True
    assert (file.content, file.problem) == (None, "thing file is missing")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    file = WatchedFile(str(path), what="thing")
    started = time.monotonic()
    file.load()
    assert time.monotonic() - started < 1.0
    assert file.content is None
    assert file.problem == "thing file can't be read (not a regular file)"


def test_a_device_is_refused(tmp_path: Path) -> None:
    file = WatchedFile("/dev/zero", what="thing")
    file.load()
    assert file.problem == "thing file can't be read (not a regular file)"


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 2000)
    file = WatchedFile(str(tmp_path / "big"), what="thing", max_bytes=1000)
    file.load()
    assert file.content is None and "larger than 1000 bytes" in str(file.problem)


def test_a_failed_read_is_retried_at_every_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file's identity never changes here: only the read fails (EMFILE, as when a burst
    # of connections used every descriptor), and recovers.
    path = tmp_path / "f"
    path.write_bytes(b"one")
    real_open = os.open
    failing = True

    def flaky_open(name: str, flags: int, *args: int) -> int:
        if failing and name == str(path):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(name, flags, *args)

    monkeypatch.setattr(watch.os, "open", flaky_open)
    file = WatchedFile(str(path), what="thing")
    file.load()
    assert file.problem == "thing file can't be read (Too many open files)"
    failing = False
    poll(file)
    assert poll(file) is True and file.content == b"one"


def test_the_read_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(b"one")
    file = WatchedFile(str(tmp_path / "f"), what="thing")
    slow_read = file._read

    def stuck() -> tuple[bytes | None, str | None]:
        time.sleep(0.5)  # a stuck file system
        return slow_read()

    monkeypatch.setattr(file, "_read", stuck)

    async def main() -> float:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await file.poll()
        task.cancel()
        return ticks

    assert asyncio.run(main()) >= 10  # the loop kept running while the read was stuck


def test_watcher_calls_on_change_and_survives_a_failing_callback(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    good, bad = WatchedFile(str(path), what="good"), WatchedFile(str(path), what="bad")
    good.load()
    bad.load()
    seen: list[bytes | None] = []

    def explode() -> None:
        raise RuntimeError("boom")

    watcher = Watcher(interval=0.01)
    watcher.add(bad, explode)
    watcher.add(good, lambda: seen.append(good.content))
    path.write_bytes(b"two")

    async def main() -> None:
        await watcher.poll_once()
        await watcher.poll_once()

    asyncio.run(main())
    assert seen == [b"two"]
