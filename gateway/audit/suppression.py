"""Denied-request audit suppression: unauthenticated callers can't fill the audit disk.

A request refused before authentication succeeded (401, and 400 or 413 answered to a caller
with no valid key) costs its sender nothing and the audit log a record. Per client address at
most `audit.denied_per_second` such `cancel.result` (or bulk `batch.result`) records are
written each second, both routes counted together; the rest
are still answered and counted, and summed up in one `audit.suppressed` record per client per
second of excess:

    {"event": "audit.suppressed", "client": "10.0.0.7", "count": 1412,
     "outcomes": {"unauthenticated": 1400, "invalid_request": 12},
     "first_ts": "...", "last_ts": "..."}

Nothing denied goes unrecorded: every refused request is either a `cancel.result` record or
counted in an `audit.suppressed` one. A window's summary is written when that client's next
second begins or, at the latest, about a second after the window closed (`sweep`, which the
gateway calls once a second, and at shutdown).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.audit.timestamps import utc_timestamp

# Refusals that can come before a key is checked (or with no valid key at all), and the
# outcome each stands for in a record that names none (a bulk cancel's `batch.result`).
DENIED_OUTCOMES = {400: "invalid_request", 401: "unauthenticated", 413: "invalid_request"}
DENIED_STATUSES = frozenset(DENIED_OUTCOMES)


class _Window:
    __slots__ = ("admitted", "first_ts", "last_ts", "outcomes", "second", "suppressed")

    def __init__(self, second: int) -> None:
        self.second = second
        self.admitted = 0
        self.suppressed = 0
        self.outcomes: dict[str, int] = {}
        self.first_ts = ""
        self.last_ts = ""


class DeniedSuppression:
    """Decides which denied results are written, and writes the summaries of the rest."""

    def __init__(
        self,
        per_second: int,
        *,
        write: Callable[[dict[str, Any]], None],
        on_suppressed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_second = per_second
        self._write = write  # queues a record nobody waits for (`AuditLog.write_later`)
        self._on_suppressed = on_suppressed
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, record: dict[str, Any], *, authenticated: bool) -> bool:
        """Whether to write this `cancel.result` record; if not, it is counted for a summary."""
        if authenticated or record["status"] not in DENIED_STATUSES:
            return True
        client = record["client"] or ""
        now = self._clock()
        second = int(now)
        window = self._windows.get(client)
        if window is None or window.second != second:
            if window is not None:
                self._summarize(client, window)
            window = self._windows[client] = _Window(second)
        if window.admitted < self.per_second:
            window.admitted += 1
            return True
        window.suppressed += 1
        outcome = record.get("outcome") or DENIED_OUTCOMES[record["status"]]
        window.outcomes[outcome] = window.outcomes.get(outcome, 0) + 1
        ts = record["ts"]
        if not window.first_ts:
            window.first_ts = ts
        window.last_ts = ts
        if self._on_suppressed is not None:
            self._on_suppressed()
        return False

    def sweep(self, *, everything: bool = False) -> None:
        """Summarize the windows of seconds gone by (all of them with `everything`)."""
        if not self._windows:
            return
        second = int(self._clock())
        done = [client for client, window in self._windows.items()
                if everything or window.second < second]
        for client in done:
            self._summarize(client, self._windows.pop(client))

    def _summarize(self, client: str, window: _Window) -> None:
        if not window.suppressed:
            return
        self._write({
            "ts": utc_timestamp(),
            "event": "audit.suppressed",
            "client": client or None,
            "count": window.suppressed,
            "outcomes": dict(sorted(window.outcomes.items())),
            "first_ts": window.first_ts,
            "last_ts": window.last_ts,
        })
