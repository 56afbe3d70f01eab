"""`audit query`'s rows in time order, in bounded memory: sorted runs on disk, merged.

A query over a fleet's year may match millions of records, and its output is sorted by time
across chains. Each chain's matches are kept in memory up to `RUN_ROWS`, then written out as
a sorted run (a chain's records usually come in time order already: no sort then) to a folder
the caller owns and removes; `Rows.sorted` merges a chain's runs, `merged` every chain's,
reading one batch per run at a time.
"""

from __future__ import annotations

import heapq
import operator
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RUN_ROWS = 50_000
_BATCH = 1024

Keyed = tuple[datetime, str, int, tuple[Any, ...]]
"""A row with its sort key: the record's time, its chain, its seq."""


# Called once per row (sorting, merging, writing): itemgetters run in C.
_key: Callable[[Keyed], tuple[datetime, str, int]] = operator.itemgetter(0, 1, 2)
row_of: Callable[[Keyed], tuple[Any, ...]] = operator.itemgetter(3)
"""A keyed row's row."""


@dataclass
class Rows:
    """One chain's rows: the sorted runs written, and the rest in memory (picklable, so a
    worker process hands them back)."""

    runs: list[str] = field(default_factory=list)
    memory: list[Keyed] = field(default_factory=list)

    def sorted(self) -> Iterator[Keyed]:
        self.memory.sort(key=_key)
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
                pickle.dump(memory[start:start + _BATCH], out, protocol=pickle.HIGHEST_PROTOCOL)
        self.rows.runs.append(path)
        self.rows.memory = []


def merged(chains: Iterable[Rows]) -> Iterator[Keyed]:
    """Every chain's rows in one time order."""
    return heapq.merge(*(rows.sorted() for rows in chains), key=_key)


def _read(run: str) -> Iterator[Keyed]:
    # Written by `RowRuns` in a folder of this run's own: pickle is safe to load here.
    with open(run, "rb") as handle:
        while True:
            try:
                batch = pickle.load(handle)  # noqa: S301 (our own run file)
            except EOFError:
                return
            yield from batch
