"""`audit.keep_files`: rotated files beyond it are deleted, each deletion recorded in the chain.

A file is deleted only once its `audit.deleted` record is written, so a deletion is never
unrecorded: a crash in between leaves the file, and the record, in place.
"""

from __future__ import annotations

import os
from typing import Any

import structlog

from gateway.audit.files import fsync_dir, rotated_files
from gateway.audit.recovery import BrokenTail, first_seq, read_tail
from gateway.audit.timestamps import utc_timestamp

log = structlog.get_logger("gateway.audit")


class Retention:
    """Which rotated files of `path` are due for deletion, and deleting them once recorded."""

    def __init__(self, path: str, keep_files: int | None) -> None:
        self.path = path
        self.keep_files = keep_files  # None keeps them all
        self._deleting: set[str] = set()  # files whose `audit.deleted` is not written yet

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
            self._deleting.add(name)
            try:
                tail = read_tail(path)
            except (OSError, BrokenTail):
                tail = None
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
