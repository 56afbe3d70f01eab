"""Reading back the end of an existing audit log at start, and cutting off a torn tail.

The chain continues from the last record that verifies; anything after it (a torn line from a
crash, lines that do not verify) is removed from the file and described, bytes included, in
an `audit.recovered` record. An end with nothing that verifies is not touched: the log fails
closed until someone looks (`audit verify`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.audit import chain as audit_chain
from gateway.audit.files import LogFile, last_rotated
from gateway.audit.head import ChainHead
from gateway.audit.timestamps import utc_timestamp

log = structlog.get_logger("gateway.audit")

TAIL_WINDOW = 1 << 20  # bytes of an existing log read back at start
MAX_DISCARDED_COPY = 64 * 1024  # bytes of a torn tail copied into `audit.recovered`


class BrokenTail(Exception):
    """The end of a log can't be continued from (the message says why)."""


@dataclass
class Tail:
    """What the end of an existing log holds: the last good record, and what follows it."""

    seq: int
    head: str
    good_end: int  # file offset just after the last good record
    discarded: bytes
    reason: str


def continue_chain(file: LogFile, head: ChainHead) -> dict[str, Any] | None:
    """Open the live file, cut a torn tail, and set `head` to the last good record.

    Returns the `audit.recovered` record that describes what was cut, if anything was.
    """
    fd = file.open_fd()
    try:
        found, size = recover(fd, file.path)
    except BaseException:
        os.close(fd)
        raise
    file.adopt(fd, size)
    if found is None:
        return None
    head.continue_from(found.seq, found.head)
    if not found.discarded:
        return None
    recovered = recovered_body(found)
    log.warning(
        "audit.recovered", reason=found.reason, discarded_bytes=len(found.discarded),
        resumed_after_seq=found.seq,
    )
    return recovered


def recover(fd: int, path: str) -> tuple[Tail | None, int]:
    """Cut a torn tail off the live file open at `fd`: what its end holds, and its size now.

    An empty live file goes on from the last rotated one. Raises `BrokenTail` when the end
    does not verify, or a rotated file's does not (rotated files are never cut).
    """
    size = os.fstat(fd).st_size
    source = path if size else last_rotated(path)
    found = read_tail(source) if source else None
    if found is not None and found.discarded and source != path:
        raise BrokenTail(f"rotated file {os.path.basename(source or '')} has a torn tail")
    if found is not None and found.discarded:
        os.ftruncate(fd, found.good_end)
        os.fsync(fd)
        size = found.good_end
    if found is not None and found.seq == 0:
        # The live file held nothing whole: the chain goes on from the rotated files.
        previous = last_rotated(path)
        head = read_tail(previous) if previous else None
        if head is not None:
            found.seq, found.head = head.seq, head.head
    return found, size


def read_tail(path: str) -> Tail | None:
    """Find the last record that verifies, and what follows it, at the end of `path`."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return None
        start = max(0, size - TAIL_WINDOW)
        handle.seek(start)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    torn = data[end:]
    lines = data[:end].split(b"\n")[:-1]
    first_whole = 0 if start == 0 else 1  # a window's first line may be cut
    offset = end
    bad_lines = 0
    for line in reversed(lines[first_whole:]):
        offset -= len(line) + 1
        record = _verified(line)
        if record is not None:
            good_end = start + offset + len(line) + 1
            discarded = data[offset + len(line) + 1 :]
            if not discarded:
                return Tail(record["seq"], record["hash"], good_end, b"", "")
            reason = "torn last line" if not bad_lines else (
                f"{bad_lines} line(s) after the last good record do not verify"
                + (" and a torn last line" if torn else "")
            )
            return Tail(record["seq"], record["hash"], good_end, discarded, reason)
        bad_lines += 1
    if start == 0 and not lines:
        # Only a torn first line: nothing of the chain survived it.
        return Tail(0, audit_chain.GENESIS, 0, torn, "torn first line")
    raise BrokenTail(
        f"the end of {os.path.basename(path)} does not verify; "
        "run `chroma-sync-gateway audit verify` and move the file aside"
    )


def _verified(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or audit_chain.canonical(record) != line:
        return None
    seq, digest = record.get("seq"), record.get("hash")
    if not isinstance(seq, int) or not isinstance(digest, str):
        return None
    if audit_chain.record_hash(audit_chain.canonical(audit_chain.body_of(record))) != digest:
        return None
    return record


def first_seq(path: str) -> int | None:
    """The `seq` of a file's first record, if it has one that parses."""
    try:
        with open(path, "rb") as handle:
            first = json.loads(handle.readline(MAX_DISCARDED_COPY))
    except (OSError, ValueError):
        return None
    seq = first.get("seq") if isinstance(first, dict) else None
    return seq if isinstance(seq, int) else None


def recovered_body(tail: Tail) -> dict[str, Any]:
    """The `audit.recovered` record that describes a tail's discarded bytes."""
    discarded = tail.discarded
    return {
        "ts": utc_timestamp(),
        "event": "audit.recovered",
        "reason": tail.reason,
        "discarded_bytes": len(discarded),
        "discarded_sha256": hashlib.sha256(discarded).hexdigest(),
        "discarded_b64": base64.b64encode(discarded[:MAX_DISCARDED_COPY]).decode("ascii"),
    }
