"""Records of many chains, from many inputs in any order, sorted out chain by chain.

`audit verify` over a fleet reads every input once (`Grouping.add`), putting each line into a
spill file of its chain (the `chain` field; a line without one belongs to its log: the file
and its rotated files `<file>.NNNNNN`, a log of an earlier version). Then, chain by chain,
`ordered` gives the chain's lines in seq order, exact duplicates dropped (at-least-once
shipping), and names the first problem of order: `missing seq X..Y` and `conflicting
records at seq S` (two different lines with the same seq). Everything else about the lines
is the single-chain verifier's job.

Memory is bounded by the number of chains, not of records: the lines wait on disk, a chain
already in seq order (one file, an archive's segments in name order) is read straight
through, and one that is not is sorted in runs of `RUN_RECORDS` lines, merged from disk.

`chain` and `seq` are read from the canonical line without parsing it: in a canonical line a
key (`,"seq":` at its own level) can't occur inside a string, where every `"` is escaped, and
the record's own `seq` is the last one (keys are sorted; a nested `seq`, as in an
`audit.chain` record's `previous`, sorts before it). The verifier parses every line anyway,
so a line that misleads this is still caught, as out of order.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import pickle
import re
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

RUN_RECORDS = 20_000
MAX_OPEN = 128  # spill files kept open at once (a fleet may have more chains than fds)
_CHAIN = re.compile(rb'[{,]"chain":"([0-9a-f]{32})"')
_SEQ = re.compile(rb'[{,]"seq":([0-9]{1,19})[,}]')
_ROTATED = re.compile(r"\.[0-9]{6}$")
_HEADER = struct.Struct("<IQQI")  # input index, line number, seq, line length
_BUFFER = 256 * 1024


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    line: bytes
    source: int  # index into Grouping.sources
    lineno: int


@dataclass(frozen=True)
class Problem:
    reason: str
    entry: Entry


def seq_of(line: bytes) -> int:
    """The record's own seq read from its canonical line (0 when it has none)."""
    if line.count(b'"seq":') == 1:  # the usual line: one match or none, found without a scan
        at = line.find(b'"seq":')
        match = _SEQ.match(line, at - 1) if at > 0 else None
        return int(match[1]) if match else 0
    found = _SEQ.findall(line)
    return int(found[-1]) if found else 0


def chain_of(line: bytes) -> str | None:
    found = _CHAIN.search(line)
    return found[1].decode("ascii") if found else None


class Grouping:
    """Lines spilled per chain into a private temporary folder (removed by `close`)."""

    def __init__(self, folder: str | None = None) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="audit-verify-", dir=folder)
        self.sources: list[str] = []
        self._files: dict[str, IO[bytes]] = {}
        self._paths: dict[str, str] = {}
        self._last_seq: dict[str, int] = {}
        self.unsorted: set[str] = set()  # chains whose lines did not come in seq order

    def source(self, name: str) -> int:
        self.sources.append(name)
        return len(self.sources) - 1

    def key_of(self, line: bytes, source: int) -> str:
        chain = chain_of(line)
        if chain is not None:
            return chain
        # An earlier version's log: its rotated files (`<log>.NNNNNN`) and the live one are
        # one chain, put in seq order like any other.
        return "log:" + _ROTATED.sub("", self.sources[source])

    def add(self, line: bytes, source: int, lineno: int) -> str:
        key = self.key_of(line, source)
        spill = self._files.get(key)
        if spill is None:
            if len(self._files) >= MAX_OPEN:
                for handle in self._files.values():
                    handle.close()
                self._files.clear()
            path = self._paths.setdefault(
                key, os.path.join(self._folder.name, f"{len(self._paths)}.spill"))
            spill = self._files[key] = open(path, "ab", buffering=_BUFFER)
        seq = seq_of(line)
        if seq < self._last_seq.get(key, 0):
            self.unsorted.add(key)
        self._last_seq[key] = seq
        spill.write(_HEADER.pack(source, lineno, seq, len(line)))
        spill.write(line)
        return key

    def keys(self) -> list[str]:
        return list(self._paths)

    def finish(self) -> dict[str, str]:
        """Close the spill files: chain key -> spill file, to be read by `ordered`."""
        for spill in self._files.values():
            spill.close()
        self._files.clear()
        return dict(self._paths)

    @property
    def folder(self) -> str:
        return self._folder.name

    def close(self) -> None:
        for spill in self._files.values():
            with contextlib.suppress(OSError):
                spill.close()
        self._folder.cleanup()


def entries(path: str) -> Iterator[Entry]:
    """The lines of a spill file as written."""
    with open(path, "rb", buffering=_BUFFER) as handle:
        while header := handle.read(_HEADER.size):
            source, lineno, seq, length = _HEADER.unpack(header)
            yield Entry(seq, handle.read(length), source, lineno)


def _sorted_runs(path: str) -> Iterator[Entry]:
    runs: list[str] = []
    chunk: list[Entry] = []

    def spill() -> None:
        chunk.sort(key=lambda e: (e.seq, e.line))
        run = f"{path}.run{len(runs)}"
        with open(run, "wb", buffering=_BUFFER) as out:
            for start in range(0, len(chunk), 1024):
                pickle.dump([(e.seq, e.line, e.source, e.lineno)
                             for e in chunk[start:start + 1024]], out)
        runs.append(run)
        chunk.clear()

    for entry in entries(path):
        chunk.append(entry)
        if len(chunk) >= RUN_RECORDS:
            spill()
    if chunk:
        spill()
    yield from heapq.merge(*(_read_run(run) for run in runs), key=lambda e: (e.seq, e.line))


def _read_run(run: str) -> Iterator[Entry]:
    # Our own file in a private folder made by this process: pickle is safe to load here.
    with open(run, "rb", buffering=_BUFFER) as handle:
        while True:
            try:
                batch = pickle.load(handle)  # noqa: S301 (written above, by this process)
            except EOFError:
                break
            for seq, line, source, lineno in batch:
                yield Entry(seq, line, source, lineno)
    os.unlink(run)


def ordered(path: str, in_order: bool, keep_going: bool = False) -> Iterator[Entry | Problem]:
    """One chain's lines by seq, exact duplicates dropped; stops after the first problem
    (`keep_going`: reports each and goes on, every line coming out once).

    `in_order`: the spill file is in seq order already (`key not in Grouping.unsorted`)."""
    stream = entries(path) if in_order else _sorted_runs(path)
    previous: Entry | None = None
    for entry in stream:
        problem: str | None = None
        if previous is not None:
            if entry.seq == previous.seq:
                if entry.line == previous.line:
                    continue  # the same record shipped twice
                problem = f"conflicting records at seq {entry.seq}"
            elif previous.seq and entry.seq > previous.seq + 1:
                problem = f"missing seq {previous.seq + 1}..{entry.seq - 1}"
        if problem is not None:
            yield Problem(problem, entry)
            if not keep_going:
                return
        yield entry
        previous = entry
