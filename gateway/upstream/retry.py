"""One cancel, sent up to 1 + `upstream.retries` times within `upstream.deadline`, and settled.

A retry is sent only when it can't cancel twice or report the wrong thing:

- the previous PUT certainly never left (refused, connect timeout);
- upstream answered 502, 503 or 504;
- upstream answered 429 with a `Retry-After` that fits in the remaining deadline (that wait
  is honoured instead of the backoff).

Between other tries: exponential backoff from 0.1 s with full jitter. A 500, and every other
answer, is final.

A try that may have taken effect without saying so (sent, then a timeout, a reset or a broken
answer) is settled with `get_job` before anything else (reconciliation): `cancelled` is a 202,
`pending` may be retried, any other state is a 412; a failed lookup leaves the original error.
A 412 that follows such a try (or a 502/504, which a proxy in front of Chroma Sync may send
after forwarding) is settled the same way, as the earlier PUT may be what made it 412.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway.errors import GatewayError, UpstreamFailure, error_body
from gateway.jobs import Job
from gateway.upstream.mapping import Reply

log = structlog.get_logger("gateway")

RETRYABLE_STATUSES = frozenset({502, 503, 504})
# Gateway errors: a proxy may send them after the PUT reached Chroma Sync.
DOUBTFUL_STATUSES = frozenset({502, 504})
# A reconciliation lookup still gets this long when the deadline is (nearly) spent: without it
# a PUT timed out at the deadline could never be settled, the very case it exists for.
RECONCILE_FLOOR = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    deadline: float
    base: float = 0.1

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, base * 2^(retry - 1)) before retry 1, 2, ..."""
        return rng() * self.base * 2.0 ** (retry - 1)


class Progress(Protocol):
    """What the audit trail keeps of a cancel's tries (`gateway.server.app.Cancellation`)."""

    request_id: str
    tries: int  # attempt records written: each try's `attempt`
    attempts: int  # PUTs sent, or that may have been
    reconciled: bool  # the answer was settled by a lookup
    forwarded: bool
    upstream_status: int | None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delay-seconds or an HTTP date; None if neither."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Sender:
    """The loop for one cancel; `send()` returns the caller's reply or raises its error."""

    def __init__(
        self,
        progress: Progress,
        policy: RetryPolicy,
        *,
        started: float,
        record_attempt: Callable[[], Awaitable[None]],
        put: Callable[[float], Awaitable[Reply]],
        look_up: Callable[[float], Awaitable[Job]],
        blocked: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.progress = progress
        self.policy = policy
        self._end = started + policy.deadline
        self._record_attempt = record_attempt
        self._put = put
        self._look_up = look_up
        self._blocked = blocked  # the circuit breaker opened meanwhile: send nothing more
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._doubt = False  # an earlier PUT may have taken effect unseen

    def _remaining(self) -> float:
        return self._end - self._clock()

    async def send(self) -> Reply:
        last: GatewayError | Reply | None = None
        wait: float | None = None  # before the next try; None: the backoff
        while True:
            if last is not None:
                if not await self._pause(wait):
                    return _final(last)
            remaining = self._remaining()
            if remaining <= 0:
                if last is None:
                    failure = UpstreamFailure(
                        "the cancel's deadline passed before it could be sent",
                        status=504, code="upstream_timeout")
                    failure.sent = False
                    raise failure
                return _final(last)
            self.progress.tries += 1
            try:
                await self._record_attempt()
            except GatewayError:
                if last is None:
                    raise
                return _final(last)  # a retry that can't be audited is not sent
            self.progress.forwarded = True
            wait = None
            try:
                reply = await self._put(remaining)
            except GatewayError as exc:
                self.progress.upstream_status = exc.upstream_status
                transport = isinstance(exc, UpstreamFailure) and exc.upstream_status is None
                if transport and isinstance(exc, UpstreamFailure) and not exc.sent:
                    last = exc
                    continue
                self.progress.attempts += 1
                if transport:
                    self._doubt = True
                    settled = await self._settle(exc)
                    if settled is not None:
                        return settled
                    last = exc
                    continue
                if exc.upstream_status in RETRYABLE_STATUSES:
                    self._doubt = self._doubt or exc.upstream_status in DOUBTFUL_STATUSES
                    last = exc
                    continue
                raise
            self.progress.attempts += 1
            self.progress.upstream_status = reply.upstream_status
            if reply.status == 429:
                wait = retry_after_seconds(reply.headers.get("retry-after"))
                if wait is None or wait >= self._remaining():
                    return reply  # no wait named, or it doesn't fit: the caller gets the 429
                last = reply
                continue
            if reply.status == 412 and self._doubt:
                settled = await self._settle(reply)
                if settled is not None:
                    return settled
                last = reply
                continue
            return reply

    async def _pause(self, wait: float | None) -> bool:
        """Wait before the next try; False when no retry may be sent."""
        retry = self.progress.tries  # tries so far = the number of this retry
        if retry > self.policy.retries or self._blocked():
            return False
        if wait is None:
            wait = self.policy.backoff(retry, self._rng)
        if wait >= self._remaining():
            return False
        log.info("upstream.retry", request_id=self.progress.request_id, attempt=retry + 1,
                 wait_s=round(wait, 3))
        if wait > 0:
            await self._sleep(wait)
        return not self._blocked()

    async def _settle(self, original: GatewayError | Reply) -> Reply | None:
        """Reconciliation: the job's state decides; None means "pending: retry if you may"."""
        timeout = max(self._remaining(), RECONCILE_FLOOR)
        try:
            job = await self._look_up(timeout)
        except GatewayError as exc:
            log.warning("upstream.reconcile_failed", request_id=self.progress.request_id,
                        error=exc.code)
            return _final(original)
        log.info("upstream.reconciled", request_id=self.progress.request_id,
                 job_status=job.status)
        if job.status == "pending":
            return None  # not cancelled: the loop retries if retries and deadline remain
        self.progress.reconciled = True
        status = self.progress.upstream_status
        if job.status == "cancelled":
            return Reply(202, b"{}", "cancelled", None, status)
        return Reply(
            412,
            error_body("not_cancelable",
                       f"Invocation is not in a cancelable state (it is {job.status})"),
            "not_cancelable", "not_cancelable", status,
        )


def _final(last: GatewayError | Reply) -> Reply:
    """The last try's answer stands: returned if it was one, raised if it was an error."""
    if isinstance(last, GatewayError):
        raise last
    return last
