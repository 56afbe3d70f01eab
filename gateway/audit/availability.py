"""Whether the audit log accepts writes, and why not: each cause logged once, every failure
counted (`on_failure`). A log whose file was deleted or replaced under the gateway is failed
closed for good: a new chain is never started while running.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from gateway.audit.files import LogFile

log = structlog.get_logger("gateway.audit")

LOST_FILE = ("audit.path no longer names the file the gateway opened (deleted or replaced); "
             "the chain is not restarted while running: check the log, then restart")


class Availability:
    def __init__(self, on_failure: Callable[[], None] | None = None) -> None:
        self.ready = False
        self.problem: str | None = "not opened yet"
        self.file_lost = False  # audit.path no longer names the file: failed until restart
        self._reported: str | None = None  # the cause last logged, so each is logged once
        self._on_failure = on_failure

    def ok(self) -> None:
        self.ready, self._reported = True, None
        self.problem = None

    def fail(self, problem: str) -> None:
        # Compared with what was logged, not with `problem`: a lock problem sets that before.
        if self.ready or self._reported != problem:
            log.error("audit.unavailable", problem=problem)
            self._reported = problem
        self.ready = False
        self.problem = problem
        if self._on_failure is not None:
            self._on_failure()

    def still_ours(self, file: LogFile) -> bool:
        """Whether `audit.path` still names the open file; if not, fail closed for good."""
        if self.file_lost:
            return False
        if not file.still_named():
            self.lose_file()
            return False
        return True

    def lose_file(self) -> None:
        self.file_lost = True
        self.fail(LOST_FILE)
