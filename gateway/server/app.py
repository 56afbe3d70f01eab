"""The ASGI application: the cancel route, health, readiness and metrics.

The cancel route is matched and checked on the *raw* path (Starlette would percent-decode it),
in the order SPEC.md gives: route, authentication, authorization, invocation id, body, the
caller's limits, the upstream token, the circuit breaker, the scope lookup, the audit attempt
record; then the forward (retried when safe, see `gateway.upstream.retry`). Every other
path goes to a small Starlette app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sized
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.access.auth import Principal
from gateway.access.policy import Policy, build_policy
from gateway.audit.log import AuditLog, AuditUnavailable, utc_timestamp
from gateway.audit.suppression import DeniedSuppression
from gateway.config.load import Config
from gateway.errors import (
    GatewayError,
    RequestRejected,
    ServiceUnavailable,
    method_not_allowed,
    render,
)
from gateway.jobs import JobContext
from gateway.secrets.sources import (
    MIN_HMAC_KEY_CHARS,
    FileSecret,
    SecretSource,
    fingerprint,
    upstream_token_source,
)
from gateway.secrets.watch import Watcher
from gateway.server.reload import Reloader
from gateway.telemetry import logs
from gateway.telemetry.metrics import CONTENT_TYPE, Metrics
from gateway.upstream import mapping, retry
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import UpstreamClient
from gateway.upstream.lookup import JobLookup

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = structlog.get_logger("gateway")

CANCEL_PREFIX = b"/api/v1/invocations/"
CANCEL_ROUTE = "/api/v1/invocations/{invocation_id}"
BULK_PATH = b"/gateway/v1/bulk-cancel"  # handled by gateway.cancel.bulk
_HEX = rb"[0-9a-fA-F]"
UUID_RE = re.compile(_HEX + rb"{8}-" + _HEX + rb"{4}-" + _HEX + rb"{4}-" + _HEX + rb"{4}-" + _HEX
                     + rb"{12}")
REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,128}")
MAX_BODY_BYTES = 1024
# Set in the scope by the protocol when the body did not arrive within server.header_timeout.
TIMED_OUT = "gateway.timed_out"
# Set in the scope by the protocol: the live collection of requests in progress (uvicorn's
# tasks, every connection's). A cancel that is the only one writes its attempt record at once.
IN_PROGRESS = "gateway.in_progress"


class ClientGone(Exception):
    """The caller disconnected before its request was complete: nothing is forwarded."""


@dataclass
class Cancellation:
    """One cancel as the audit trail sees it, from its first check to its result."""

    request_id: str
    invocation_id: str  # canonical, or the raw value cut to 128 characters
    client: str | None  # the socket's peer address
    started: float
    principal: Principal | None = None
    context: JobContext | None = None  # what the job touches, once looked up
    batch_id: str | None = None  # set for the cancels of a bulk cancel
    upstream_status: int | None = None
    forwarded: bool = False  # a PUT may have left
    tries: int = 0  # attempt records written; the last one's `attempt`
    attempts: int = 0  # PUTs sent (or that may have been): the result's `attempts`
    reconciled: bool = False  # the answer was settled by a lookup (`gateway.upstream.retry`)
    in_progress: Sized | None = None  # the requests in progress (`IN_PROGRESS`), if known

    @property
    def alone(self) -> bool:
        """Whether no other request is in progress: none could share this one's fsync."""
        return self.in_progress is not None and len(self.in_progress) <= 1


@dataclass
class Exchange:
    """What one request has become so far; read by the access log and the audit record."""

    request_id: str
    route: str = "other"
    status: int = 0
    team: str | None = None


def pick_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    values = [v for k, v in headers if k == b"x-request-id"]
    if len(values) == 1 and REQUEST_ID_RE.fullmatch(values[0]):
        return values[0].decode("ascii")
    return str(uuid.uuid4())


