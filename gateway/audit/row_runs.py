"""`audit query`'s rows in time order, in bounded memory: sorted runs on disk, merged.

A query over a fleet's year may match millions of records, and its output is sorted by time
across chains. Each chain's matches are kept in memory up to `RUN_ROWS`, then written out as
a sorted run (a chain's records usually come in time order already: no sort then) to a folder
the caller owns and removes; `Rows.sorted` merges a chain's runs (or, when each run starts
where the last ended, the usual case, reads them in turn), `merged` every chain's, reading
one batch per run at a time.
"""

from __future__ import annotations

import heapq
import itertools
import marshal
import operator
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

RUN_ROWS = 50_000
_BATCH = 1024
_SIZE = struct.Struct("<I")  # a batch's length, before it

Keyed = tuple[int, str, int, tuple[Any, ...]]
"""A row with its sort key: the record's time (microseconds since 1970, UTC), its chain, its
seq. Plain values only (a row holds JSON's), so a run is written with marshal: several times
faster than pickle, which memoizes every string and reduces every datetime."""


# Called once per row (sorting, merging, writing): itemgetters run in C.
_key: Callable[[Keyed], tuple[int, str, int]] = operator.itemgetter(0, 1, 2)
row_of: Callable[[Keyed], tuple[Any, ...]] = operator.itemgetter(3)
"""A keyed row's row."""


@dataclass
class Rows:
    """One chain's rows: the sorted runs written, and the rest in memory (picklable, so a
    worker process hands them back)."""

    runs: list[str] = field(default_factory=list)
    memory: list[Keyed] = field(default_factory=list)
    bounds: list[tuple[Keyed, Keyed]] = field(default_factory=list)
    """Each run's first and last row."""

    def sorted(self) -> Iterator[Keyed]:
        self.memory.sort(key=_key)
        parts = [*self.bounds, (self.memory[0], self.memory[-1])] if self.memory else self.bounds
        if all(_key(last) <= _key(first)
               for (_, last), (first, _) in itertools.pairwise(parts)):
            # Runs one after another in time (the usual: a chain's records come in order):
            # read in turn, not merged row by row.
            return itertools.chain(*(_read(run) for run in self.runs), self.memory)
        return heapq.merge(*(_read(run) for run in self.runs), self.memory, key=_key)


class RowRuns:
    """Collects keyed rows; past `limit` in memory, writes them out as a sorted run in
    `folder` (None: never, everything stays in memory)."""

    def __init__(self, folder: str | None, limit: int = RUN_ROWS) -> None:
        self._folder = folder
        self._limit = limit
        self.rows = Rows()

    def add(self, item: Keyed) -> None:
        memory = self.rows.memory
        memory.append(item)
        if self._folder is not None and len(memory) >= self._limit:
            self._spill()

    def _spill(self) -> None:
        assert self._folder is not None
        memory = self.rows.memory
        memory.sort(key=_key)  # timsort: a run already in order costs one pass
        handle, path = tempfile.mkstemp(prefix="rows-", dir=self._folder)
        with os.fdopen(handle, "wb") as out:
            for start in range(0, len(memory), _BATCH):
                batch = marshal.dumps(memory[start:start + _BATCH])
                out.write(_SIZE.pack(len(batch)) + batch)
        self.rows.runs.append(path)
        self.rows.bounds.append((memory[0], memory[-1]))
        self.rows.memory = []


def merged(chains: Iterable[Rows]) -> Iterator[Keyed]:
    """Every chain's rows in one time order."""
    return heapq.merge(*(rows.sorted() for rows in chains), key=_key)


def _read(run: str) -> Iterator[Keyed]:
    # Written by `RowRuns` in a folder of this run's own: marshal is safe to load here.
    with open(run, "rb") as handle:
        while size := handle.read(_SIZE.size):
            (length,) = _SIZE.unpack(size)
            yield from marshal.loads(handle.read(length))  # noqa: S302 (our own file)
