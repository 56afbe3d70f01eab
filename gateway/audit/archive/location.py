"""Where the audit archive lives (`audit.archive`) and what its objects are called.

`file:///PATH` (a folder) or `s3://BUCKET/PREFIX`. Inside it, one folder per chain:

- `<chain>/<first seq, 20 digits>-<last seq, 20 digits>.jsonl`: a segment, the exact lines of
  the records from the one after the last archived up to and including a checkpoint;
- `<chain>/checkpoints/<tree_size, 20 digits>`: that checkpoint's signed note, when signed.

Twenty digits hold any 64-bit seq, and sort by name in seq order.
"""

from __future__ import annotations

import re
from typing import NamedTuple

DIGITS = 20
_SEGMENT = re.compile(r"([0-9a-f]{32})/([0-9]{20})-([0-9]{20})\.jsonl")
_CHECKPOINT = re.compile(r"([0-9a-f]{32})/checkpoints/([0-9]{20})")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class BadArchiveUrl(ValueError):
    """An `audit.archive` value (or a PATH argument) that is not an archive URL."""


class ArchiveUrl(NamedTuple):
    scheme: str  # "file" or "s3"
    bucket: str  # empty for file://
    prefix: str  # the folder (file://) or the key prefix, without a trailing "/"
    text: str

    def __str__(self) -> str:
        return self.text


def is_archive_url(text: str) -> bool:
    return text.startswith(("file://", "s3://"))


def parse(text: str) -> ArchiveUrl:
    """Parse `file:///PATH` or `s3://BUCKET/PREFIX`; BadArchiveUrl names what is wrong."""
    # Here, not at the top: every audit command imports this module to tell a URL from a
    # path, and urllib.parse (with ipaddress) is ~2 ms of a proof's start.
    import urllib.parse

    parts = urllib.parse.urlsplit(text)
    if parts.query or parts.fragment:
        raise BadArchiveUrl(f"{text!a}: an archive URL has no query or fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadArchiveUrl(f"{text!a}: a file URL is file:///ABSOLUTE/PATH (no host)")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise BadArchiveUrl(f"{text!a}: a file URL names a folder, file:///ABSOLUTE/PATH")
        return ArchiveUrl("file", "", path.rstrip("/"), text)
    if parts.scheme == "s3":
        if not _BUCKET.fullmatch(parts.netloc):
            raise BadArchiveUrl(f"{text!a}: s3://BUCKET/PREFIX needs a valid bucket name")
        prefix = urllib.parse.unquote(parts.path).strip("/")
        if "//" in prefix or any(p in (".", "..") for p in prefix.split("/") if prefix):
            raise BadArchiveUrl(f"{text!a}: the prefix has an empty, '.' or '..' part")
        return ArchiveUrl("s3", parts.netloc, prefix, text)
    raise BadArchiveUrl(f"{text!a}: an archive URL is file:///PATH or s3://BUCKET/PREFIX")


def segment_name(chain: str, first: int, last: int) -> str:
    return f"{chain}/{first:0{DIGITS}d}-{last:0{DIGITS}d}.jsonl"


def checkpoint_name(chain: str, tree_size: int) -> str:
    return f"{chain}/checkpoints/{tree_size:0{DIGITS}d}"


class Segment(NamedTuple):
    chain: str
    first: int
    last: int


def parse_segment(name: str) -> Segment | None:
    """A segment's chain and seq range from its name (relative to the archive), or None."""
    match = _SEGMENT.fullmatch(name)
    if match is None:
        return None
    first, last = int(match[2]), int(match[3])
    return Segment(match[1], first, last) if 1 <= first <= last else None


def parse_checkpoint(name: str) -> tuple[str, int] | None:
    match = _CHECKPOINT.fullmatch(name)
    return (match[1], int(match[2])) if match else None
