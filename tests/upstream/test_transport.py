"""`gateway.upstream.transport.NativeTransport` against the real stand-in and raw loopback servers
that
misbehave on purpose.

Each test runs its own event loop with `asyncio.run`. The raw servers read one request head at
a time and answer with the bytes a test scripts, so the transport's framing, pooling and error
classification can be checked one at a time.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trustme

from gateway.demo.standin import Respond, StandIn, json_response
from gateway.upstream.client import _kind, _never_sent, ssl_context
from gateway.upstream.transport import (
    ConnectFailed,
    ConnectTimedOut,
    MalformedResponse,
    NativeTransport,
    ResponseTooLarge,
    UnsafeHeader,
)
from tests.harness import black_holed_port

TOKEN = "unit-upstream-token-0123456789abcdef"
INVOCATION = "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"
LIMIT = 1024
OK = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

# One scripted answer: the bytes to send for the n-th request on a connection (None: close).
Script = Callable[[int], bytes | None]


class RawServer:
    """A loopback HTTP/1.1 "server" that answers each request head with scripted bytes."""

    def __init__(self, script: Script, *, close_after: bool = False,
                 delay: float = 0.0) -> None:
        self.script = script
        self.close_after = close_after  # close each connection right after its first answer
        self.delay = delay
        self.connections = 0
        self.requests: list[bytes] = []
        self.concurrent = 0
        self.most_concurrent = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            for n in range(100):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head)
                if self.delay:
                    await asyncio.sleep(self.delay)
                answer = self.script(n)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    return
        finally:
            self.concurrent -= 1
            writer.close()


def transport_for(url: str, **options: Any) -> NativeTransport:
    options.setdefault("max_connections", 10)
    return NativeTransport(url, ssl_context=ssl_context(None), max_body=LIMIT, **options)


def request(url: str, *, connect: float = 1.0, **headers: str) -> httpx.Request:
    return httpx.Request(
        "PUT", f"{url}/api/v1/invocations/{INVOCATION}",
        headers=[("x-chroma-token", TOKEN), *headers.items()],
        extensions={"timeout": {"connect": connect, "read": None, "write": None, "pool": None}},
    )


async def send(transport: NativeTransport, url: str) -> tuple[int, bytes]:
    response = await transport.handle_async_request(request(url))
    body = b"".join([chunk async for chunk in response.aiter_raw()])
    return response.status_code, body


def with_server(script: Script, scenario: Callable[[RawServer, NativeTransport],
                                                   Awaitable[Any]],
                **server_options: Any) -> tuple[Any, RawServer]:
    async def main() -> tuple[Any, RawServer]:
        async with RawServer(script, **server_options) as server:
            transport = transport_for(server.url)
            try:
                return await scenario(server, transport), server
            finally:
                await transport.aclose()

    return asyncio.run(main())


def failure_of(answer: bytes) -> tuple[BaseException, RawServer]:
    async def scenario(server: RawServer, transport: NativeTransport) -> BaseException:
        with pytest.raises(httpx.TransportError) as caught:
            await send(transport, server.url)
        return caught.value

    return with_server(lambda n: answer, scenario, close_after=True)


# -- against the real stand-in ----------------------------------------------------------------


def test_sends_exactly_the_request_headers_with_host_and_content_length() -> None:
    async def main() -> tuple[int, StandIn, str]:
        async with StandIn(TOKEN, behaviour=lambda r: json_response(202, {})) as standin:
            transport = transport_for(standin.base_url)
            try:
                status, _ = await send(transport, standin.base_url)
            finally:
                await transport.aclose()
            return status, standin, standin.base_url

    status, standin, base_url = asyncio.run(main())
    assert status == 202
    [seen] = standin.requests
    assert (seen.method, seen.target) == ("PUT", f"/api/v1/invocations/{INVOCATION}")
    host = base_url.removeprefix("http://")
    # httpx puts the headers it adds first, as it does for httpcore.
    assert list(seen.headers) == [("host", host), ("content-length", "0"),
                                  ("x-chroma-token", TOKEN)]
    assert seen.body == b""


def test_keep_alive_reuses_one_connection_for_sequential_requests() -> None:
    async def main() -> tuple[list[int], int, StandIn]:
        async with StandIn(TOKEN, behaviour=lambda r: json_response(202, {})) as standin:
            transport = transport_for(standin.base_url)
            try:
                statuses = [(await send(transport, standin.base_url))[0] for _ in range(5)]
            finally:
                await transport.aclose()
            return statuses, transport.connections_made, standin

    statuses, made, standin = asyncio.run(main())
    assert statuses == [202] * 5
    assert made == 1
    assert standin.connection_count == 1


def test_connections_are_bounded_by_max_connections() -> None:
    async def main() -> tuple[list[int], int, RawServer]:
        async with RawServer(lambda n: OK, delay=0.05) as server:
            transport = transport_for(server.url, max_connections=2)
            try:
                results = await asyncio.gather(*[send(transport, server.url) for _ in range(6)])
            finally:
                await transport.aclose()
            return [status for status, _ in results], transport.connections_made, server

    statuses, made, server = asyncio.run(main())
    assert statuses == [202] * 6
    assert made == 2
    assert server.most_concurrent == 2
    assert len(server.requests) == 6


# -- reuse only when safe ----------------------------------------------------------------------


def test_pooled_connection_closed_by_the_server_is_not_reused() -> None:
    async def scenario(server: RawServer, transport: NativeTransport) -> list[int]:
        first = await send(transport, server.url)
        await asyncio.sleep(0.1)  # the server's close arrives while the connection is idle
        second = await send(transport, server.url)
        return [first[0], second[0]]

    statuses, server = with_server(lambda n: OK, scenario, close_after=True)
    assert statuses == [202, 202]
    assert server.connections == 2
    assert len(server.requests) == 2  # each request was sent once, on a live connection


def test_connection_close_in_the_response_is_not_reused() -> None:
    closing = OK.replace(b"content-length: 2", b"connection: close\r\ncontent-length: 2")

    async def scenario(server: RawServer, transport: NativeTransport) -> int:
        await send(transport, server.url)
        await send(transport, server.url)
        return transport.connections_made

    made, server = with_server(lambda n: closing, scenario)
    assert made == 2
    assert server.connections == 2


def test_idle_connection_past_the_idle_time_is_not_reused() -> None:
    async def main() -> int:
        async with RawServer(lambda n: OK) as server:
            transport = transport_for(server.url, idle_seconds=0.05)
            try:
                await send(transport, server.url)
                await asyncio.sleep(0.1)
                await send(transport, server.url)
            finally:
                await transport.aclose()
            return transport.connections_made

    assert asyncio.run(main()) == 2


def test_cancelled_exchange_does_not_return_its_connection() -> None:
    async def scenario(server: RawServer, transport: NativeTransport) -> list[int]:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await send(transport, server.url)  # the first answer is never sent
        status, _ = await send(transport, server.url)
        return [status, transport.connections_made]

    async def main() -> tuple[list[int], RawServer]:
        stalls = {"first": True}

        def stalling(n: int) -> bytes | None:
            if stalls.pop("first", False):
                return b""  # write nothing: the client waits
            return OK

        async with RawServer(stalling) as server:
            transport = transport_for(server.url)
            try:
                return await scenario(server, transport), server
            finally:
                await transport.aclose()

    (status, made), server = asyncio.run(main())
    assert (status, made) == (202, 2)
    assert server.connections == 2


# -- responses it must refuse ------------------------------------------------------------------


def test_partial_response_is_a_protocol_error_that_may_have_been_sent() -> None:
    error, server = failure_of(b"HTTP/1.1 202 Accepted\r\ncontent-length: 10\r\n\r\n{\"a")
    assert type(error) is httpx.RemoteProtocolError
    assert not _never_sent(error)
    assert len(server.requests) == 1


def test_garbage_status_line_is_a_malformed_response() -> None:
    error, _ = failure_of(b"SPDY/9 what is this\r\n\r\n")
    assert isinstance(error, MalformedResponse)
    assert _kind(error) == "malformed response"
    assert not _never_sent(error)


@pytest.mark.parametrize("chunk_size", [b"zz", b"-1", b"ffffffffffffffffffff"])
def test_chunked_body_with_a_bad_size_is_a_malformed_response(chunk_size: bytes) -> None:
    error, _ = failure_of(b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n"
                          + chunk_size + b"\r\n{}\r\n0\r\n\r\n")
    assert isinstance(error, MalformedResponse | ResponseTooLarge)


def test_chunked_body_is_read_whole() -> None:
    chunked = (b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n"
               b"3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n")

    async def scenario(server: RawServer, transport: NativeTransport) -> list[Any]:
        answers = [await send(transport, server.url) for _ in range(2)]
        return [answers, transport.connections_made]

    (answers, made), _ = with_server(lambda n: chunked, scenario)
    assert answers == [(202, b'{"a":1}')] * 2
    assert made == 1  # a chunked response read to its end leaves the connection reusable


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_refused(chunked: bool) -> None:
    body = b"x" * (LIMIT + 1)
    answer = Respond(202, body, chunked=chunked)
    framing = (b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body
               + b"\r\n0\r\n\r\n") if answer.chunked else (
        b"content-length: %d\r\n\r\n" % len(body) + body)
    error, _ = failure_of(b"HTTP/1.1 202 Accepted\r\n" + framing)
    assert isinstance(error, ResponseTooLarge)


def test_body_of_exactly_the_limit_is_read() -> None:
    body = b"y" * LIMIT
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % LIMIT + body

    async def scenario(server: RawServer, transport: NativeTransport) -> tuple[int, bytes]:
        return await send(transport, server.url)

    result, _ = with_server(lambda n: answer, scenario)
    assert result == (200, body)


def test_100_continue_is_skipped_for_the_real_answer() -> None:
    async def scenario(server: RawServer, transport: NativeTransport) -> tuple[int, bytes]:
        return await send(transport, server.url)

    result, _ = with_server(lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + OK, scenario)
    assert result == (202, b"{}")


@pytest.mark.parametrize("status", [b"101 Switching Protocols\r\nupgrade: h2c\r\n"
                                    b"connection: upgrade", b"103 Early Hints"])
def test_other_informational_responses_are_refused(status: bytes) -> None:
    error, _ = failure_of(b"HTTP/1.1 " + status + b"\r\n\r\n" + OK)
    assert isinstance(error, MalformedResponse)


def test_body_delimited_by_the_close_is_read_to_the_end() -> None:
    async def scenario(server: RawServer, transport: NativeTransport) -> list[Any]:
        return [await send(transport, server.url), transport.connections_made]

    (result, _), _ = with_server(lambda n: b"HTTP/1.0 200 OK\r\n\r\n{\"old\":true}", scenario,
                                 close_after=True)
    assert result == (200, b'{"old":true}')


def test_server_closing_without_an_answer_may_have_been_sent() -> None:
    error, server = failure_of(b"")
    assert isinstance(error, httpx.RemoteProtocolError)
    assert not _never_sent(error)
    assert len(server.requests) == 1


# -- failures before anything was sent ---------------------------------------------------------


def test_refused_connection_is_never_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"

        async def main() -> BaseException:
            transport = transport_for(url)
            with pytest.raises(ConnectFailed) as caught:
                await send(transport, url)
            return caught.value

        error = asyncio.run(main())
    assert _never_sent(error)
    assert _kind(error) == "connection refused"


def test_connect_timeout_is_never_sent() -> None:
    with black_holed_port() as port:
        url = f"http://127.0.0.1:{port}"

        async def main() -> BaseException:
            transport = transport_for(url)
            with pytest.raises(ConnectTimedOut) as caught:
                await transport.handle_async_request(request(url, connect=0.2))
            return caught.value

        error = asyncio.run(main())
    assert _never_sent(error)
    assert _kind(error) == "connect timeout"


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\0b"])
def test_header_with_a_line_break_is_refused_before_connecting(value: str) -> None:
    async def scenario(server: RawServer, transport: NativeTransport) -> BaseException:
        with pytest.raises(UnsafeHeader) as caught:
            await transport.handle_async_request(request(server.url, **{"x-request-id": value}))
        return caught.value

    error, server = with_server(lambda n: OK, scenario)
    assert _never_sent(error)
    assert server.connections == 0


def test_a_request_for_another_origin_is_refused() -> None:
    async def main() -> None:
        transport = transport_for("http://127.0.0.1:1")
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(request("http://127.0.0.2:1"))

    asyncio.run(main())


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_exchange(ca: trustme.CA,
                 client_context: ssl.SSLContext) -> tuple[Any, StandIn, str]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)

    async def main() -> tuple[Any, StandIn, str]:
        async with StandIn(TOKEN, ssl_context=server_context,
                           behaviour=lambda r: json_response(202, {})) as standin:
            transport = NativeTransport(standin.base_url, ssl_context=client_context,
                                        max_connections=4, max_body=LIMIT)
            url = standin.base_url
            try:
                return [await send(transport, url) for _ in range(2)], standin, url
            except httpx.TransportError as exc:
                return exc, standin, url
            finally:
                await transport.aclose()

    return asyncio.run(main())


def test_tls_with_a_trusted_certificate_for_the_host_is_used_and_kept_alive(
        ca: trustme.CA) -> None:
    context = ssl_context(None)
    ca.configure_trust(context)
    answers, standin, url = tls_exchange(ca, context)
    assert answers == [(202, b"{}")] * 2
    assert url.startswith("https://localhost:")  # SNI and the checked name: the URL's host
    assert standin.connection_count == 1


def test_tls_with_an_untrusted_certificate_is_never_sent(ca: trustme.CA) -> None:
    error, standin, _ = tls_exchange(ca, ssl_context(None))
    assert isinstance(error, ConnectFailed)
    assert _never_sent(error)
    assert _kind(error) == "TLS verification failed"
    assert standin.requests == []


def test_expired_idle_connections_are_closed_when_another_is_returned() -> None:
    async def main() -> tuple[int, int, int]:
        async with RawServer(lambda n: OK, delay=0.02) as server:
            transport = transport_for(server.url, idle_seconds=0.3)
            try:
                await asyncio.gather(send(transport, server.url), send(transport, server.url))
                for _ in range(2):  # the newest stays warm; the older one ages past 0.3 s
                    await asyncio.sleep(0.2)
                    await send(transport, server.url)
                await asyncio.sleep(0.05)  # the server sees the close
                return len(transport._idle), server.concurrent, transport.connections_made
            finally:
                await transport.aclose()

    idle, server_side_open, made = asyncio.run(main())
    assert (idle, server_side_open, made) == (1, 1, 2)
