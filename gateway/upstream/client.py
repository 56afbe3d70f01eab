"""The one HTTP client that talks to Chroma Sync, and the boundary where its errors are mapped.

Everything that can go wrong on the wire (refused, reset, TLS failure, garbage, a body over
64 KiB, the deadline) leaves this module as an `UpstreamFailure` raised `from` the original
exception; callers never see an httpx, aiohttp or OS exception.

The URL is `base_url + /api/v1/invocations/ + <canonical uuid>`, built from nothing the caller
sent but the validated id. Outgoing headers are an allowlist; redirects are never followed;
proxies from the environment are ignored; cookies are never stored.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from gateway import __version__
from gateway.config.model import Transport, UpstreamConfig
from gateway.errors import UpstreamFailure
from gateway.upstream.transport import (
    ConnectFailed,
    ConnectTimedOut,
    MalformedResponse,
    NativeTransport,
    ResponseTooLarge,
    UnsafeHeader,
)

MAX_BODY_BYTES = 64 * 1024
# What a transport raises for a failed exchange (aiohttp's are added when it is the transport).
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, OSError, ValueError)
USER_AGENT = f"chroma-sync-gateway/{__version__}"
CANCEL_PATH = "/api/v1/invocations/"
LIST_PATH = "/api/v1/invocations"
CANONICAL_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")



@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    headers: httpx.Headers
    body: bytes
    seconds: float


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """System trust plus an optional extra CA bundle; verification is always on."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class UpstreamClient:
    def __init__(self, config: UpstreamConfig, *, transport: Transport | None = None) -> None:
        transport = transport or config.transport
        self._prefix = config.base_url + CANCEL_PATH
        self._prefix_url = httpx.URL(self._prefix)
        self._list_url = config.base_url + LIST_PATH
        self._deadline = config.timeout
        self.transport_name = transport
        # Told of every exchange: True when it failed (transport error, timeout or 5xx).
        self.on_exchange: Callable[[bool], None] | None = None
        # Headers that carry the current trace upstream (`traceparent`), when tracing is on.
        self.trace_headers: Callable[[], list[tuple[str, str]]] | None = None
        context = ssl_context(config.ca_file)
        # Per-phase timeouts only bound the connect; the whole exchange has its own deadline.
        self._extensions = {
            "timeout": {"connect": config.connect_timeout, "read": None, "write": None,
                        "pool": None},
        }
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
            keepalive_expiry=30.0,
        )
        self._transport: httpx.AsyncBaseTransport
        self._errors = _TRANSPORT_ERRORS
        if transport == "native":
            self._transport = NativeTransport(
                config.base_url, ssl_context=context, max_connections=config.max_connections,
                max_body=MAX_BODY_BYTES)
        elif transport == "aiohttp":
            from gateway.upstream import (
                aiohttp_transport,  # only when chosen: it is heavy to import
            )

            self._transport = aiohttp_transport.transport(config, context)
            self._errors = _TRANSPORT_ERRORS + aiohttp_transport.ERRORS
        else:
            self._transport = httpx.AsyncHTTPTransport(verify=context, limits=limits,
                                                       trust_env=False)
        # The transport is called directly, without httpx.AsyncClient: the client's redirect,
        # auth, cookie and event-hook machinery is all unwanted here (redirects are never
        # followed, cookies never kept), and measured at about 0.25 ms of CPU per request.

    def url_for(self, invocation_id: str) -> str:
        return self._prefix + invocation_id

    def _url(self, invocation_id: str) -> httpx.URL | str:
        if _FAST_URLS and CANONICAL_ID_RE.fullmatch(invocation_id):
            return _with_path_tail(self._prefix_url, invocation_id)
        return self.url_for(invocation_id)

    async def cancel(
        self, invocation_id: str, *, token: str, request_id: str, timeout: float | None = None
    ) -> UpstreamAnswer:
        """PUT the cancel; `invocation_id` must already be the canonical lowercase UUID.

        `timeout` shortens `upstream.timeout` (a cancel's remaining deadline), never lengthens it.
        """
        return await self._exchange("PUT", self._url(invocation_id), token, request_id,
                                    timeout)

    async def get_job(
        self, invocation_id: str, *, token: str, request_id: str, timeout: float | None = None
    ) -> UpstreamAnswer:
        """`get_job`: GET one invocation; `invocation_id` is the canonical lowercase UUID."""
        return await self._exchange("GET", self._url(invocation_id), token, request_id,
                                    timeout)

    async def list_jobs(
        self, params: Mapping[str, str | int], *, token: str, request_id: str
    ) -> UpstreamAnswer:
        """`list_jobs`: GET a page of invocations; `params` are validated by the caller."""
        url = self._list_url + "?" + urllib.parse.urlencode(params)
        return await self._exchange("GET", url, token, request_id)

    async def _exchange(self, method: str, url: httpx.URL | str, token: str, request_id: str,
                        timeout: float | None = None) -> UpstreamAnswer:
        # No client means no default headers (accept-encoding, connection) merged in: this
        # list is the whole allowlist (with `traceparent`, when tracing is on).
        headers = [
            ("x-chroma-token", token),
            ("x-request-id", request_id),
            ("accept", "application/json"),
            ("user-agent", USER_AGENT),
        ]
        if self.trace_headers is not None:
            headers += self.trace_headers()
        request = httpx.Request(method, url, headers=headers, extensions=self._extensions)
        started = time.perf_counter()
        seconds = self._deadline if timeout is None else min(timeout, self._deadline)
        try:
            async with asyncio.timeout(seconds):
                response = await self._transport.handle_async_request(request)
                try:
                    body = await _read_limited(response)
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            self._report(True)
            raise UpstreamFailure(
                f"Chroma Sync did not answer within {seconds:g} s",
                status=504,
                code="upstream_timeout",
            ) from exc
        except UpstreamFailure:
            self._report(True)
            raise
        except ResponseTooLarge as exc:
            self._report(True)
            raise UpstreamFailure("Chroma Sync sent a response body over 64 KiB") from exc
        except self._errors as exc:
            self._report(True)
            failure = UpstreamFailure(
                f"Chroma Sync could not be reached or sent a broken response ({_kind(exc)})"
            )
            failure.sent = not _never_sent(exc)
            raise failure from exc
        self._report(500 <= response.status_code <= 599)
        return UpstreamAnswer(
            response.status_code, response.headers, body, time.perf_counter() - started
        )

    def _report(self, failed: bool) -> None:
        if self.on_exchange is not None:
            self.on_exchange(failed)

    async def aclose(self) -> None:
        await self._transport.aclose()


