"""The writer's Merkle tree across restarts: saved beside the log, resumed without re-reading it.

At each checkpoint (and at shutdown) the writer saves `<audit.path>.state`: the chain, its
origin, the tree's O(log n) hashes, and the `seq` and `hash` of the last record the tree
covers. At start, `resume` loads it and adds only the records written after it (at most a
checkpoint interval, read backwards from the end of the files), after checking that the
record at the saved `seq` still has the saved `hash`. So start-up time does not grow with the
chain.

A state that is missing, unreadable or does not match the log (a crash between a write and
the save, a restored backup) is not trusted: the tree is rebuilt from the chain's files, from
seq 1. When those are gone too (deleted by `audit.keep_files`), `resume` returns None and the
writer begins a new chain that names this one in `previous`, rather than sign a tree it
cannot compute.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.audit.chain_tree import ChainTree

STATE_SUFFIX = ".state"
CHUNK = 1 << 20
_MAX_STATE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Saved:
    tree: ChainTree
    seq: int
    hash: str


def state_path(audit_path: str) -> str:
    return audit_path + STATE_SUFFIX


def save(audit_path: str, tree: ChainTree, seq: int, head: str, *, durable: bool) -> None:
    """Replace the state file atomically (write, then rename). Raises OSError."""
    if tree.tree.size != seq:
        raise ValueError("the tree must cover exactly the records up to seq")
    data = json.dumps({**tree.state(), "seq": seq, "hash": head}, separators=(",", ":"))
    write_atomically(state_path(audit_path), data, durable=durable, mode=0o600)


def load(audit_path: str) -> Saved | None:
    """The saved state, or None when there is none or it is damaged."""
    try:
        with open(state_path(audit_path), "rb") as handle:
            raw = handle.read(_MAX_STATE_BYTES + 1)
        if len(raw) > _MAX_STATE_BYTES:
            return None
        data: Any = json.loads(raw)
        tree = ChainTree.from_state(data)
        seq, head = data.get("seq"), data.get("hash")
        if not isinstance(seq, int) or seq != tree.tree.size or not isinstance(head, str):
            return None
        return Saved(tree, seq, head)
    except (OSError, ValueError):
        return None


def lines_backward(path: str) -> Iterator[bytes]:
    """The whole lines of `path`, last first (a torn last line is skipped)."""
    with open(path, "rb") as handle:
        end = os.fstat(handle.fileno()).st_size
        carry = b""  # the start of a line whose beginning is in the part not read yet
        first = True
        while end > 0:
            start = max(0, end - CHUNK)
            handle.seek(start)
            lines = (handle.read(end - start) + carry).split(b"\n")
            end = start
            if first:
                if len(lines) == 1:
                    carry = b""
                    continue  # still inside a torn last line: not a record
                lines.pop()  # what follows the last newline: nothing, or a torn line
                first = False
            carry = lines.pop(0) if start > 0 else b""
            yield from reversed(lines)


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def catch_up(saved: Saved, files: Sequence[str], head_seq: int) -> ChainTree | None:
    """`saved`'s tree with the records after it added, or None if they don't match it.

    `files` are the chain's files oldest first (rotated, then live); `head_seq` the last seq
    the writer found in them.
    """
    if saved.seq > head_seq:
        return None  # the state is ahead of the log (records lost after it was saved)
    newer: list[bytes] = []
    for path in reversed(files):
        for line in lines_backward(path):
            record = _record(line)
            if record is None or record.get("chain") != saved.tree.chain:
                return None
            seq = record.get("seq")
            if seq == saved.seq:
                if record.get("hash") != saved.hash:
                    return None
                tree = ChainTree(saved.tree.chain, saved.tree.origin, saved.tree.tree.copy())
                for later in reversed(newer):
                    tree.add(later)
                return tree
            if not isinstance(seq, int) or seq < saved.seq:
                return None
            newer.append(line)
    return None


def rebuild(files: Sequence[str], chain: str, origin: str) -> ChainTree | None:
    """The chain's tree from its files, from seq 1; None when seq 1 is not there any more."""
    tree = ChainTree(chain, origin)
    expected = 1
    for path in files:
        with open(path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                record = _record(raw[:-1])
                if record is None or record.get("chain") != chain:
                    if expected == 1:
                        continue  # before the chain (not expected: a new chain has its own file)
                    return None
                if record.get("seq") != expected:
                    return None
                tree.add(raw)
                expected += 1
    return tree if expected > 1 else None


def remove(audit_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(audit_path))


def write_atomically(path: str, text: str, *, durable: bool, mode: int = 0o644) -> None:
    """Replace `path` with `text` so that a reader sees the old file or the new, never half."""
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
