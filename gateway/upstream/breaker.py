"""The upstream circuit breaker: a string of failed exchanges stops the gateway calling upstream.

    closed ── `failures` consecutive failed exchanges ──> open (for `seconds`)
    open ── `seconds` pass; the next cancel is the probe ──> half-open
    half-open ── the probe's exchange succeeds ──> closed; fails ──> open again

A failed exchange is one with no answer (refused, timeout, reset, broken) or a 5xx; any
other answer, 4xx included, shows upstream is up. While open, and while a probe is out, every
other cancel is refused at once: nothing is forwarded and nothing is looked up.
"""

from __future__ import annotations

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

    def admit(self) -> bool:
        """Let a cancel through, or raise 503 `upstream_unavailable`; True for the probe."""
        if self.state == CLOSED:
            return False
        if self.state == OPEN and self._clock() >= self._until:
            self.state = HALF_OPEN
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            log.info("upstream.circuit_probe")
            return True
        raise ServiceUnavailable(
            "circuit open: Chroma Sync is failing, so the gateway is not calling it; "
            "retry later",
            code="upstream_unavailable",
        )

    def end_probe(self) -> None:
        """The probe is over; if it never reached upstream, the next cancel probes instead."""
        self._probing = False

    @property
    def blocking(self) -> bool:
        """Whether a cancel already admitted should stop sending more requests."""
        return self.state == OPEN

    def record(self, failed: bool) -> None:
        """One upstream exchange ended (every one is reported, lookups included)."""
        if self.state == OPEN:
            return  # the answers of cancels sent before it opened: only a probe decides
        if not failed:
            self._consecutive = 0
            if self.state != CLOSED:
                self.state, self._probing = CLOSED, False
                log.info("upstream.circuit_closed")
                self._changed(False)
            return
        self._consecutive += 1
        if self.state == HALF_OPEN or (
            self.state == CLOSED and self._consecutive >= self.failures
        ):
            self.state, self._probing = OPEN, False
            self._until = self._clock() + self.seconds
            log.warning("upstream.circuit_opened", consecutive_failures=self._consecutive,
                        seconds=self.seconds)
            self._changed(True)

    def _changed(self, opened: bool) -> None:
        if self._on_change is not None:
            self._on_change(opened)
