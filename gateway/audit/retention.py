"""`audit.keep_files`: rotated files beyond it are deleted, each deletion recorded in the chain.

A file is deleted only once its `audit.deleted` record is written, so a deletion is never
unrecorded: a crash in between leaves the file, and the record, in place. With `audit.archive`,
a file whose records are not all archived yet is kept (`archived`): it is planned again when
the archive catches up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import structlog

from gateway.audit.files import fsync_dir, rotated_files
from gateway.audit.recovery import BrokenTail, first_seq, read_tail
from gateway.audit.timestamps import utc_timestamp

log = structlog.get_logger("gateway.audit")


class Retention:
    """Which rotated files of `path` are due for deletion, and deleting them once recorded."""

    def __init__(self, path: str, keep_files: int | None,
                 archived: Callable[[int], bool] | None = None) -> None:
        self.path = path
        self.keep_files = keep_files  # None keeps them all
        self._deleting: set[str] = set()  # files whose `audit.deleted` is not written yet
        self._archived = archived  # whether records up to that seq are in the archive
        self._held: set[str] = set()  # files kept for the archive (logged once each)

    def plan(self) -> list[dict[str, Any]]:
        """An `audit.deleted` record for each rotated file beyond `keep_files` (once each)."""
        keep = self.keep_files
        if keep is None:
            return []
        bodies: list[dict[str, Any]] = []
        files = rotated_files(self.path)
        for path in files[: max(0, len(files) - keep)]:
            name = os.path.basename(path)
            if name in self._deleting:
                continue
            try:
                tail = read_tail(path)
            except (OSError, BrokenTail):
                tail = None
            if self._archived is not None and (tail is None or not self._archived(tail.seq)):
                if name not in self._held:
                    self._held.add(name)
                    log.warning("audit.retention_held", file=name,
                                last_seq=tail.seq if tail else None,
                                reason="its records are not archived yet")
                break  # the older ones first: none after it either
            self._held.discard(name)
            self._deleting.add(name)
            bodies.append({
                "ts": utc_timestamp(), "event": "audit.deleted", "file": name,
                "first_seq": first_seq(path),
                "last_seq": tail.seq if tail else None, "last_hash": tail.head if tail else None,
                "reason": f"audit.keep_files = {keep}",
            })
        return bodies

    def delete(self, record: dict[str, Any]) -> None:
        """Delete the file a written `audit.deleted` record names."""
        name = record["file"]
        self._deleting.discard(name)
        try:
            os.unlink(os.path.join(os.path.dirname(self.path), name))
        except OSError as exc:
            log.error("audit.delete_failed", file=name, problem=exc.strerror)
            return
        fsync_dir(self.path)
        log.info("audit.deleted", file=name, last_seq=record["last_seq"],
                 last_hash=record["last_hash"], seq=record["seq"], hash=record["hash"])