async def _read_limited(response: httpx.Response) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise UpstreamFailure("Chroma Sync sent a response body over 64 KiB")
    chunks: list[bytes] = []
    size = 0
    # Raw bytes: nothing is decompressed, so a small compressed body can't expand in memory.
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise UpstreamFailure("Chroma Sync sent a response body over 64 KiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _with_path_tail(prefix: httpx.URL, tail: str) -> httpx.URL:
    """`prefix` with `tail` appended to its path, without parsing the whole URL again.

    `httpx.URL(str)` re-validates every character, about 30 us per request; this copies a
    tuple. `tail` must need no escaping (a canonical UUID doesn't). It relies on httpx's
    internal `_uri_reference`, so `_FAST_URLS` checks once, at import, that the result equals
    the parsed URL; if not (another httpx), URLs are parsed as usual.
    """
    reference = prefix._uri_reference
    url = httpx.URL.__new__(httpx.URL)
    url._uri_reference = reference._replace(path=reference.path + tail)
    return url


def _fast_urls_work() -> bool:
    sample = "https://example.invalid:8443/base" + CANCEL_PATH
    tail = "0b8f1d6e-5a3c-4e2b-9f7a-1c2d3e4f5a6b"
    try:
        made = _with_path_tail(httpx.URL(sample), tail)
        parsed = httpx.URL(sample + tail)
        return made == parsed and made.raw_path == parsed.raw_path and str(made) == str(parsed)
    except Exception:  # any change in httpx internals: parse instead
        return False


_FAST_URLS = _fast_urls_work()


def _never_sent(exc: BaseException) -> bool:
    """Whether the request certainly never left: the connection was never made.

    The native transport says so itself: only its `never_sent` errors (a connection never
    made, a header refused) were raised before the first byte was written. For aiohttp, its own
    exception, the cause, decides (`gateway.upstream.aiohttp_transport.never_sent`).
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None:
        chain.append(current)
        current = current.__cause__
    if isinstance(exc, ConnectFailed | ConnectTimedOut | UnsafeHeader):
        return True
    aiohttp_transport = sys.modules.get("gateway.upstream.aiohttp_transport")
    if aiohttp_transport is not None:
        verdict: bool | None = aiohttp_transport.never_sent(chain)
        if verdict is not None:
            return verdict
    return any(isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | ConnectionRefusedError)
               for e in chain)


def _kind(exc: BaseException) -> str:
    """A short, path-free name for what went wrong, from the innermost cause."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLError | ssl.CertificateError) or "certificate" in str(exc).lower():
        return "TLS verification failed"
    if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "connection refused"
    if isinstance(exc, ConnectionResetError) or "reset" in str(exc).lower():
        return "connection reset"
    if isinstance(exc, MalformedResponse):
        return "malformed response"
    aiohttp_transport = sys.modules.get("gateway.upstream.aiohttp_transport")
    named: str | None = aiohttp_transport.kind(exc) if aiohttp_transport is not None else None
    if named is not None:
        return named
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed or malformed response"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "connect timeout"
    return type(exc).__name__
