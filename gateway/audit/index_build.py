"""Making a proof index from a chain's record files, and bringing one up to date.

Records are read as `audit prove` reads them (`gateway.audit.prove.collect`: the same filters,
the same refusals of conflicting records and malformed notes), noting where each record's line
starts. An update reads only what is new: the bytes appended to a file since (`GROWN`) and the
files not read before (a rotation renames a file, which keeps it known by its inode). Anything
else, or any case where reading order could change the answer (a chain whose origin comes from
a checkpoint, two checkpoints at one tree size), makes a whole new index (`Rebuild`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from typing import IO, Any

from gateway.audit import cri, merkle
from gateway.audit import index_sources as sources
from gateway.audit.chain_tree import default_origin
from gateway.audit.inputs import MAX_LINE_BYTES
from gateway.audit.proof_index import NOWHERE, WHERE, IndexContent
from gateway.audit.prove import CannotProve, ProveUsage, parse_signed_checkpoint

_NOWHERE_ENTRY = WHERE.pack(NOWHERE, 0)


class Rebuild(Exception):
    """The index can't be brought up to date by reading only what is new."""


def located_lines(
    stream: IO[bytes], start: int, first_line: int
) -> Iterator[tuple[int, int, int, bytes]]:
    """(line number, offset of its first raw line, offset after its last, line without its
    newline) of each whole record line from `start`, CRI lines unwrapped."""
    stream.seek(start)
    starts: dict[int, int] = {}
    position = start

    def raw_lines() -> Iterator[bytes]:
        nonlocal position
        number = 0
        for raw in iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""):
            number += 1
            starts[number] = position
            position += len(raw)
            yield raw

    for number, line in cri.unwrap(raw_lines()):
        if line.endswith(b"\n"):  # a torn last line is no record (read again when it grows)
            yield first_line + number, starts[number], position, line[:-1]
        starts.clear()


class Scan:
    """Reads record files into the index content of each chain met (or of one chain)."""

    def __init__(self, chain: str | None, known: IndexContent | None = None) -> None:
        self.chain = chain
        self.found: dict[str, IndexContent] = {}
        self.updating = known is not None
        if known is not None:
            self.found[known.chain] = known
        self._needle = chain.encode() if chain else b'"chain"'

    def read(self, source: sources.SourceFile) -> sources.SourceFile:
        """Read `source` from where it was consumed; return it with its new `consumed`."""
        consumed, lines = source.consumed, source.lines
        try:
            with sources.open_records(source) as stream:
                for lineno, start, end, line in located_lines(stream, consumed, lines):
                    self._record(source, lineno, start, line)
                    consumed, lines = end, lineno
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ProveUsage(f"{source.path}: can't read ({getattr(exc, 'strerror', None) or exc})"
                             ) from None
        return sources.SourceFile(**{**source.to_json(), "consumed": consumed, "lines": lines})

    def _record(self, source: sources.SourceFile, lineno: int, start: int, line: bytes) -> None:
        if self._needle not in line:
            return  # another chain, or a record of an earlier version
        try:
            record: Any = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        rec_chain, seq = record.get("chain"), record.get("seq")
        if not isinstance(rec_chain, str) or not isinstance(seq, int) or seq < 1:
            return
        if self.chain is not None and rec_chain != self.chain:
            return
        data = self.found.get(rec_chain)
        if data is None:
            if self.updating:
                return
            data = self.found[rec_chain] = IndexContent(rec_chain, None, False, [],
                                                        merkle.LeafHashes())
        leaf = merkle.leaf_hash(line)
        before = data.leaves.put(seq - 1, leaf)
        if before is not None:
            if before != leaf:
                raise CannotProve(f"{source.path}:{lineno}: conflicting records at seq {seq} "
                                  f"of chain {rec_chain}")
            return
        where = data.where
        if len(where) < seq * WHERE.size:
            where += _NOWHERE_ENTRY * (seq - len(where) // WHERE.size)
        WHERE.pack_into(where, (seq - 1) * WHERE.size, source.id, start)
        self._note(data, record, (source.id, start), f"{source.path}:{lineno}")

    def _note(self, data: IndexContent, record: dict[str, Any], at: tuple[int, int],
              where: str) -> None:
        event = record.get("event")
        if event == "audit.chain" and isinstance(record.get("origin"), str):
            data.origin, data.origin_from_chain = record["origin"], True
        elif event == "audit.checkpoint" and isinstance(record.get("note"), str):
            point = parse_signed_checkpoint(record["note"], f"{where}: note").checkpoint
            if self.updating and (not data.origin_from_chain
                                  or any(c[0] == point.tree_size for c in data.checkpoints)):
                raise Rebuild  # reading order would matter: read it all in order
            data.checkpoints.append((point.tree_size, *at))
            if data.origin is None:
                data.origin = point.origin


def build(paths: Sequence[str], chain: str | None, origin: str | None) -> IndexContent:
    """A whole index of the chain named by `chain`, or by the checkpoint `origin` it signs."""
    scan = Scan(chain)
    files = []
    for number, path in enumerate(paths):
        try:
            files.append(scan.read(sources.identify(path, number)))
        except OSError as exc:
            raise ProveUsage(f"{path}: can't read ({exc.strerror})") from None
    if chain is not None:
        if chain not in scan.found:
            raise ProveUsage(f"no record of chain {chain} in the files given")
        return _finish(scan.found[chain], files)
    chosen = next((c for c in scan.found.values() if tree_origin(c) == origin), None)
    if chosen is None:
        raise ProveUsage(f"no chain with origin {origin!a} in the files given")
    return _finish(chosen, files)


def update(known: IndexContent, paths: Sequence[str]) -> IndexContent:
    """`known` brought up to date with the files at `paths`; Rebuild when it can't be."""
    if not known.origin_from_chain:
        raise Rebuild
    by_inode = {(f.dev, f.ino): f for f in known.files}
    next_id = max((f.id for f in known.files), default=-1) + 1
    scan = Scan(known.chain, known)
    files, matched = [], set()
    for path in paths:
        try:
            now = sources.identify(path, next_id)
        except OSError as exc:
            raise ProveUsage(f"{path}: can't read ({exc.strerror})") from None
        before = by_inode.get((now.dev, now.ino))
        if before is None:
            files.append(scan.read(now))
            next_id += 1
            continue
        state, current = sources.compare(before, path)
        if current is None:
            raise Rebuild
        matched.add(before.id)
        files.append(scan.read(current) if state == sources.GROWN else current)
    if matched != {f.id for f in known.files}:
        raise Rebuild  # a file is gone or was replaced: its records' places are lost
    return _finish(known, files)


def _finish(content: IndexContent, files: list[sources.SourceFile]) -> IndexContent:
    content.files = files
    if len(content.where) < len(content.leaves) * WHERE.size:
        content.where += _NOWHERE_ENTRY * (len(content.leaves) - len(content.where)
                                           // WHERE.size)
    content.checkpoints.sort(key=lambda c: c[0])  # stable: ties stay in reading order
    content.extend_levels()
    return content


def tree_origin(content: IndexContent) -> str:
    return content.origin or default_origin(content.chain)
