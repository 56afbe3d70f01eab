"""The upstream circuit breaker: a string of failed exchanges stops the gateway calling upstream.

    closed ── `failures` consecutive failed exchanges ──> open (for `seconds`)
    open ── `seconds` pass; the next cancel is the probe ──> half-open
    half-open ── the probe's exchange succeeds ──> closed; fails ──> open again

A failed exchange is one with no answer (refused, timeout, reset, broken) or a 5xx; any
other answer, 4xx included, shows upstream is up. While open, and while a probe is out, every
other cancel is refused at once: nothing is forwarded and nothing is looked up.

Only the probe decides: an exchange that started before the circuit last opened (or, while
half-open, before the probe was admitted) answers too late to move it, whatever it says. The
client reports each exchange with the moment it started. Exactly one probe is out at a time:
its flag is cleared only by its own end (the task that was admitted as the probe), never by an
older probe ending late.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import structlog

from gateway.errors import ServiceUnavailable

log = structlog.get_logger("gateway")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self, *, failures: int, seconds: float, clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.failures = failures
        self.seconds = seconds
        self.state = CLOSED
        self._clock = clock
        self._on_change = on_change  # told True when it opens, False when it closes
        self._consecutive = 0
        self._until = 0.0
        self._probing = False
        self._holder: object | None = None  # the probe's task (None outside an event loop)
        self._since = -math.inf  # exchanges that started earlier can't move it

    def admit(self) -> bool:
        """Let a cancel through, or raise 503 `upstream_unavailable`; True for the probe."""
        if self.state == CLOSED:
            return False
        if self.state == OPEN and self._clock() >= self._until:
            self.state = HALF_OPEN
        if self.state == HALF_OPEN and not self._probing:
            self._probing, self._holder = True, _current_task()
            self._since = self._clock()
            log.info("upstream.circuit_probe")
            return True
        raise ServiceUnavailable(
            "circuit open: Chroma Sync is failing, so the gateway is not calling it; "
            "retry later",
            code="upstream_unavailable",
        )

    def end_probe(self) -> None:
        """The probe is over; if it never reached upstream, the next cancel probes instead.

        Called by the task that `admit` made the probe; a probe from before the last opening,
        ending late, leaves the current probe's flag alone."""
        if self._probing and self._holder is _current_task():
            self._probing, self._holder = False, None

    @property
    def blocking(self) -> bool:
        """Whether a cancel already admitted should stop sending more requests: while open, and
        while half-open (where only the probe, which a retry never is, may reach upstream)."""
        return self.state != CLOSED

    def record(self, failed: bool, started: float | None = None) -> None:
        """One upstream exchange ended (every one is reported, lookups included); `started`:
        when it began (the breaker's clock), None for "just now"."""
        if self.state == OPEN or (started is not None and started < self._since):
            return  # an answer to an exchange from before the circuit opened: only a probe decides
        if not failed:
            self._consecutive = 0
            if self.state != CLOSED:
                self.state, self._probing, self._holder = CLOSED, False, None
                log.info("upstream.circuit_closed")
                self._changed(False)
            return
        self._consecutive += 1
        if self.state == HALF_OPEN or (
            self.state == CLOSED and self._consecutive >= self.failures
        ):
            # A probe that failed stays the probe until it ends: no second one meanwhile.
            self.state = OPEN
            self._since = self._clock()
            self._until = self._since + self.seconds
            log.warning("upstream.circuit_opened", consecutive_failures=self._consecutive,
                        seconds=self.seconds)
            self._changed(True)

    def _changed(self, opened: bool) -> None:
        if self._on_change is not None:
            self._on_change(opened)


def _current_task() -> object | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop (a test calling it directly)
        return None
