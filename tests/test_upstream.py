"""In-process tests of the upstream boundary: `gateway.mapping` row by row, and
`gateway.upstream.UpstreamClient` against the real stand-in on loopback.

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

from gateway import mapping
from gateway.config import UpstreamConfig
from gateway.errors import UpstreamFailure
from gateway.standin import Action, Raw, Reset, Respond, Stall, StandIn, json_response
from gateway.upstream import MAX_BODY_BYTES, USER_AGENT, UpstreamAnswer, UpstreamClient

TOKEN = "unit-upstream-token-0123456789abcdef"
INVOCATION = "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"
ALLOWED_HEADERS = {"host", "x-chroma-token", "x-request-id", "accept", "user-agent",
                   "content-length"}
TRANSPORTS = ("aiohttp", "httpx")


# -- helpers --------------------------------------------------------------------------------


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> UpstreamAnswer:
    return UpstreamAnswer(status, httpx.Headers(headers or {}), body, 0.01)


def error_response(code: str = "NotFoundError", message: str = "Invocation not found") -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


def failure_of(status: int, body: bytes = b"", *, secrets: tuple[str, ...] = ()) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as caught:
        mapping.interpret(answer(status, body), secrets=secrets)
    return caught.value


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


# -- mapping.interpret: SPEC's table, row by row ---------------------------------------------


def test_interpret_202_passes_the_upstream_json_object_through() -> None:
    reply = mapping.interpret(answer(202, b'{"id": "x", "n": 1}'))
    assert (reply.status, reply.outcome, reply.error) == (202, "cancelled", None)
    assert json.loads(reply.body) == {"id": "x", "n": 1}


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'"text"', b"null", b"<html>ok</html>",
                                  b"\xff\xfe", b"[" * 100_000],
                         ids=["empty", "array", "string", "null", "html", "bad-utf8", "deep"])
def test_interpret_202_without_a_json_object_body_becomes_empty_object(body: bytes) -> None:
    reply = mapping.interpret(answer(202, body))
    assert (reply.status, reply.body, reply.outcome) == (202, b"{}", "cancelled")


ROWS = [
    (400, "bad_request", "rejected_by_upstream"),
    (404, "not_found", "not_found"),
    (409, "conflict", "rejected_by_upstream"),
    (412, "not_cancelable", "not_cancelable"),
    (422, "unprocessable", "rejected_by_upstream"),
]


@pytest.mark.parametrize(("status", "code", "outcome"), ROWS)
def test_interpret_client_error_with_error_response_is_passed_through_unchanged(
    status: int, code: str, outcome: str
) -> None:
    body = b'{ "error" : "Whatever",\n "message": "upstream words", "extra": [1] }'
    reply = mapping.interpret(answer(status, body))
    assert (reply.status, reply.body, reply.outcome, reply.error) == (status, body, outcome, code)


@pytest.mark.parametrize(("status", "code", "outcome"), ROWS)
@pytest.mark.parametrize("body", [b"<html>oops</html>", b"", b'{"error": "x"}',
                                  b'{"error": 1, "message": "m"}', b'["error", "message"]'],
                         ids=["html", "empty", "no-message", "non-string", "array"])
def test_interpret_client_error_with_other_body_is_normalized(
    status: int, code: str, outcome: str, body: bytes
) -> None:
    reply = mapping.interpret(answer(status, body))
    assert (reply.status, reply.outcome, reply.error) == (status, outcome, code)
    parsed = json.loads(reply.body)
    assert parsed["error"] == code
    assert isinstance(parsed["message"], str) and parsed["message"]


def test_interpret_429_keeps_error_response_and_retry_after() -> None:
    body = error_response("TooManyRequests", "slow down")
    reply = mapping.interpret(answer(429, body, {"retry-after": "7"}))
    assert (reply.status, reply.body, reply.outcome) == (429, body, "rejected_by_upstream")
    assert reply.headers == {"retry-after": "7"}


def test_interpret_429_without_error_response_is_upstream_rate_limited() -> None:
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    reply = mapping.interpret(answer(429, b"busy", {"retry-after": date}))
    assert reply.status == 429
    assert json.loads(reply.body)["error"] == "upstream_rate_limited"
    assert reply.headers == {"retry-after": date}


@pytest.mark.parametrize("value", ["soon", "1\r\nx-evil: 1", "-1", "99999999999"])
def test_interpret_429_drops_a_malformed_retry_after(value: str) -> None:
    reply = mapping.interpret(answer(429, b"", {"retry-after": value}))
    assert "retry-after" not in reply.headers


@pytest.mark.parametrize("status", [401, 403])
def test_interpret_upstream_auth_refusal_is_upstream_auth_failed(status: int) -> None:
    failure = failure_of(status, error_response("Unauthorized", "bad key"))
    assert (failure.status, failure.code, failure.outcome) == (502, "upstream_auth_failed",
                                                               "upstream_error")


@pytest.mark.parametrize("status", [500, 502, 503, 599])
def test_interpret_5xx_is_upstream_error_naming_status_and_message(status: int) -> None:
    failure = failure_of(status, error_response("InternalError", "database on fire"))
    assert (failure.status, failure.code) == (502, "upstream_error")
    assert str(status) in failure.message
    assert "database on fire" in failure.message


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_interpret_3xx_is_upstream_redirect(status: int) -> None:
    failure = failure_of(status)
    assert (failure.status, failure.code) == (502, "upstream_redirect")


@pytest.mark.parametrize("status", [100, 200, 201, 204, 405, 418, 451, 600])
def test_interpret_any_other_status_is_upstream_unexpected_status(status: int) -> None:
    failure = failure_of(status, b"<html>fine</html>")
    assert (failure.status, failure.code) == (502, "upstream_unexpected_status")
    assert str(status) in failure.message


# -- the token never leaks through a passed-through body -------------------------------------


@pytest.mark.parametrize("status", [400, 404, 409, 412, 422, 429])
def test_interpret_error_response_echoing_the_token_is_normalized(status: int) -> None:
    body = error_response("Unauthorized", f"token {TOKEN} is odd")
    reply = mapping.interpret(answer(status, body), secrets=(TOKEN,))
    assert TOKEN.encode() not in reply.body
    assert json.loads(reply.body)["error"] != "Unauthorized"


def test_interpret_json_escaped_token_in_error_response_is_normalized() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in TOKEN)
    body = ('{"error": "E", "message": "' + escaped + '"}').encode()
    reply = mapping.interpret(answer(404, body), secrets=(TOKEN,))
    assert reply.body != body
    assert TOKEN not in json.loads(reply.body)["message"]


def test_interpret_202_body_echoing_the_token_becomes_empty_object() -> None:
    reply = mapping.interpret(answer(202, json.dumps({"token": TOKEN}).encode()), secrets=(TOKEN,))
    assert reply.body == b"{}"


# -- upstream_message -------------------------------------------------------------------------


def test_upstream_message_uses_the_error_response_message() -> None:
    assert mapping.upstream_message(error_response("E", "it broke")) == "it broke"


def test_upstream_message_of_a_plain_body_is_its_text_or_no_message() -> None:
    assert mapping.upstream_message(b"  Bad Gateway \n") == "Bad Gateway"
    assert mapping.upstream_message(b"") == "no message"


def test_upstream_message_is_cut_to_512_characters() -> None:
    text = mapping.upstream_message(error_response("E", "Z" * 2000))
    assert text == "Z" * 512


def test_upstream_message_removes_control_characters() -> None:
    text = mapping.upstream_message(error_response("E", "line1\nline2\r\x00\x1b[31m\x7f\x85end"))
    assert text == "line1line2[31mend"


def test_upstream_message_removes_control_characters_before_cutting() -> None:
    text = mapping.upstream_message(("\x01" * 600 + "Z" * 600).encode())
    assert text == "Z" * 512


def test_upstream_message_redacts_the_token() -> None:
    text = mapping.upstream_message(error_response("E", f"key {TOKEN} rejected"), (TOKEN,))
    assert TOKEN not in text
    assert text == "key [redacted] rejected"


def test_upstream_message_redacts_a_token_split_by_a_control_character() -> None:
    split = TOKEN[:10] + "\x00" + TOKEN[10:]
    text = mapping.upstream_message(f"echo {split} done".encode(), (TOKEN,))
    assert TOKEN not in text


def test_upstream_message_replaces_invalid_utf8() -> None:
    text = mapping.upstream_message(b"caf\xe9 ok")
    assert text == "caf\ufffd ok"


def test_5xx_failure_message_never_holds_the_token() -> None:
    failure = failure_of(500, error_response("InternalError", f"saw {TOKEN}"), secrets=(TOKEN,))
    assert TOKEN not in failure.message
    assert "500" in failure.message


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
    if transport == "aiohttp":
        assert "connection refused" in failure.message
    assert TOKEN not in failure.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_connect_timeout_bounds_a_connect_that_never_completes(transport: str) -> None:
    # A listener that never accepts, with its backlog already full: the kernel drops further
    # SYNs, so a connect hangs exactly like one to a black-holed address.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)

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

        try:
            failure, seconds = asyncio.run(main())
        finally:
            for filler in fillers:
                filler.close()
    # Cannot be reached (502), found out after connect_timeout, long before the 5 s deadline.
    assert failure.status == 502
    assert failure.code == "upstream_unavailable"
    assert 0.25 <= seconds < 2.0
