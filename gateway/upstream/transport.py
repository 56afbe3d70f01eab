"""A lean httpx transport for the one upstream origin: HTTP/1.1 over a small keep-alive pool.

`UpstreamClient` speaks httpx (`httpx.Request` in, `httpx.Response` out); this is what sits
under it when `upstream.transport = "native"`. It does only what the gateway needs: one origin,
HTTP/1.1, no proxies, cookies, redirects or decompression, the request bytes built directly
from the request's method, target and headers (exactly those `UpstreamClient` chose, with the
`host` and `content-length` httpx adds), the response parsed strictly by httptools (llhttp)
and its body read whole, up to a bound, before the response is returned.

It never re-sends a request. A failure before any byte of the request was written (refused,
connect timeout, TLS handshake) raises `ConnectFailed` or `ConnectTimedOut`, whose
`never_sent` is true: only then may the retry logic above decide to try again. Anything after
the first byte raises a plain httpx error, which callers must treat as possibly sent.

A connection goes back to the pool only when its response was read completely, both sides
allowed keep-alive, and the server has not closed it. Idle connections are reused newest first
(LIFO: the warm ones stay warm, the rest expire) and dropped after `IDLE_SECONDS`, below the
5 s keep-alive of common servers (uvicorn's default), so a reused connection is rarely one the
server is closing at that moment; that race would surface as a possibly-sent failure.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator

import httptools
import httpx

IDLE_SECONDS = 4.0
# A CR, LF or NUL in a header would let a value end the head early (request splitting).
_UNSAFE = re.compile(rb"[\r\n\0]")


class ConnectFailed(httpx.ConnectError):
    """The connection could not be made (refused, unreachable, TLS): nothing was sent."""

    never_sent = True


class ConnectTimedOut(httpx.ConnectTimeout):
    """The connection was not made within the connect timeout: nothing was sent."""

    never_sent = True


class UnsafeHeader(httpx.LocalProtocolError):
    """A header name or value holds a CR, LF or NUL; refused before anything was sent."""

    never_sent = True


class MalformedResponse(httpx.RemoteProtocolError):
    """The bytes the server sent are not an acceptable HTTP/1.1 response."""


class ResponseTooLarge(httpx.RemoteProtocolError):
    """The response body is over the transport's bound."""


