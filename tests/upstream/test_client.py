"""`gateway.upstream.client.UpstreamClient` against the real stand-in on loopback (the mapping
of its answers is in test_mapping.py).

pytest-asyncio is not used: each client test runs its own event loop with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from gateway.config.model import UpstreamConfig
from gateway.demo.standin import Action, Raw, Reset, Respond, Stall, StandIn, json_response
from gateway.errors import UpstreamFailure
from gateway.upstream import client as upstream
from gateway.upstream.client import MAX_BODY_BYTES, USER_AGENT, UpstreamAnswer, UpstreamClient
from tests.harness import black_holed_port

TOKEN = "unit-upstream-token-0123456789abcdef"
INVOCATION = "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"
ALLOWED_HEADERS = {"host", "x-chroma-token", "x-request-id", "accept", "user-agent",
                   "content-length"}
TRANSPORTS = ("native", "aiohttp", "httpx")


# -- helpers --------------------------------------------------------------------------------




def run_client(
    scenario: Callable[[UpstreamClient, StandIn], Awaitable[Any]],
    *,
    behaviour: Action | None = None,
    transport: str = "aiohttp",
    timeout: float = 2.0,
) -> tuple[Any, StandIn]:
    """Run `scenario(client, standin)` on a fresh loop with a stand-in and a client to it."""

    async def main() -> tuple[Any, StandIn]:
        async with StandIn(TOKEN) as standin:
            if behaviour is not None:
                standin.behaviour = lambda request: behaviour
            config = UpstreamConfig(base_url=standin.base_url, token_file="unused",
                                    connect_timeout=1.0, timeout=timeout)
            client = UpstreamClient(config, transport=transport)  # type: ignore[arg-type]
            try:
                return await scenario(client, standin), standin
            finally:
                await client.aclose()

    return asyncio.run(main())


async def cancel(client: UpstreamClient, standin: StandIn) -> UpstreamAnswer:
    return await client.cancel(INVOCATION, token=TOKEN, request_id="req-1")


def client_failure(behaviour: Action, *, timeout: float = 2.0,
                   transport: str = "aiohttp") -> tuple[UpstreamFailure, StandIn]:
    async def scenario(client: UpstreamClient, standin: StandIn) -> UpstreamFailure:
        with pytest.raises(UpstreamFailure) as caught:
            await cancel(client, standin)
        return caught.value

    return run_client(scenario, behaviour=behaviour, timeout=timeout, transport=transport)


# -- UpstreamClient against the real stand-in -------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_sends_only_the_allowlisted_headers(transport: str) -> None:
    result, standin = run_client(cancel, behaviour=json_response(202, {"ok": True}),
                                 transport=transport)
    assert result.status == 202
    assert json.loads(result.body) == {"ok": True}
    [request] = standin.requests
    assert request.method == "PUT"
    assert request.target == f"/api/v1/invocations/{INVOCATION}"
    assert {name for name, _ in request.headers} == ALLOWED_HEADERS
    assert request.header_values("x-chroma-token") == [TOKEN]
    assert request.header_values("x-request-id") == ["req-1"]
    assert request.header_values("accept") == ["application/json"]
    assert request.header_values("user-agent") == [USER_AGENT]
    assert request.body == b""


def test_client_url_is_base_url_plus_cancel_path_and_id() -> None:
    config = UpstreamConfig(base_url="http://127.0.0.1:1", token_file="unused")
    client = UpstreamClient(config)
    try:
        assert client.url_for(INVOCATION) == f"http://127.0.0.1:1/api/v1/invocations/{INVOCATION}"
    finally:
        asyncio.run(client.aclose())


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:1", "https://sync.example.invalid",
                                      "https://h.example.invalid:8443/some%20prefix"])
def test_request_url_built_without_parsing_equals_the_parsed_one(base_url: str) -> None:
    # The shortcut (see _with_path_tail) is on with the httpx this project installs.
    assert upstream._FAST_URLS
    client = UpstreamClient(UpstreamConfig(base_url=base_url, token_file="unused"))
    made = client._url(INVOCATION)
    assert isinstance(made, httpx.URL)
    parsed = httpx.URL(client.url_for(INVOCATION))
    assert (made, str(made), made.raw_path) == (parsed, str(parsed), parsed.raw_path)
    # Anything but a canonical id is parsed as usual.
    assert client._url(INVOCATION.upper()) == client.url_for(INVOCATION.upper())
    asyncio.run(client.aclose())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_does_not_follow_a_redirect(transport: str) -> None:
    redirect = Respond(307, b"", (("location", f"/api/v1/invocations/{INVOCATION}x"),))
    result, standin = run_client(cancel, behaviour=redirect, transport=transport)
    assert result.status == 307
    assert len(standin.requests) == 1


def test_client_reuses_its_connection() -> None:
    async def twice(client: UpstreamClient, standin: StandIn) -> list[int]:
        return [(await cancel(client, standin)).status for _ in range(3)]

    statuses, standin = run_client(twice, behaviour=json_response(202, {}))
    assert statuses == [202, 202, 202]
    assert standin.connection_count == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_stall_past_the_deadline_is_upstream_timeout(transport: str) -> None:
    failure, _ = client_failure(Stall(3.0), timeout=0.3, transport=transport)
    assert (failure.status, failure.code) == (504, "upstream_timeout")
    assert isinstance(failure.__cause__, TimeoutError)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "behaviour",
    [
        Reset(),
        Raw(b"NOT HTTP AT ALL\r\n\r\n"),
        Raw(b"HTTP/1.1 202 Accepted\r\ncontent-length: 100\r\n\r\n{\"partial"),
        Raw(b""),
        Respond(202, b"{" + b" " * MAX_BODY_BYTES + b"}"),
        Respond(202, b"{" + b" " * MAX_BODY_BYTES + b"}", chunked=True),
    ],
    ids=["reset", "garbage", "truncated", "closed", "over-64k", "over-64k-chunked"],
)
def test_client_broken_exchange_is_upstream_unavailable(behaviour: Action, transport: str) -> None:
    failure, standin = client_failure(behaviour, transport=transport)
    assert (failure.status, failure.code, failure.outcome) == (502, "upstream_unavailable",
                                                               "upstream_error")
    assert len(standin.requests) == 1


def test_client_reads_a_body_of_exactly_64_kib() -> None:
    body = b'{"a":"' + b"x" * (MAX_BODY_BYTES - 8) + b'"}'
    assert len(body) == MAX_BODY_BYTES
    result, _ = run_client(cancel, behaviour=Respond(202, body, chunked=True))
    assert result.body == body


def test_client_does_not_decompress_the_body() -> None:
    gzipped = Respond(202, b"\x1f\x8b\x08\x00garbage",
                      (("content-type", "application/json"), ("content-encoding", "gzip")))
    result, _ = run_client(cancel, behaviour=gzipped)
    assert result.body == b"\x1f\x8b\x08\x00garbage"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_connection_refused_is_upstream_unavailable(transport: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        config = UpstreamConfig(base_url=f"http://127.0.0.1:{port}", token_file="unused",
                                connect_timeout=1.0, timeout=2.0)

        async def main() -> UpstreamFailure:
            client = UpstreamClient(config, transport=transport)  # type: ignore[arg-type]
            try:
                with pytest.raises(UpstreamFailure) as caught:
                    await client.cancel(INVOCATION, token=TOKEN, request_id="r")
                return caught.value
            finally:
                await client.aclose()

        failure = asyncio.run(main())
    assert (failure.status, failure.code) == (502, "upstream_unavailable")
    if transport != "httpx":
        assert "connection refused" in failure.message
        assert failure.sent is False
    assert TOKEN not in failure.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_timeout_bounds_a_connect_that_never_completes(transport: str) -> None:
    with black_holed_port() as port:

        async def main() -> tuple[UpstreamFailure, float]:
            config = UpstreamConfig(base_url=f"http://127.0.0.1:{port}", token_file="unused",
                                    connect_timeout=0.3, timeout=5.0)
            client = UpstreamClient(config, transport=transport)  # type: ignore[arg-type]
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                with pytest.raises(UpstreamFailure) as caught:
                    await client.cancel(INVOCATION, token=TOKEN, request_id="req-1")
            finally:
                await client.aclose()
            return caught.value, loop.time() - started

        failure, seconds = asyncio.run(main())
    # Cannot be reached (502), found out after connect_timeout, long before the 5 s deadline.
    assert failure.status == 502
    assert failure.code == "upstream_unavailable"
    assert 0.25 <= seconds < 2.0


def test_the_default_start_imports_neither_aiohttp_nor_the_jwt_stack() -> None:
    # Each costs start-up time and memory (issue 12's budget); only its own config loads it.
    import subprocess
    import sys

    probe = ("import sys, gateway.cli.main, gateway.server.protocol, gateway.server.app, "
             "gateway.access.policy; "
             "print(sorted(m for m in ('aiohttp', 'httpx_aiohttp', 'jwt', 'cryptography') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"