def framing_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """RFC 9112 section 6: framing a server and a proxy could read differently."""
    lengths = {v.strip() for k, v in headers if k == b"content-length"}
    codings = [v for k, v in headers if k == b"transfer-encoding"]
    if lengths and codings:
        return "both Content-Length and Transfer-Encoding"
    if len(lengths) > 1:
        return "differing Content-Length values"
    if lengths and not next(iter(lengths)).isdigit():
        return "a malformed Content-Length"
    if codings and b",".join(codings).strip().lower() != b"chunked":
        return "an unsupported transfer coding"
    return None


def host_problem(http_version: str, headers: list[tuple[bytes, bytes]]) -> str | None:
    """RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one Host (others at most one)."""
    hosts = 0
    for name, _ in headers:
        if name == b"host":
            hosts += 1
    if hosts > 1:
        return "more than one Host header"
    if not hosts and http_version == "1.1":
        return "an HTTP/1.1 request without a Host header"
    return None


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        token: SecretSource,
        audit: AuditLog,
        upstream: UpstreamClient,
        metrics: Metrics,
        policy: Policy,
        lookup: JobLookup | None = None,
        secrets: tuple[SecretSource, ...] = (),
    ) -> None:
        self.config = config
        self.token = token
        self.audit = audit
        self.upstream = upstream
        self.metrics = metrics
        # Swapped whole by a reload; a request reads it once, at its start.
        self.policy = policy
        self.lookup = lookup or JobLookup(upstream, cache_size=config.upstream.lookup_cache)
        self.retry_policy = retry.RetryPolicy(config.upstream.retries, config.upstream.deadline)
        self.breaker = CircuitBreaker(
            failures=config.upstream.breaker_failures, seconds=config.upstream.breaker_seconds,
            on_change=lambda opened: self.metrics.circuit_open.set(1 if opened else 0),
        )
        upstream.on_exchange = self.breaker.record  # every exchange, lookups included
        self._secrets = secrets or (token,)
        # Files re-read while running; other pieces (config, JWKS) register theirs here too.
        self.watcher = Watcher()
        for source in self._secrets:
            if isinstance(source, FileSecret):
                self.watcher.add(source.file, functools.partial(self._secret_changed, source))
        self._watcher: asyncio.Task[None] | None = None
        self.reloader = Reloader(self)
        self.denied = DeniedSuppression(
            config.audit.denied_per_second, write=audit.write_later,
            on_suppressed=metrics.audit_suppressed.inc,
        )
        self._sweeper: asyncio.TimerHandle | None = None
        self.draining = False  # set by SIGTERM: a bulk cancel starts no further cancels
        self.plain = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_exception},
            lifespan=self._lifespan,
        )
        self.plain.router.redirect_slashes = False  # `/healthz/` is a 404, not a redirect

    @classmethod
    def from_config(cls, config: Config, *, audit: AuditLog | None = None) -> Gateway:
        up = config.upstream
        token = upstream_token_source(up.token_file, up.token_env)
        metrics = Metrics()
        mac_key = (
            FileSecret(config.audit.hmac_key_file, what="audit HMAC key",
                       min_chars=MIN_HMAC_KEY_CHARS)
            if config.audit.hmac_key_file
            else None
        )
        if audit is None:
            audit = AuditLog(config.audit, mac_key=mac_key, token=token,
                             on_failure=metrics.audit_failures.inc,
                             on_stdout_drop=metrics.audit_stdout_dropped.inc)
        logs.count_dropped_lines(metrics.log_lines_dropped.inc)
        gateway = cls(
            config,
            token=token,
            audit=audit,
            upstream=UpstreamClient(up),
            metrics=metrics,
            policy=build_policy(config, metrics),
            secrets=(token,) + ((mac_key,) if mac_key else ()),
        )
        for issuer in gateway.policy.issuers:  # each JWKS, re-read when it changes
            gateway.watcher.add(issuer.file, issuer.adopt)
        return gateway

    # -- lifecycle --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        for source in self._secrets:
            source.refresh()
            self._report_secret(source, initial=True)
        self._update_gauges()
        await self.audit.start()
        self.reloader.start()
        self._watcher = asyncio.get_running_loop().create_task(self.watcher.run())
        self._sweep_denied()
        log.info(
            "gateway.started", upstream=self.config.upstream.base_url,
            audit_path=self.audit.path, teams=len(self.config.teams),
            transport=self.upstream.transport_name,
        )

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.reloader.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.denied.sweep(everything=True)
        await self.audit.close()
        await self.upstream.aclose()
        log.info("gateway.stopped", audit_records=self.audit.records_written)

    def drain(self) -> None:
        self.draining = True

    def _secret_changed(self, source: FileSecret) -> None:
        if source.update():
            self._report_secret(source, initial=False)
        self._update_gauges()

    def _sweep_denied(self) -> None:
        """Once a second: write the `audit.suppressed` summaries of seconds gone by."""
        self.denied.sweep()
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep_denied)

    def _report_secret(self, source: SecretSource, *, initial: bool) -> None:
        name = source.what.lower().replace(" ", "_")
        if source.value is not None:
            event = f"{name}.loaded" if initial else f"{name}.rotated"
            log.info(event, fingerprint=fingerprint(source.value))
            if not initial and source is self.token:
                self.metrics.token_rotations.inc()
        else:
            log.error(f"{name}.unavailable", problem=source.problem)

    def _update_gauges(self) -> None:
        self.metrics.token_available.set(1 if self.token.available else 0)
        self.metrics.audit_ready.set(1 if self.audit.ready else 0)
        self.metrics.audit_records.set(self.audit.records_written)

    # -- ASGI entry -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.plain(scope, receive, send)
            return
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        exchange = Exchange(request_id=pick_request_id(headers))
        request_id_header = (b"x-request-id", exchange.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        rest = raw_path[len(CANCEL_PREFIX):] if raw_path.startswith(CANCEL_PREFIX) else None
        try:
            problem = framing_problem(headers)
            if problem is not None:
                problem = f"ambiguous message framing: {problem}"
            else:
                problem = host_problem(scope["http_version"], headers)
            if problem is not None:
                exchange.route = "framing"
                await self._send_error(
                    send_with_id, RequestRejected(problem, status=400, code="bad_request"),
                    close=True,
                )
            elif rest is not None and b"/" not in rest:
                exchange.route = CANCEL_ROUTE
                await self._cancel(scope, receive, send_with_id, exchange, rest, started)
            elif raw_path == BULK_PATH:
                from gateway.cancel import bulk  # here: bulk builds on this module

                exchange.route = bulk.ROUTE
                await bulk.handle(self, scope, receive, send_with_id, exchange, started)
            else:
                exchange.route = scope["path"] if scope["path"] in (
                    "/healthz", "/readyz", "/metrics") else "other"
                await self.plain(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.request_seconds.labels(exchange.route).observe(seconds)
            log.info(
                "access", request_id=exchange.request_id, method=scope["method"],
                route=exchange.route, status=exchange.status,
                duration_ms=round(seconds * 1000, 3), team=exchange.team,
            )

    # -- the cancel route -------------------------------------------------------------------

    async def _cancel(
        self, scope: Scope, receive: Receive, send: Send, exchange: Exchange, raw_id: bytes,
        started: float,
    ) -> None:
        if scope["method"] != "PUT":
            await self._send_error(send, method_not_allowed("PUT"))
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
            principal = cancel.principal = policy.authenticator.authenticate(headers)
            exchange.team = principal.team
            policy.key_used(principal)
            policy.authorizer.authorize(principal)
            if not well_formed:
                raise RequestRejected(
                    "invocation_id must be a UUID (8-4-4-4-12 hex digits)",
                    status=400, code="invalid_invocation_id", outcome="invalid_request",
                )
            await _read_small_body(scope, headers, receive)
            self._check_rate(policy, principal.team)
            policy.in_flight.enter(principal.team)
            in_flight = principal.team
            token = self._upstream_token()
            probe = self.breaker.admit()
            scopes = policy.scopes
            if scopes.needs_lookup(principal.team) or self.config.audit.record_context:
                cancel.context = await self._job_context(cancel.invocation_id, token,
                                                         cancel.request_id)
                if scopes.needs_lookup(principal.team):
                    scopes.authorize_job(principal.team, cancel.context)
            reply = await self._forward_cancel(cancel, token)
            status, outcome, error = reply.status, reply.outcome, reply.error
            await _send(send, reply.status, reply.body,
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
            self._record_shutdown(cancel)
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
                await self._send_error(send, failure, close=failure.status == 413)
            except Exception:
                log.exception("cancel.answer_failed", request_id=cancel.request_id)
        await self._finish(cancel, status=status, outcome=outcome, error=error)

    def _check_rate(self, policy: Policy, team: str) -> None:
        retry_after = policy.limits.retry_after(team)
        if retry_after:
            raise RequestRejected(
                "too many requests for this team; retry later", status=429,
                code="rate_limited", outcome="rate_limited",
                headers={"retry-after": str(retry_after)},
            )

    def _upstream_token(self) -> str:
        token = self.token.value
        if token is None:
            raise ServiceUnavailable(
                "the gateway has no valid upstream token", code="token_unavailable")
        return token

    async def _forward_cancel(self, cancel: Cancellation, token: str) -> mapping.Reply:
        """What every cancel goes through: for each try, its durable attempt record, then the
        PUT, mapped; retried when safe and settled by a lookup when ambiguous (`retry`)."""
        # Lambdas returning the coroutines: no extra coroutine frames on the hot path.
        sender = retry.Sender(
            cancel, self.retry_policy, started=cancel.started,
            record_attempt=lambda: self.audit.write(self._record(
                "cancel.attempt", cancel, outcome="pending", status=None, error=None),
                alone=cancel.alone),
            put=lambda timeout: self._forward(cancel.invocation_id, token, cancel.request_id,
                                              timeout),
            look_up=lambda timeout: self.lookup.job(cancel.invocation_id, token=token,
                                                    request_id=cancel.request_id,
                                                    timeout=timeout),
            blocked=lambda: self.breaker.blocking,
        )
        return await sender.send()

    def _record_shutdown(self, cancel: Cancellation) -> None:
        """Shutdown ran out of grace for this cancel: its result is still recorded, at close."""
        self.audit.write_later(self._record(
            "cancel.result", cancel, status=None, error="shutdown",
            outcome="upstream_error" if cancel.forwarded else "unavailable",
        ))

    async def _finish(
        self, cancel: Cancellation, *, status: int, outcome: str, error: str | None
    ) -> None:
        """Count the cancel and write its result record, whatever its end."""
        team = cancel.principal.team if cancel.principal else ""
        self.metrics.cancels.labels(outcome, team).inc()
        result = self._record("cancel.result", cancel, outcome=outcome, status=status,
                              error=error)
        if self.denied.admit(result, authenticated=cancel.principal is not None):
            with contextlib.suppress(AuditUnavailable):
                await self.audit.write(result, retain=True, durable=False)

    async def _job_context(self, invocation_id: str, token: str, request_id: str) -> JobContext:
        try:
            context, hit = await self.lookup.context(invocation_id, token=token,
                                                     request_id=request_id)
        except GatewayError as exc:
            self.metrics.job_lookups.labels("failed").inc()
            log.warning("upstream.lookup_failed", request_id=request_id, error=exc.code,
                        upstream_status=exc.upstream_status)
            raise
        self.metrics.job_lookups.labels("hit" if hit else "miss").inc()
        return context

    async def _forward(
        self, invocation_id: str, token: str, request_id: str, timeout: float | None = None
    ) -> mapping.Reply:
        try:
            answer = await self.upstream.cancel(invocation_id, token=token, request_id=request_id,
                                                timeout=timeout)
        except GatewayError as exc:
            self.metrics.upstream_failures.labels(exc.code).inc()
            log.warning("upstream.failed", request_id=request_id, error=exc.code,
                        message=exc.message)
            raise
        self.metrics.upstream_seconds.observe(answer.seconds)
        self.metrics.upstream_responses.labels(str(answer.status)).inc()
        try:
            return mapping.interpret(answer, secrets=(token,))
        except GatewayError as exc:
            exc.upstream_status = answer.status
            self.metrics.upstream_failures.labels(exc.code).inc()
            log.warning("upstream.failed", request_id=request_id, error=exc.code,
                        upstream_status=answer.status)
            raise

    def _record(
        self, event: str, cancel: Cancellation, *, outcome: str, status: int | None,
        error: str | None,
    ) -> dict[str, Any]:
        principal, context = cancel.principal, cancel.context
        record: dict[str, Any] = {
            "ts": utc_timestamp(),
            "event": event,
            "request_id": cancel.request_id,
            "invocation_id": cancel.invocation_id,
            "team": principal.team if principal else None,
            "key_id": principal.key_id if principal else None,
            "client": cancel.client,
            "outcome": outcome,
            "status": status,
            # An attempt is written before its PUT: it has no upstream answer yet.
            "upstream_status": None if event == "cancel.attempt" else cancel.upstream_status,
            "error": error,
            "duration_ms": round((time.perf_counter() - cancel.started) * 1000, 3),
            "database": context.database if context else None,
            "collection": context.collection if context else None,
            "source_id": context.source_id if context else None,
        }
        if event == "cancel.attempt":
            record["attempt"] = cancel.tries
        else:
            record["attempts"] = cancel.attempts
            record["reconciled"] = cancel.reconciled
        if cancel.batch_id is not None:
            record["batch_id"] = cancel.batch_id
        return record

    async def _send_error(self, send: Send, exc: GatewayError, *, close: bool = False) -> None:
        status, headers, body = render(exc)
        if close:
            headers.append((b"connection", b"close"))
        await _send(send, status, body, headers)

    # -- plain routes -----------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problem: ServiceUnavailable | None = None
        if not self.token.available:
            problem = ServiceUnavailable(
                f"not ready: {self.token.problem}", code="token_unavailable")
        elif not await self.audit.probe():
            problem = ServiceUnavailable(
                "not ready: the audit log can't be written", code="audit_unavailable")
        self._update_gauges()
        if problem is not None:
            status, _, body = render(problem)
            return Response(body, status, media_type="application/json")
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(self, request: Request) -> Response:
        self._update_gauges()
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            error = method_not_allowed((exc.headers or {}).get("Allow", "GET"))
        else:
            error = RequestRejected("no such route", status=404, code="not_found")
        status, headers, body = render(error)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})


async def _read_small_body(
    scope: Scope, headers: list[tuple[bytes, bytes]], receive: Receive
) -> None:
    """Read (and drop) the request body; over 1 KiB is 413, a disconnect is `ClientGone`."""
    too_large = RequestRejected(
        f"a cancel takes no body; at most {MAX_BODY_BYTES} bytes are accepted",
        status=413, code="payload_too_large", outcome="invalid_request",
    )
    for name, value in headers:
        if name == b"content-length":
            # Digits only (framing was checked); length first, as int() refuses 4300+ digits.
            digits = value.strip().lstrip(b"0")
            if len(digits) > 9 or int(digits or b"0") > MAX_BODY_BYTES:
                raise too_large
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        size += len(message.get("body", b""))
        if size > MAX_BODY_BYTES:
            raise too_large
        if not message.get("more_body", False):
            return


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    names = {name for name, _ in headers}
    if b"content-type" not in names:
        headers = [(b"content-type", b"application/json"), *headers]
    headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