class _Body(httpx.AsyncByteStream):
    """The already-read body, handed out once (httpx's own ByteStream would be read eagerly)."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body:
            yield self._body


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the parser of the response now expected on it."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False  # the server sent EOF, or the connection is gone
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._problem: httpx.TransportError | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._complete:
            # Bytes nobody asked for (after a response, or while idle): the framing can no
            # longer be trusted, so the connection is not reused.
            self._close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._problem = MalformedResponse("the server switched protocols")
        except httptools.HttpParserError:
            # The parser's own message may quote the bytes received; only the fact is kept.
            self._problem = self._problem or MalformedResponse("malformed HTTP response")
        if self._problem is not None:
            self._finish(self._problem)
            self._close()
        elif self._complete:
            self._finish(None)

    def eof_received(self) -> bool:
        self.closed = True
        if self._waiter is not None and not self._complete:
            if self._headers_done and self._until_close():
                self._complete = True  # the body was delimited by the close
                self._finish(None)
            else:
                self._finish(httpx.RemoteProtocolError(
                    "the server closed the connection before a complete response"))
        return False  # let asyncio close our side

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._complete:
            if exc is None:
                error: httpx.TransportError = httpx.RemoteProtocolError(
                    "the server closed the connection before a complete response")
            else:
                error = httpx.ReadError("the connection was lost")
                error.__cause__ = exc
            self._finish(error)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 100:
            self._problem = MalformedResponse(f"unexpected informational response {status}")
        for name, value in self.headers:
            # Refused before the body arrives; `on_body` bounds an undeclared length.
            if name.lower() == b"content-length" and value.strip().isdigit() and (
                    int(value) > self._max_body):
                self._problem = ResponseTooLarge("response body over the size limit")
        self.status = status
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._problem = ResponseTooLarge("response body over the size limit")
        elif self._problem is None:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status == 100:
            self._reset()  # 100 Continue is an interim answer; the real one follows
            return
        # Read here: llhttp's flags describe the message just completed only until the next.
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True

    # -- used by the transport -------------------------------------------------------------

    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _finish(self, error: httpx.TransportError | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, head: bytes, body: bytes) -> bytes:
        """Write the request, wait for the whole response, and return its body."""
        assert self._transport is not None
        self._reset()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            self._transport.write(head + body if body else head)
            await self._waiter
        finally:
            self._waiter = None
        return b"".join(self._chunks)

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and not self.closed

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


class NativeTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` for requests to one origin (`base_url`'s scheme, host, port).

    At most `max_connections` requests are in flight at once (each on its own connection);
    others wait for a free one. Responses come back fully read: `max_body` bounds the body.
    """

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext, max_connections: int,
                 max_body: int, idle_seconds: float = IDLE_SECONDS) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {url.scheme!r}")
        self._scheme = url.scheme.encode()
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl_context if url.scheme == "https" else None
        self._max_body = max_body
        self._idle_seconds = idle_seconds
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []  # newest last
        self._open: set[_Connection] = set()
        self.connections_made = 0  # new connections so far (tests and benchmarks read it)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if request.method == "HEAD":
            # A HEAD response's content-length describes a body that never comes; the parser
            # here would wait for it. The gateway sends no HEAD.
            raise httpx.UnsupportedProtocol("HEAD is not supported by this transport")
        if url.raw_scheme != self._scheme or url.host != self._host or (
                (url.port or self._port) != self._port):
            raise httpx.UnsupportedProtocol("this transport serves one origin only")
        # Exactly the request's headers (httpx has added host, and content-length: 0 to a
        # body-less PUT); nothing else is added here. Names go out lowercase, as h11 sends them.
        lines = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            if _UNSAFE.search(name) or _UNSAFE.search(value):
                raise UnsafeHeader("a request header holds a line break or NUL")
            lines += (name.lower(), b": ", value, b"\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        body = request.content
        timeouts = request.extensions.get("timeout") or {}
        async with self._slots:
            connection = await self._checkout(timeouts.get("connect"))
            try:
                content = await connection.exchange(head, body)
            except BaseException:
                # Failed, cancelled (the caller's deadline) or half-read: never reused.
                connection.abort()
                self._open.discard(connection)
                raise
            if connection.reusable:
                self._checkin(connection)
            else:
                connection.abort()
                self._open.discard(connection)
            return httpx.Response(connection.status, headers=connection.headers,
                                  stream=_Body(content),
                                  extensions={"http_version": b"HTTP/1.1"})

    def _checkin(self, connection: _Connection) -> None:
        now = connection.idle_since = time.monotonic()
        idle = self._idle
        # The oldest are at the bottom, where LIFO checkouts rarely reach: close the expired
        # ones here, so a quiet pool does not hold sockets the server still keeps open.
        while idle and now - idle[0].idle_since >= self._idle_seconds:
            expired = idle.pop(0)
            expired.abort()
            self._open.discard(expired)
        idle.append(connection)

    async def _checkout(self, connect_timeout: float | None) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_seconds:
                return connection
            connection.abort()
            self._open.discard(connection)
        return await self._connect(connect_timeout)

    async def _connect(self, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._max_body), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            # Not chained: asyncio's TimeoutError wraps a CancelledError, which says nothing.
            raise ConnectTimedOut("timed out connecting to the upstream") from None
        except (OSError, ssl.CertificateError) as exc:  # ssl.SSLError is an OSError
            raise ConnectFailed("could not connect to the upstream") from exc
        self.connections_made += 1
        self._open.add(connection)
        return connection

    async def aclose(self) -> None:
        for connection in self._open:
            connection.abort()
        self._open.clear()
        self._idle.clear()
