"""What `audit verify`, `audit prove` and `audit query` read: files, folders, stdin, archives.

A PATH argument is

- a file: an audit log file (plain, or gzip as log rotators leave them), or a container log
  (CRI lines, unwrapped by `gateway.audit.cri`);
- a folder, read recursively in name order: every file but the gateway's lock and state
  files (`*.lock`, `*.state`), temporary and hidden files; a file under a `checkpoints/`
  folder is a signed checkpoint (as an archive holds them), not records;
- `-`: stdin;
- an archive URL (`file:///PATH`, `s3://BUCKET/PREFIX`): its segments (`*.jsonl`) and its
  checkpoint objects, listed through `gateway.audit.archive.store`.

`expand` checks every argument before anything is read (a missing file is a usage error, exit
2), and `records` yields each input's audit lines one at a time: memory does not grow with
the input.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, NamedTuple

from gateway.audit import cri
from gateway.audit.archive import location

if TYPE_CHECKING:  # the stores load when an archive URL is given (`audit prove` starts faster)
    from gateway.audit.archive import store

MAX_LINE_BYTES = 16 * 1024 * 1024
_READ_BUFFER = 1024 * 1024
_SKIPPED_SUFFIXES = (".lock", ".state", ".tmp")
_CHECKPOINT_FILE = re.compile(r"[0-9]{20}")


class InputError(Exception):
    """An argument that can't be read: a usage error (exit 2)."""


class Input(NamedTuple):
    name: str
    """How messages name it: the path, `-`, or the archive URL and object name."""
    open: Callable[[], IO[bytes]]
    note: bool = False
    """A signed checkpoint (a note), not records."""


def expand(arguments: Sequence[str], stdin: IO[bytes] | None = None) -> list[Input]:
    """The inputs the arguments name, in order; InputError for one that can't be read."""
    inputs: list[Input] = []
    seen: dict[tuple[int, int], str] = {}
    for argument in arguments:
        if argument == "-":
            if stdin is None:
                raise InputError("-: no standard input")
            inputs.append(_stdin(stdin))
        elif location.is_archive_url(argument):
            inputs.extend(_archive(argument))
        else:
            inputs.extend(_path(argument, seen))
    return inputs


def _path(path: str, seen: dict[tuple[int, int], str]) -> list[Input]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: can't read ({exc.strerror})") from None
    if not os.path.isdir(path):
        _once(path, st, seen)
        return [_file(path)]
    found: list[Input] = []
    for folder, dirs, files in os.walk(path, onerror=_walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES):
                continue
            full = os.path.join(folder, name)
            try:
                _once(full, os.stat(full), seen)
            except OSError as exc:
                raise InputError(f"{full}: can't read ({exc.strerror})") from None
            is_note = (os.path.basename(folder) == "checkpoints"
                       and bool(_CHECKPOINT_FILE.fullmatch(name)))
            found.append(_file(full, note=is_note))
    return found


def _walk_error(exc: OSError) -> None:
    raise InputError(f"{exc.filename}: can't read ({exc.strerror})")


def _once(path: str, st: os.stat_result, seen: dict[tuple[int, int], str]) -> None:
    identity = (st.st_dev, st.st_ino)
    if identity in seen:
        raise InputError(f"{path}: given twice (also as {seen[identity]})")
    seen[identity] = path


def _file(path: str, note: bool = False) -> Input:
    return Input(path, lambda: open(path, "rb", buffering=_READ_BUFFER), note)


def _archive(url_text: str) -> list[Input]:
    from gateway.audit.archive import opening, store

    try:
        archive = opening.open_store(url_text)
    except (location.BadArchiveUrl, store.StoreError) as exc:
        raise InputError(str(exc)) from None
    if isinstance(archive, store.FileStore) and not archive.exists():
        raise InputError(f"{url_text}: no such folder")
    try:
        names = sorted(archive.names())
    except store.StoreError as exc:
        raise InputError(f"{url_text}: {exc}") from None
    found: list[Input] = []
    for name in names:
        is_note = location.parse_checkpoint(name) is not None
        if is_note or name.endswith(".jsonl"):
            shown = f"{url_text.rstrip('/')}/{name}"
            found.append(Input(shown, _reader(archive, name), is_note))
    return found


def _reader(archive: store.Store, name: str) -> Callable[[], IO[bytes]]:
    from gateway.audit.archive import store

    def read() -> IO[bytes]:
        try:
            return io.BytesIO(archive.read(name))
        except store.StoreError as exc:
            raise OSError(str(exc)) from None

    return read


def _stdin(stream: IO[bytes]) -> Input:
    return Input("-", lambda: stream)


def records(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """The audit lines of one input, numbered by where they start, CRI and gzip unwrapped."""
    stream: IO[bytes] = handle
    peek = getattr(handle, "peek", None)
    head = peek(2)[:2] if callable(peek) else b""
    if head == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=handle)  # type: ignore[assignment]
    return cri.unwrap(iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""))


def read_note(item: Input, limit: int = 65536) -> bytes:
    """A checkpoint object's text (a signed note is small: the rest is not read)."""
    with item.open() as handle:
        return handle.read(limit + 1)
