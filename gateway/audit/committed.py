"""What follows a batch that is written (and, with `audit.fsync`, durable): the stdout mirror
gets its lines, a written `audit.deleted` record deletes its file, and a checkpoint is logged
and handed to the archive, which may take everything up to it once it is durable: a
checkpoint in a batch that was not fsynced (a batch without an attempt record) is handed over
with the next batch that is."""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from gateway.audit.mirror import StdoutMirror
from gateway.audit.retention import Retention

log = structlog.get_logger("gateway.audit")


class ArchiveHooks(Protocol):
    """What the writer tells the archive (`gateway.audit.archive.archiver.Archiver`)."""

    def checkpoint_durable(self, chain: str, seq: int) -> None: ...

    def written(self, chain: str, seq: int) -> None: ...

    def covers(self, seq: int) -> bool: ...


class Committed:
    def __init__(self, mirror: StdoutMirror | None, retention: Retention,
                 archive: ArchiveHooks | None) -> None:
        self.mirror = mirror
        self._retention = retention
        self._archive = archive
        self._unsynced: tuple[str, int] | None = None  # a checkpoint written, not fsynced yet

    def __call__(self, data: bytes, sealed: list[dict[str, Any]], *, synced: bool) -> None:
        if self.mirror is not None:
            self.mirror.write(data, len(sealed))
        for record in sealed:
            if record["event"] == "audit.deleted":
                self._retention.delete(record)
            elif record["event"] == "audit.checkpoint":
                if isinstance(record.get("chain"), str):
                    self._unsynced = (record["chain"], record["seq"])
                log.info(
                    "audit.checkpoint", seq=record["seq"], hash=record["hash"],
                    head_seq=record["head_seq"], head_hash=record["head_hash"],
                    chain=record.get("chain"), tree_size=record.get("tree_size"),
                    root=record.get("root"), note=record.get("note"),
                )
        if synced and self._unsynced is not None:
            if self._archive is not None:
                self._archive.checkpoint_durable(*self._unsynced)
            self._unsynced = None
        last = sealed[-1] if sealed else None
        if self._archive is not None and last is not None and isinstance(last.get("chain"), str):
            self._archive.written(last["chain"], last["seq"])  # for the lag
