"""The uploader: what to put into the archive next, and when to try again.

It is told how far each chain is durable (`durable(chain, seq)`: after a checkpoint record
was written and fsynced, or at start, the head the writer found) and puts, one at a time,
each segment that ends at a checkpoint within that: first the checkpoint's signed note (when
it has one) as `<chain>/checkpoints/<tree_size>`, then the segment's lines as
`<chain>/<first>-<last>.jsonl`. The segment is put last because its name is what a restart
resumes from: a crash between the two puts repeats both, and a repeated put of the same bytes
is success (`store.put_once`).

The first time it meets a chain it lists the chain's folder in the archive and goes on after
the highest segment there. A failed put (the store down or refusing, the local files
unreadable, a name already taken by other bytes) is reported and tried again after a backoff
that doubles from `BACKOFF_START` to `BACKOFF_MAX`, with jitter; nothing is skipped, so a
failure holds everything after it (and `audit.keep_files`) until it is fixed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from gateway.audit.archive import location, store
from gateway.audit.archive.segments import LocalLines, Segment, SegmentError

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0

Report = Callable[[dict[str, Any]], None]


class Uploader:
    def __init__(
        self, archive: store.Store, local: LocalLines, report: Report,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = archive
        self._local = local
        self._report = report
        self._clock = clock
        self._durable: dict[str, int] = {}  # chain -> seq durable in the local files
        self._archived: dict[str, int] = {}  # chain -> last seq in the archive
        self._failures = 0
        self._retry_at = 0.0

    def durable(self, chain: str, seq: int) -> None:
        self._durable[chain] = max(seq, self._durable.get(chain, 0))

    def archived(self, chain: str) -> int | None:
        return self._archived.get(chain)

    def wait(self) -> float | None:
        """Seconds until there is something to do (0: now), or None when idle."""
        if not any(self._pending(chain) for chain in self._durable):
            return None
        return max(0.0, self._retry_at - self._clock())

    def _pending(self, chain: str) -> bool:
        archived = self._archived.get(chain)
        return archived is None or archived < self._durable[chain]

    def step(self) -> bool:
        """Put one object (or resume one chain) if one is due; False when nothing was done."""
        if self._clock() < self._retry_at:
            return False
        for chain in self._durable:
            if self._pending(chain):
                try:
                    done = self._advance(chain)
                except (store.StoreError, SegmentError) as exc:
                    self._failed(chain, exc)
                    return True
                if done:
                    self._failures = 0
                    return True
        return False

    def _advance(self, chain: str) -> bool:
        archived = self._archived.get(chain)
        if archived is None:
            archived = self._resume(chain)
            self._archived[chain] = archived
            self._report({"chain": chain, "archived": archived, "resumed": True})
            return True
        segment = self._local.next_segment(chain, archived + 1, self._durable[chain])
        if segment is None:
            # No checkpoint between the archive's end and the durable head yet: nothing to put
            # until the next one (the head is not a checkpoint, or the files lack the start).
            self._durable[chain] = archived
            return False
        self._put(segment)
        self._archived[chain] = segment.last
        return True

    def _resume(self, chain: str) -> int:
        newest: location.Segment | None = None
        for name in self._store.names(chain + "/"):
            found = location.parse_segment(name)
            if found is not None and found.chain == chain and (
                    newest is None or found.last > newest.last):
                newest = found
        if newest is None:
            # Nothing archived: start where the local files of the chain start.
            return self._local.first_seq(chain) - 1
        # The newest object may be one this gateway put just before a crash, or one put by
        # someone else under its name: while the local files still hold its records, it
        # counts only if it holds exactly their bytes (else its put is tried, and refused).
        try:
            local = self._local.next_segment(chain, newest.first, newest.last)
        except SegmentError:
            local = None
        if local is not None and local.last == newest.last:
            name = location.segment_name(chain, newest.first, newest.last)
            if self._store.read(name) != local.lines:
                return newest.first - 1
        return newest.last

    def _put(self, segment: Segment) -> None:
        if segment.note is not None:
            name = location.checkpoint_name(segment.chain, segment.tree_size)
            self._put_one(segment.chain, name, segment.note.encode("utf-8"), None)
        name = location.segment_name(segment.chain, segment.first, segment.last)
        self._put_one(segment.chain, name, segment.lines, segment.last)

    def _put_one(self, chain: str, name: str, data: bytes, archived: int | None) -> None:
        outcome = store.put_once(self._store, name, data)
        event: dict[str, Any] = {"chain": chain, "upload": "success", "object": name,
                                 "outcome": outcome, "bytes": len(data)}
        if archived is not None:
            event["archived"] = archived
        self._report(event)

    def _failed(self, chain: str, exc: Exception) -> None:
        self._failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (self._failures - 1))
        delay *= 0.8 + 0.4 * int.from_bytes(os.urandom(2)) / 0xFFFF  # jitter, 0.8 to 1.2
        self._retry_at = self._clock() + delay
        result = "conflict" if isinstance(exc, store.Conflict) else "failure"
        self._report({"chain": chain, "upload": result, "problem": str(exc),
                      "retry_in": round(delay, 3), "failures": self._failures})
