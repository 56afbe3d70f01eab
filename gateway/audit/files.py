"""The audit log's files: the one-writer lock, the live file, its identity, appends, rotation.

- One writer per chain: an exclusive `flock` on `<path>.lock` is held for the process lifetime.
- The file is the one the gateway opened: `still_named()` is one `stat` of `audit.path`
  compared with the device and inode of the open descriptor (taken once, at open).
- An append is whole lines or nothing: a failed or short write is rolled back with
  `ftruncate` to the last good size, so a partial line is never left for the next record to be
  glued onto.
- Rotation (`audit.max_bytes`) renames the live file to `<path>.NNNNNN`, numbered on from the
  last one, and opens a new live file; the chain goes on across them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
from collections.abc import Callable

ROTATED_DIGITS = 6


class AuditLocked(Exception):
    """Another process already writes this audit chain."""


class LogFile:
    """The live file of one chain and the lock that makes this process its one writer."""

    def __init__(
        self, path: str, *, fsync: bool, max_bytes: int | None,
        on_rotate: Callable[[str], None],
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._max_bytes = max_bytes
        self._on_rotate = on_rotate  # given the rotated file's name, after the rotation
        self.fd: int | None = None
        self.lock_fd: int | None = None
        self.size = 0  # bytes of the live file known to be whole records
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self.unsynced = False  # appended since the last fsync, with `audit.fsync` on

    # -- the lock and the descriptor ----------------------------------------------------------

    def lock(self) -> str | None:
        """Take the one-writer lock, or raise `AuditLocked`.

        A lock file that can't be opened (e.g. a missing folder) is not fatal: its problem is
        returned, and the lock is tried again at the next open.
        """
        try:
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            return f"lock file can't be opened ({exc.strerror})"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AuditLocked(
                f"another process is writing the audit log {self.path}; "
                "one writer per chain (run one gateway process per audit.path)"
            ) from None
        self.lock_fd = fd
        return None

    def open_fd(self) -> int:
        """Open (or create) the live file for appending; its recovery comes before `adopt`."""
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fsync_dir(self.path)
        return fd

    def adopt(self, fd: int, size: int) -> None:
        """Write to `fd` from now on: `size` bytes of it are whole records."""
        self.fd = fd
        self.size = size
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        """Release the file (fsynced if writes are pending) and the lock."""
        if self.fd is not None:
            if self.unsynced:
                with contextlib.suppress(OSError):
                    os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    # -- identity -------------------------------------------------------------------------------

    def still_named(self) -> bool:
        """Whether `audit.path` still names the open file (True when it can't be told)."""
        if self.fd is None or self.identity is None:
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # can't tell (e.g. a permission change): the write itself decides
        return (st.st_dev, st.st_ino) == self.identity

    def replaced_since_opened(self) -> bool:
        """Before a reopen: whether `audit.path` no longer names the very file opened first.

        The chain must not go on in a new file that verifies on its own.
        """
        if self.identity is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self.identity

    # -- writing --------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """An empty write: checks the descriptor without adding a byte (raises OSError)."""
        assert self.fd is not None
        os.write(self.fd, b"")

    def append(self, data: bytes, sync: bool) -> None:
        """Append whole lines, or nothing: a short or failed write is rolled back."""
        assert self.fd is not None
        max_bytes = self._max_bytes
        if max_bytes is not None and self.size and self.size + len(data) > max_bytes:
            self._rotate()
        fd = self.fd
        start = self.size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, "short write")
                view = view[written:]
            if sync:
                # fdatasync: the data and the file size (all an appended record needs to be
                # read back after a crash), without the inode's timestamps; ~10% cheaper here.
                os.fdatasync(fd)
                self.unsynced = False
            else:
                self.unsynced = self._fsync
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            # If even the truncation failed, the tail is re-checked on reopen.
            with contextlib.suppress(OSError):
                self.size = os.fstat(fd).st_size
            if self.size != start:
                os.close(fd)
                self.fd = None
            raise
        self.size = start + len(data)

    def rotate(self) -> None:
        """Rotate now (at open: a log of an earlier version is closed, untouched)."""
        self._rotate()

    def _rotate(self) -> None:
        assert self.fd is not None
        os.fsync(self.fd)
        number = last_rotated_number(self.path) + 1
        target = f"{self.path}.{number:0{ROTATED_DIGITS}d}"
        os.rename(self.path, target)
        fsync_dir(self.path)
        os.close(self.fd)
        self.fd = None
        self.fd = self.open_fd()
        self.size = 0
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)
        self._on_rotate(os.path.basename(target))


def rotated_files(path: str) -> list[str]:
    """The numbered files of a rotated log, oldest first."""
    pattern = glob.escape(path) + "." + "[0-9]" * ROTATED_DIGITS
    return sorted(glob.glob(pattern))


def last_rotated(path: str) -> str | None:
    files = rotated_files(path)
    return files[-1] if files else None


def last_rotated_number(path: str) -> int:
    last = last_rotated(path)
    return int(last.rsplit(".", 1)[1]) if last else 0


def fsync_dir(path: str) -> None:
    """Make a create, rename or unlink durable: fsync the folder that holds it."""
    folder = os.path.dirname(os.path.abspath(path))
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
