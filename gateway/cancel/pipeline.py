"""The cancel pipeline: everything one cancel goes through after routing.

Checks run in this order, and the first that fails answers: authentication, authorization,
invocation id, body, the team's rate limit and cancels in flight, the upstream token, the
circuit breaker, the scope lookup, the audit attempt record; then the forward (retried when
safe, see `gateway.upstream.retry`), the mapped answer, the result record and the metrics.

The single route (`CancelPipeline.cancel`) and each cancel of a bulk cancel
(`gateway.cancel.bulk`) go through the same public steps: `check_rate`, `upstream_token`,
`forward`, `finish`, `record_shutdown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Protocol

import structlog

from gateway.access.auth import Principal
from gateway.access.batches import BatchSlots
from gateway.access.policy import Policy
from gateway.asgi import (
    IN_PROGRESS,
    TIMED_OUT,
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    read_body,
    send_error,
    send_response,
)
from gateway.audit.suppression import DeniedSuppression
from gateway.audit.writer import AuditLog, AuditUnavailable
from gateway.cancel.cancellation import Cancellation, cancel_record
from gateway.config.model import Config
from gateway.errors import (
    GatewayError,
    RequestRejected,
    ServiceUnavailable,
    UpstreamRefused,
    method_not_allowed,
)
from gateway.jobs import Job, JobContext
from gateway.secrets.sources import SecretSource
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.traces import TRACES_OFF, Traces
from gateway.upstream import mapping, retry
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import UpstreamClient
from gateway.upstream.lookup import JobLookup

log = structlog.get_logger("gateway")

CANCEL_PREFIX = b"/api/v1/invocations/"
CANCEL_ROUTE = "/api/v1/invocations/{invocation_id}"
_HEX = rb"[0-9a-fA-F]"
UUID_RE = re.compile(_HEX + rb"{8}-" + _HEX + rb"{4}-" + _HEX + rb"{4}-" + _HEX + rb"{4}-" + _HEX
                     + rb"{12}")
MAX_BODY_BYTES = 1024


class Identified(Protocol):
    """What a caller's record is: a cancel's or a batch's, each naming its principal."""

    principal: Principal | None


