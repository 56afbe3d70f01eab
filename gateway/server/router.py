"""Request handling: the ASGI entry point that routes every request.

The cancel route is matched on the *raw* path (Starlette would percent-decode it) and handed to
the cancel pipeline (`gateway.cancel.pipeline`); the bulk route to `gateway.cancel.bulk`. Before
either, the message framing and `Host` are checked (RFC 9112). Health, readiness and metrics
go to a small Starlette app. Every request gets an `x-request-id` and one access log line.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.asgi import ERROR, Exchange, Message, Receive, Scope, Send, send_error
from gateway.cancel import bulk
from gateway.cancel.pipeline import CANCEL_PREFIX, CANCEL_ROUTE, CancelPipeline
from gateway.errors import RequestRejected, ServiceUnavailable, method_not_allowed, render
from gateway.telemetry.metrics import CONTENT_TYPE

log = structlog.get_logger("gateway")

REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,128}")
PLAIN_ROUTES = ("/healthz", "/readyz", "/metrics")


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


Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


class Router:
    """Routes each request; `update_gauges` refreshes the gauges read by a scrape or a probe."""

    def __init__(
        self, pipeline: CancelPipeline, *, lifespan: Lifespan, update_gauges: Callable[[], None],
    ) -> None:
        self.pipeline = pipeline
        self._update_gauges = update_gauges
        self.plain = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_exception},
            lifespan=lifespan,
        )
        self.plain.router.redirect_slashes = False  # `/healthz/` is a 404, not a redirect

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
        # The request's span (a no-op while tracing is off), around all of it: the access log
        # line and the span say the same.
        with self.pipeline.traces.request("request", headers) as span:
            try:
                problem = framing_problem(headers)
                if problem is not None:
                    problem = f"ambiguous message framing: {problem}"
                else:
                    problem = host_problem(scope["http_version"], headers)
                if problem is not None:
                    exchange.route, exchange.error = "framing", "bad_request"
                    await send_error(send_with_id, RequestRejected(
                        problem, status=400, code="bad_request"), close=True)
                elif rest is not None and b"/" not in rest:
                    exchange.route = CANCEL_ROUTE
                    await self.pipeline.cancel(scope, receive, send_with_id, exchange, rest,
                                               started)
                elif raw_path == bulk.PATH:
                    exchange.route = bulk.ROUTE
                    await bulk.handle(self.pipeline, scope, receive, send_with_id, exchange,
                                      started)
                else:
                    exchange.route = scope["path"] if scope["path"] in PLAIN_ROUTES else "other"
                    await self.plain(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                self.pipeline.metrics.request_seconds.labels(exchange.route).observe(seconds)
                log.info(
                    "access", request_id=exchange.request_id, method=scope["method"],
                    route=exchange.route, status=exchange.status,
                    duration_ms=round(seconds * 1000, 3), team=exchange.team,
                    error=exchange.error or scope.get(ERROR),
                )
                if span is not None:
                    span.update_name(f"{scope['method']} {exchange.route}")
                    span.set_attributes({
                        "http.request.method": scope["method"], "http.route": exchange.route,
                        "http.response.status_code": exchange.status,
                        "gateway.request_id": exchange.request_id,
                        "gateway.team": exchange.team or "",
                        "gateway.error": exchange.error or scope.get(ERROR) or "",
                    })

    # -- plain routes -----------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        token, audit = self.pipeline.token, self.pipeline.audit
        problem: ServiceUnavailable | None = None
        if not token.available:
            problem = ServiceUnavailable(f"not ready: {token.problem}", code="token_unavailable")
        elif not await audit.probe():
            problem = ServiceUnavailable(
                "not ready: the audit log can't be written", code="audit_unavailable")
        self._update_gauges()
        if problem is not None:
            request.scope[ERROR] = problem.code
            status, _, body = render(problem)
            return Response(body, status, media_type="application/json")
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(self, request: Request) -> Response:
        self._update_gauges()
        return Response(self.pipeline.metrics.render(), media_type=CONTENT_TYPE)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            error = method_not_allowed((exc.headers or {}).get("Allow", "GET"))
        else:
            error = RequestRejected("no such route", status=404, code="not_found")
        request.scope[ERROR] = error.code
        status, headers, body = render(error)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})

