"""Writing to stderr and stdout without ever stalling the gateway on a pipe that stops draining.

The operational log (stderr) and the `audit.stdout` mirror usually go to a pipe read by a log
collector. A blocking write to a full pipe would stop the event loop, and every cancel with
it. `BoundedWriter` writes without blocking: what the pipe does not take is buffered, up to
`MAX_BUFFERED` bytes, and written when the pipe is writable again (an event-loop writer
callback, or the next write); past the bound, whole writes (lines, or an audit batch) are
dropped and counted. Nothing is ever cut mid-line, so the reader sees whole lines and, in the
audit mirror, a gap in `seq`. The audit file itself is never affected.

A pipe is reopened through `/proc/self/fd` so that `O_NONBLOCK` is set on a description of
our own, not on one shared with the parent. Regular files and terminals are written as they
are: their writes do not wait on a reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from typing import IO

MAX_BUFFERED = 1 << 20  # bytes held while the pipe is full


class BoundedWriter:
    def __init__(
        self, fd: int, *, limit: int = MAX_BUFFERED,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.source = fd
        self.fd = _nonblocking(fd)
        self.limit = limit
        self.on_drop = on_drop  # called with the number of units (lines, records) dropped
        self.dropped = 0
        self._pending = bytearray()
        self._lock = threading.Lock()  # logging may be called from another thread
        self._loop: asyncio.AbstractEventLoop | None = None  # where the writer callback is

    def write(self, data: bytes, *, units: int = 1) -> bool:
        """Write `data` whole, now or later; False when it was dropped (the buffer is full)."""
        with self._lock:
            try:
                if self._pending:
                    self._drain()
                if not self._pending:
                    written = self._write_some(data)
                    if written == len(data):
                        return True
                    if written:  # a line begun is finished, whatever the bound
                        self._pending += data[written:]
                        self._watch()
                        return True
            except OSError:
                pass  # the reader is gone (EPIPE): counted as dropped below
            else:
                if len(self._pending) + len(data) <= self.limit:
                    self._pending += data
                    self._watch()
                    return True
            self.dropped += units
        if self.on_drop is not None:
            self.on_drop(units)
        return False

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._drain()

    def close(self, timeout: float = 1.0) -> None:
        """Write what is buffered, waiting at most `timeout` seconds for the reader."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._unwatch()
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(OSError, ValueError):
                    select.select([], [self.fd], [], left)
                if self._drain() < 0:
                    break

    def _write_some(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except InterruptedError:
            return 0
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return 0
            raise

    def _drain(self) -> int:
        try:
            written = self._write_some(self._pending)
        except OSError:
            # The reader is gone (EPIPE): nothing buffered will ever be read.
            self._pending.clear()
            return -1
        del self._pending[:written]
        if not self._pending:
            self._unwatch()
        return written

    def _on_writable(self) -> None:
        with self._lock:
            self._drain()

    def _watch(self) -> None:
        if not self._pending or self._loop is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop in this thread: the next write drains
        try:
            loop.add_writer(self.fd, self._on_writable)
        except (OSError, ValueError, NotImplementedError):
            return
        self._loop = loop

    def _unwatch(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.fd)
            self._loop = None


class TextStream:
    """A text stream over a `BoundedWriter`, for structlog and `logging` (one line a write)."""

    def __init__(self, writer: BoundedWriter) -> None:
        self.writer = writer

    def write(self, text: str) -> int:
        self.writer.write(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        self.writer.flush()

    def isatty(self) -> bool:
        return False


def writer_for(stream: IO[bytes] | IO[str], *, on_drop: Callable[[int], None] | None = None
               ) -> BoundedWriter | None:
    """A `BoundedWriter` on the stream's file descriptor, or None when it has none."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None  # e.g. a test's capture buffer
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
    return BoundedWriter(fd, on_drop=on_drop)


def _nonblocking(fd: int) -> int:
    """A descriptor of `fd`'s pipe or socket that never blocks; `fd` itself for anything else."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISCHR(mode):
        return fd
    if stat.S_ISFIFO(mode):
        with contextlib.suppress(OSError):
            return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(fd, False)  # a socket (or no /proc): the description is shared
    return fd