class CancelPipeline:
    """The parts a cancel goes through, and the current `Policy` (swapped whole by a reload;
    a request reads it once, at its start)."""

    def __init__(
        self, config: Config, *, policy: Policy, token: SecretSource, audit: AuditLog,
        upstream: UpstreamClient, lookup: JobLookup, breaker: CircuitBreaker,
        denied: DeniedSuppression, metrics: Metrics, traces: Traces = TRACES_OFF,
    ) -> None:
        self.config = config
        self.policy = policy
        self.token = token
        self.audit = audit
        self.upstream = upstream
        self.lookup = lookup
        self.breaker = breaker
        self.denied = denied
        self.metrics = metrics
        self.traces = traces
        self.retry_policy = retry.RetryPolicy(config.upstream.retries, config.upstream.deadline)
        self.draining = False  # set by SIGTERM: a bulk cancel starts no further cancels
        self.batches = BatchSlots(config.bulk.max_batches)  # bulk cancels running, by team

    async def cancel(
        self, scope: Scope, receive: Receive, send: Send, exchange: Exchange, raw_id: bytes,
        started: float,
    ) -> None:
        """`PUT /api/v1/invocations/{invocation_id}`, from its checks to its result record."""
        if scope["method"] != "PUT":
            exchange.error = "method_not_allowed"
            await send_error(send, method_not_allowed("PUT"))
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        well_formed = UUID_RE.fullmatch(raw_id) is not None
        client = scope.get("client")
        cancel = Cancellation(
            request_id=exchange.request_id,
            # Canonical when well-formed, even on a refusal that comes before the id check.
            invocation_id=(raw_id.decode("ascii").lower() if well_formed
                           else raw_id[:128].decode("latin-1")),
            client=client[0] if client else None,
            started=started,
            in_progress=scope.get(IN_PROGRESS),
        )
        status, outcome = 500, "upstream_error"
        error: str | None = "internal_error"
        failure: GatewayError | None = None
        policy = self.policy  # once: a reload mid-request does not change its rules
        in_flight: str | None = None  # the team counted in flight, to release
        probe = False
        try:
            principal = self.identify(policy, headers, exchange, cancel)
            if not well_formed:
                raise RequestRejected(
                    "invocation_id must be a UUID (8-4-4-4-12 hex digits)",
                    status=400, code="invalid_invocation_id", outcome="invalid_request",
                )
            await read_body(headers, receive, limit=MAX_BODY_BYTES, too_large=RequestRejected(
                f"a cancel takes no body; at most {MAX_BODY_BYTES} bytes are accepted",
                status=413, code="payload_too_large", outcome="invalid_request"))
            self.check_rate(policy, principal.team)
            policy.in_flight.enter(principal.team)
            in_flight = principal.team
            token = self.upstream_token()
            probe = self.breaker.admit()
            scopes = policy.scopes
            if scopes.needs_lookup(principal.team) or self.config.audit.record_context:
                cancel.context = await self.traces.traced("get_job", self.job_context)(
                    cancel.invocation_id, token, cancel.request_id)
                if scopes.needs_lookup(principal.team):
                    scopes.authorize_job(principal.team, cancel.context)
            reply = await self.forward(cancel, token)
            status, outcome, error = reply.status, reply.outcome, reply.error
            await send_response(send, reply.status, reply.body,
                                [(k.encode(), v.encode()) for k, v in reply.headers.items()])
        except ClientGone:
            status, outcome, error = 499, "invalid_request", "client_disconnected"
            if scope.get(TIMED_OUT):  # the protocol answered 408 and closed
                status, error = 408, "request_timeout"
        except GatewayError as exc:
            cancel.upstream_status = exc.upstream_status
            status, outcome, error = exc.status, exc.outcome, exc.code
            failure = exc
        except asyncio.CancelledError:
            self.record_shutdown(cancel)
            raise
        except Exception:
            log.exception("cancel.internal_error", request_id=cancel.request_id)
            failure = GatewayError("internal error")
        finally:
            if in_flight is not None:
                policy.in_flight.leave(in_flight)
            if probe:
                self.breaker.end_probe()
        if failure is not None:
            # Outside the handlers, so that nothing here can skip the result record below.
            try:
                await send_error(send, failure, close=failure.status == 413)
            except Exception:
                log.exception("cancel.answer_failed", request_id=cancel.request_id)
        exchange.error = error
        await self.finish(cancel, status=status, outcome=outcome, error=error)

    def identify(self, policy: Policy, headers: list[tuple[bytes, bytes]],
                 exchange: Exchange, record: Identified) -> Principal:
        """Who calls (401 `unauthenticated`) and whether that team may cancel at all (403
        `forbidden`); the key's use is counted. `record` names the caller before the
        authorization, so that a refused team's record still says who it was."""
        principal = record.principal = policy.authenticator.authenticate(headers)
        exchange.team = principal.team
        policy.key_used(principal)
        policy.authorizer.authorize(principal)
        return principal

    def check_rate(self, policy: Policy, team: str) -> None:
        """The team's rate limit: 429 `rate_limited` with `Retry-After` when over it."""
        retry_after = policy.limits.retry_after(team)
        if retry_after:
            raise RequestRejected(
                "too many requests for this team; retry later", status=429,
                code="rate_limited", outcome="rate_limited",
                headers={"retry-after": str(retry_after)},
            )

    def upstream_token(self) -> str:
        """The Chroma token, or 503 `token_unavailable`."""
        token = self.token.value
        if token is None:
            raise ServiceUnavailable(
                "the gateway has no valid upstream token", code="token_unavailable")
        return token

    def secrets(self) -> tuple[str, ...]:
        """What upstream text in records must not hold: the current token, if there is one."""
        token = self.token.value
        return (token,) if token else ()

    async def forward(self, cancel: Cancellation, token: str) -> mapping.Reply:
        """What every cancel goes through: for each try, its durable attempt record, then the
        PUT, mapped; retried when safe and settled by a lookup when ambiguous (`retry`)."""
        # Lambdas returning the coroutines: no extra coroutine frames on the hot path (nor
        # spans: `traced` gives them back as they are while tracing is off).
        traced = self.traces.traced
        sender = retry.Sender(
            cancel, self.retry_policy, started=cancel.started,
            record_attempt=traced("audit.commit", lambda: self.audit.write(cancel_record(
                "cancel.attempt", cancel, outcome="pending", status=None, error=None,
                secrets=(token,)), alone=cancel.alone)),
            put=traced("cancel", lambda timeout: self._put(
                cancel.invocation_id, token, cancel.request_id, timeout)),
            look_up=traced("get_job", lambda timeout: self._settle(
                cancel.invocation_id, token, cancel.request_id, timeout)),
            blocked=lambda: self.breaker.blocking,
        )
        return await sender.send()

    def record_shutdown(self, cancel: Cancellation) -> None:
        """Shutdown ran out of grace for this cancel: its result is still recorded, at close."""
        self.audit.write_later(cancel_record(
            "cancel.result", cancel, status=None, error="shutdown",
            outcome="upstream_error" if cancel.forwarded else "unavailable",
            secrets=self.secrets(),
        ))

    async def finish(
        self, cancel: Cancellation, *, status: int, outcome: str, error: str | None
    ) -> None:
        """Count the cancel and write its result record, whatever its end."""
        team = cancel.principal.team if cancel.principal else ""
        self.metrics.cancels.labels(outcome, team).inc()
        result = cancel_record("cancel.result", cancel, outcome=outcome, status=status,
                               error=error, secrets=self.secrets())
        if self.denied.admit(result, authenticated=cancel.principal is not None):
            with contextlib.suppress(AuditUnavailable):
                await self.audit.write(result, retain=True, durable=False)

    async def job_context(self, invocation_id: str, token: str, request_id: str) -> JobContext:
        """What the job touches (`get_job`, cached by invocation id), counted as hit or miss."""
        try:
            context, hit = await self.lookup.context(invocation_id, token=token,
                                                     request_id=request_id)
        except GatewayError as exc:
            self.metrics.job_lookups.labels("failed").inc()
            self.count_failure("get_job", exc)
            log.warning("upstream.lookup_failed", request_id=request_id, error=exc.code,
                        upstream_status=exc.upstream_status)
            raise
        self.metrics.job_lookups.labels("hit" if hit else "miss").inc()
        return context

    def count_failure(self, call: str, exc: GatewayError) -> None:
        """An exchange of `call` (cancel, get_job, list_jobs) with no usable answer: counted,
        so that one alert covers a refused token whichever call met it first. A refusal that
        upstream meant for the caller (a 404 lookup) is an answer, not a failure."""
        if not isinstance(exc, UpstreamRefused):
            self.metrics.upstream_failures.labels(exc.code, call).inc()

    async def _settle(
        self, invocation_id: str, token: str, request_id: str, timeout: float | None
    ) -> Job:
        """The lookup that settles an ambiguous try (`retry`), its failures counted."""
        try:
            return await self.lookup.job(invocation_id, token=token, request_id=request_id,
                                         timeout=timeout)
        except GatewayError as exc:
            self.count_failure("get_job", exc)
            raise

    async def _put(
        self, invocation_id: str, token: str, request_id: str, timeout: float | None = None
    ) -> mapping.Reply:
        try:
            answer = await self.upstream.cancel(invocation_id, token=token, request_id=request_id,
                                                timeout=timeout)
        except GatewayError as exc:
            self.count_failure("cancel", exc)
            log.warning("upstream.failed", request_id=request_id, error=exc.code,
                        message=exc.message)
            raise
        self.metrics.upstream_seconds.observe(answer.seconds)
        self.metrics.upstream_responses.labels(str(answer.status)).inc()
        try:
            return mapping.interpret(answer, secrets=(token,))
        except GatewayError as exc:
            exc.upstream_status = answer.status
            self.count_failure("cancel", exc)
            log.warning("upstream.failed", request_id=request_id, error=exc.code,
                        upstream_status=answer.status)
            raise
