"""What a proof index remembers of each file it was made from, to tell whether it still fits.

A file is known by its device and inode (so a rotated file, renamed, is still itself), its size
and modification time, and SHA-256 of its first and last 4 KiB. Compared with the file as it
is now, it is

- `SAME`: nothing moved;
- `GROWN`: the same file with bytes appended (same first bytes, same bytes where it used to
  end): only what follows `consumed` needs reading;
- `CHANGED`: anything else (rewritten, truncated, replaced): the index is stale.

A gzip file (as log rotators leave them) is never `GROWN`: appending to one makes another file.
"""

from __future__ import annotations

import hashlib
import os
from typing import IO, Any, NamedTuple

EDGE_BYTES = 4096
SAME, GROWN, CHANGED = "same", "grown", "changed"
_GZIP_MAGIC = b"\x1f\x8b"


class SourceFile(NamedTuple):
    id: int
    """Names the file in the index's record locations; kept when the file is renamed."""
    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    head: str
    """SHA-256 (hex) of the first min(size, 4 KiB) bytes."""
    tail: str
    """SHA-256 (hex) of the last min(size, 4 KiB) bytes."""
    gzip: bool
    consumed: int = 0
    """Where reading stopped: after the last whole record line (a torn last line is read
    again when the file grows)."""
    lines: int = 0
    """The lines before `consumed` (messages name a record by file and line)."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "dev": self.dev, "ino": self.ino,
                "size": self.size, "mtime_ns": self.mtime_ns, "head": self.head,
                "tail": self.tail, "gzip": self.gzip, "consumed": self.consumed,
                "lines": self.lines}

    @classmethod
    def from_json(cls, data: object) -> SourceFile:
        """Raises ValueError on anything but what `to_json` wrote."""
        if not isinstance(data, dict) or set(data) != set(_FIELDS):
            raise ValueError("a file entry has other fields")
        for name, kind in _FIELDS.items():
            value = data[name]
            if type(value) is not kind or (isinstance(value, int) and value < 0):
                raise ValueError(f"a file entry's {name} is not a {kind.__name__}")
        return cls(**data)


_FIELDS: dict[str, type] = {
    "id": int, "path": str, "dev": int, "ino": int, "size": int, "mtime_ns": int,
    "head": str, "tail": str, "gzip": bool, "consumed": int, "lines": int}


def open_records(source: SourceFile) -> IO[bytes]:
    """The file's bytes, uncompressed when it is gzip. Raises OSError."""
    if source.gzip:
        import gzip

        return gzip.open(source.path, "rb")  # type: ignore[return-value]
    return open(source.path, "rb")


def _digest(handle: Any, start: int, length: int) -> str:
    handle.seek(start)
    return hashlib.sha256(handle.read(length)).hexdigest()


def identify(path: str, file_id: int, consumed: int = 0, lines: int = 0) -> SourceFile:
    """The file as it is now. Raises OSError."""
    with open(path, "rb", buffering=0) as handle:
        st = os.fstat(handle.fileno())
        size = st.st_size
        edge = min(size, EDGE_BYTES)
        head = _digest(handle, 0, edge)
        tail = _digest(handle, size - edge, edge)
        handle.seek(0)
        is_gzip = handle.read(2) == _GZIP_MAGIC
    return SourceFile(file_id, path, st.st_dev, st.st_ino, size, st.st_mtime_ns, head, tail,
                      is_gzip, consumed, lines)


def compare(known: SourceFile, path: str) -> tuple[str, SourceFile | None]:
    """How the file at `path` relates to `known`: SAME, GROWN or CHANGED, and what it is now
    (None when it can't be read or is not `known`'s file at all)."""
    try:
        with open(path, "rb", buffering=0) as handle:
            st = os.fstat(handle.fileno())
            if (st.st_dev, st.st_ino) != (known.dev, known.ino) or st.st_size < known.size:
                return CHANGED, None
            edge = min(known.size, EDGE_BYTES)
            if (_digest(handle, 0, edge) != known.head
                    or _digest(handle, known.size - edge, edge) != known.tail):
                return CHANGED, None
            if st.st_size == known.size:
                # Same size but touched: possibly rewritten in place, so not trusted.
                same = st.st_mtime_ns == known.mtime_ns
                return (SAME, known._replace(path=path)) if same else (CHANGED, None)
    except OSError:
        return CHANGED, None
    if known.gzip:
        return CHANGED, None
    try:
        now = identify(path, known.id, known.consumed, known.lines)
    except OSError:
        return CHANGED, None
    return (GROWN, now) if now.size > known.size else (CHANGED, None)
