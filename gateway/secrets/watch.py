"""Files the gateway re-reads while it runs: the upstream token, the HMAC key, and others.

A `WatchedFile` is polled, never trusted to signal: a Kubernetes secret rotation swaps the
`..data` symlink atomically, which inotify does not see reliably, and a file rewritten in
place can be caught half-written. So every poll reads the file again, and:

- only a regular file is read: a FIFO or a device would block, so it is a problem instead;
- the read runs in a thread, so a slow or stuck file system never stalls the event loop;
- a failed read is retried at the next poll (a `chmod` or a freed file descriptor recovers);
- a change is adopted only when two reads one poll apart agree, so a file caught
  half-written is never used. A rotation is therefore picked up within two polls (about 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable

import structlog

POLL_SECONDS = 0.5
MAX_WATCHED_BYTES = 1 << 20

log = structlog.get_logger("gateway.watch")

# What one read saw: the bytes, or why there are none.
_Reading = tuple[bytes | None, str | None]


def read_regular_file(path: str, *, what: str, max_bytes: int) -> bytes:
    """The bytes of `path` (symlinks followed), if it is a regular file; else `OSError`.

    Opened non-blocking, so a FIFO put in the file's place can't block the open.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{what} file can't be read (not a regular file)")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise OSError(f"{what} file can't be read (larger than {max_bytes} bytes)")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_problem(what: str, exc: OSError) -> str:
    """Why a read failed, for logs and `/readyz`: the OS's reason, never the file's bytes."""
    if isinstance(exc, FileNotFoundError):
        return f"{what} file is missing"
    return f"{what} file can't be read ({exc.strerror})" if exc.strerror else str(exc)


class WatchedFile:
    """A polled file's last agreed content, or why there is none."""

    def __init__(self, path: str, *, what: str, max_bytes: int = MAX_WATCHED_BYTES) -> None:
        self.path = path
        self.what = what
        self.max_bytes = max_bytes
        self.content: bytes | None = None
        self.problem: str | None = "not loaded yet"
        self._candidate: _Reading | None = None

    def _read(self) -> _Reading:
        try:
            return read_regular_file(self.path, what=self.what, max_bytes=self.max_bytes), None
        except OSError as exc:
            return None, read_problem(self.what, exc)

    def load(self) -> bool:
        """Read now and adopt what was read (start-up, `check-config`)."""
        return self._adopt(self._read())

    async def poll(self) -> bool:
        """Read again, off the event loop; True when the adopted content or problem changed."""
        reading = await asyncio.to_thread(self._read)
        if reading == (self.content, self.problem):
            self._candidate = None
            return False
        if reading != self._candidate:
            self._candidate = reading  # new: adopt it only if the next poll agrees
            return False
        return self._adopt(reading)

    def _adopt(self, reading: _Reading) -> bool:
        self._candidate = None
        before = (self.content, self.problem)
        self.content, self.problem = reading
        return reading != before


class Watcher:
    """Polls its files every `POLL_SECONDS` and calls each one's `on_change` after a change."""

    def __init__(self, interval: float = POLL_SECONDS) -> None:
        self.interval = interval
        self._files: list[tuple[WatchedFile, Callable[[], None]]] = []

    def add(self, file: WatchedFile, on_change: Callable[[], None]) -> None:
        self._files.append((file, on_change))

    async def poll_once(self) -> None:
        for file, on_change in self._files:
            try:
                changed = await file.poll()
            except Exception:  # one broken file must not stop the others being watched
                log.exception("watch.poll_failed", what=file.what)
                continue
            if changed:
                try:
                    on_change()
                except Exception:
                    log.exception("watch.on_change_failed", what=file.what)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(Exception):
                await self.poll_once()
