"""The archive's object stores: create-only puts, listing, reading.

Two kinds behind one small interface. `FileStore` (a folder, `file:///PATH`) needs nothing
but the standard library; `S3Store` (`s3://`, in `gateway.audit.archive.s3`) is imported only
when an s3 URL is used (`gateway.audit.archive.opening`), so its client is loaded by no
process that does not need it.

Objects are never overwritten: `put_once` creates an object only if its name is free. A name
that is taken by the same bytes is success (an upload repeated after a crash or a lost
answer); by other bytes, `Conflict`: nothing is written, and the caller reports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal, Protocol

from gateway.audit.archive.location import ArchiveUrl
from gateway.audit.files import fsync_dir

Outcome = Literal["created", "already_there"]


class StoreError(Exception):
    """The store refused or failed a request (retried by the uploader)."""


class Conflict(StoreError):
    """An object of that name already exists and holds other bytes: never overwritten."""


class Store(Protocol):
    url: ArchiveUrl

    def create(self, name: str, data: bytes) -> bool:
        """Write `name` if no object has that name: True, or False when one exists."""

    def read(self, name: str) -> bytes: ...

    def names(self, under: str = "") -> Iterator[str]:
        """The object names (relative to the archive) that start with `under`."""


def put_once(store: Store, name: str, data: bytes) -> Outcome:
    """Create `name` with `data`, or accept an identical object already there."""
    if store.create(name, data):
        return "created"
    if store.read(name) == data:
        return "already_there"
    raise Conflict(f"{name} already exists with other content; it is not overwritten")


class FileStore:
    """A folder: an object is a read-only file, created with a link so it appears whole."""

    def __init__(self, url: ArchiveUrl) -> None:
        self.url = url
        self.root = url.prefix

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def create(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            # Written under a hidden temporary name, made durable, then linked into place:
            # `link` fails if the name exists (no overwrite), and a reader never sees half.
            temp = os.path.join(folder, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o440)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(temp)
            fsync_dir(path)  # the link and the unlink, durable
        except OSError as exc:
            raise StoreError(f"{name}: can't be written ({exc.strerror})") from None
        return True

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def read(self, name: str) -> bytes:
        try:
            with open(self._path(name), "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise StoreError(f"{name}: can't be read ({exc.strerror})") from None

    def names(self, under: str = "") -> Iterator[str]:
        start = self._path(under.rstrip("/")) if under.rstrip("/") else self.root
        if not os.path.isdir(start):
            return  # nothing archived there yet (the folder is made by the first put)
        for folder, dirs, files in os.walk(start, onerror=_raise):
            dirs.sort()
            relative = os.path.relpath(folder, self.root)
            for file in sorted(files):
                if file.startswith("."):
                    continue  # a temporary file of an upload in progress
                name = file if relative == "." else f"{relative}/{file}".replace(os.sep, "/")
                if name.startswith(under):
                    yield name


def _raise(exc: OSError) -> None:
    raise StoreError(f"can't list ({exc.strerror})")

