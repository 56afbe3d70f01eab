"""Hostile input against the real gateway (a subprocess) and the real stand-in, over loopback.

Credentials, invocation ids, raw paths, header smuggling, message framing, log injection,
disconnects and methods: for each case the exact answer, that nothing was forwarded, that no
500 happened, and the audit record SPEC.md asks for. Then one whole scenario whose every byte
(responses, stdout, stderr, audit log, metrics) is searched for secrets.

Most cases share one gateway per module; each request carries its own `x-request-id`, and a
test waits for that request's access log line, which is written after its audit record.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access import keys
from gateway.demo.standin import Respond, StandIn, json_response
from tests.harness import (
    BILLING_KEY,
    BILLING_KEY_2,
    FROZEN_KEY,
    TEAM_KEYS,
    UPSTREAM_TOKEN,
    RawResponse,
    RunningGateway,
    raw_request,
    running_servers,
)
from tests.harness import (
    Servers as Shared,
)

GatewayFactory = Callable[..., RunningGateway]

UUID = "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"
WRONG_KEY = keys.new_key()
BILLING_KEY_ID = keys.key_id(keys.stored_form(BILLING_KEY))
FROZEN_KEY_ID = keys.key_id(keys.stored_form(FROZEN_KEY))
BEARER = b"Authorization: Bearer " + BILLING_KEY.encode()
FORWARDED_HEADERS = {"host", "x-chroma-token", "x-request-id", "accept", "user-agent",
                     "content-length"}
NEW_TOKEN = "chroma-second-token-4b8d2f6a0c1e3a5b7d9f"


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    with running_servers(tmp_path_factory.mktemp("security")) as servers:
        yield servers


@pytest.fixture
def shared(shared_env: Shared) -> Shared:
    """The module's gateway and stand-in, with the stand-in's memory and behaviour reset."""
    return shared_env.reset()


def new_rid() -> str:
    return "sec-" + uuid.uuid4().hex


def http_request(
    method: str, target: bytes | str, *headers: bytes, body: bytes = b"", rid: str | None = None,
    host: bytes = b"127.0.0.1", close: bool = True,
) -> bytes:
    """An HTTP/1.1 request as bytes; `headers` are whole header lines without CRLF.

    `Connection: close` by default, so that reading the answer needs no keep-alive timeout.
    """
    if isinstance(target, str):
        target = target.encode("ascii")
    lines = [method.encode("ascii") + b" " + target + b" HTTP/1.1", b"Host: " + host]
    if rid is not None:
        lines.append(b"X-Request-Id: " + rid.encode("ascii"))
    lines.extend(headers)
    if close:
        lines.append(b"Connection: close")
    if body and not any(h.lower().startswith((b"content-length", b"transfer-encoding"))
                        for h in headers):
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def cancel_path(raw_id: str) -> str:
    return "/api/v1/invocations/" + raw_id


def wait_for_access(gateway: RunningGateway, rid: str, timeout: float = 5.0) -> dict[str, Any]:
    """The access log entry of request `rid`; it is written after the request's audit result."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in gateway.logs():
            if entry.get("event") == "access" and entry.get("request_id") == rid:
                return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"no access log entry for {rid}")
        time.sleep(0.02)


def records_of(gateway: RunningGateway, rid: str) -> list[dict[str, Any]]:
    wait_for_access(gateway, rid)
    return [r for r in gateway.audit_records() if r.get("request_id") == rid]


def settle(gateway: RunningGateway) -> None:
    """Let the gateway finish what it was doing: one more request, seen through to its log."""
    rid = new_rid()
    response = raw_request(gateway.port, http_request("GET", "/healthz", rid=rid))
    assert response.status == 200
    wait_for_access(gateway, rid)


def cancel_count(gateway: RunningGateway) -> int:
    return sum(1 for r in gateway.audit_records() if r["event"].startswith("cancel."))


def assert_error(response: RawResponse | httpx.Response, status: int, error: str) -> None:
    if isinstance(response, RawResponse):
        got_status, content_type, body = (
            response.status, response.header("content-type"), response.body)
    else:
        got_status, content_type, body = (
            response.status_code, response.headers.get("content-type"), response.content)
    assert got_status == status, body
    assert content_type == "application/json"
    parsed = json.loads(body)
    assert set(parsed) == {"error", "message"}
    assert parsed["error"] == error
    assert isinstance(parsed["message"], str) and parsed["message"]


def assert_one_result(
    gateway: RunningGateway, rid: str, *, status: int, error: str | None, outcome: str,
    invocation_id: str, team: str | None, key_id: str | None,
) -> dict[str, Any]:
    records = records_of(gateway, rid)
    assert [r["event"] for r in records] == ["cancel.result"], records
    record = records[0]
    assert record["status"] == status
    assert record["error"] == error
    assert record["outcome"] == outcome
    assert record["invocation_id"] == invocation_id
    assert record["team"] == team
    assert record["key_id"] == key_id
    assert record["client"] == "127.0.0.1"
    assert record["upstream_status"] is None
    return record


def send_in_pieces(port: int, pieces: list[bytes], *, pause: float = 0.0) -> RawResponse:
    """Send `pieces` one `send` each (the server may stop reading early), then read an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            if pause:
                time.sleep(pause)
        buffer = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
        except ConnectionResetError:
            pass
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:]]
    return RawResponse(int(lines[0].split(" ")[1]), headers, body, True)  # type: ignore[arg-type]


# -- credentials ----------------------------------------------------------------------------

KEY = BILLING_KEY.encode()
LAST_CHAR_CHANGED = (BILLING_KEY[:-1] + ("A" if BILLING_KEY[-1] != "A" else "B")).encode()
BASIC = base64.b64encode(b"billing:" + KEY)

UNAUTHENTICATED_CASES: dict[str, list[bytes]] = {
    "missing": [],
    "wrong_key": [b"Authorization: Bearer " + WRONG_KEY.encode()],
    "last_char_differs": [b"Authorization: Bearer " + LAST_CHAR_CHANGED],
    "key_cut_short": [b"Authorization: Bearer " + KEY[:-1]],
    "key_with_trailing_char": [b"Authorization: Bearer " + KEY + b"x"],
    "key_prefix_only": [b"Authorization: Bearer csg_"],
    "bearer_without_key": [b"Authorization: Bearer"],
    "bearer_and_blanks": [b"Authorization: Bearer    "],
    "empty_authorization": [b"Authorization:"],
    "basic_scheme": [b"Authorization: Basic " + BASIC],
    "basic_scheme_with_raw_key": [b"Authorization: Basic " + KEY],
    "no_scheme": [b"Authorization: " + KEY],
    "token_scheme": [b"Authorization: Token " + KEY],
    "non_ascii_credential": [b"Authorization: Bearer \xff\xfe\xfd"],
    "valid_key_then_non_ascii": [b"Authorization: Bearer " + KEY + b"\xff"],
    "credential_of_10_kb": [b"Authorization: Bearer " + b"a" * 10240],
    "valid_key_padded_to_10_kb": [b"Authorization: Bearer " + KEY + b"a" * 10240],
    "two_credentials_in_one_header": [b"Authorization: Bearer " + KEY + b", Bearer " + KEY],
    "valid_then_invalid_header": [BEARER, b"Authorization: Bearer " + WRONG_KEY.encode()],
    "invalid_then_valid_header": [b"Authorization: Bearer " + WRONG_KEY.encode(), BEARER],
    "valid_header_twice": [BEARER, BEARER],
    "valid_and_empty_header": [BEARER, b"Authorization:"],
    "key_in_x_api_key": [b"X-Api-Key: " + KEY],
    "key_in_x_chroma_token": [b"X-Chroma-Token: " + KEY],
    "key_in_cookie": [b"Cookie: Authorization=Bearer%20" + KEY],
    "proxy_authorization": [b"Proxy-Authorization: Bearer " + KEY],
}


@pytest.mark.parametrize("headers", UNAUTHENTICATED_CASES.values(), ids=UNAUTHENTICATED_CASES)
def test_bad_credential_is_401_with_www_authenticate_and_not_forwarded(
    shared: Shared, headers: list[bytes]
) -> None:
    rid = new_rid()
    response = raw_request(shared.gateway.port,
                           http_request("PUT", cancel_path(UUID), *headers, rid=rid))
    assert_error(response, 401, "unauthenticated")
    assert response.header("www-authenticate") == "Bearer"
    assert response.header("x-request-id") == rid
    assert_one_result(shared.gateway, rid, status=401, error="unauthenticated",
                      outcome="unauthenticated", invocation_id=UUID, team=None, key_id=None)
    assert shared.standin.requests == []


def test_key_in_query_string_is_401_and_not_forwarded(shared: Shared) -> None:
    rid = new_rid()
    target = cancel_path(UUID) + "?access_token=" + BILLING_KEY
    response = raw_request(shared.gateway.port, http_request("PUT", target, rid=rid))
    assert_error(response, 401, "unauthenticated")
    assert_one_result(shared.gateway, rid, status=401, error="unauthenticated",
                      outcome="unauthenticated", invocation_id=UUID, team=None, key_id=None)
    assert shared.standin.requests == []


def test_unauthenticated_record_holds_the_canonical_invocation_id(shared: Shared) -> None:
    rid = new_rid()
    response = raw_request(shared.gateway.port,
                           http_request("PUT", cancel_path(UUID.upper()), rid=rid))
    assert_error(response, 401, "unauthenticated")
    assert_one_result(shared.gateway, rid, status=401, error="unauthenticated",
                      outcome="unauthenticated", invocation_id=UUID, team=None, key_id=None)


def test_key_of_disabled_team_is_403_forbidden_and_not_forwarded(shared: Shared) -> None:
    rid = new_rid()
    response = raw_request(shared.gateway.port, http_request(
        "PUT", cancel_path(UUID), b"Authorization: Bearer " + FROZEN_KEY.encode(), rid=rid))
    assert_error(response, 403, "forbidden")
    assert response.header("www-authenticate") is None
    assert_one_result(shared.gateway, rid, status=403, error="forbidden", outcome="forbidden",
                      invocation_id=UUID, team="frozen", key_id=FROZEN_KEY_ID)
    assert shared.standin.requests == []


def test_uppercase_bearer_scheme_is_accepted(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    rid = new_rid()
    response = raw_request(shared.gateway.port, http_request(
        "PUT", cancel_path(invocation), b"Authorization: BEARER " + KEY, rid=rid))
    assert response.status == 202
    assert shared.standin.state_of(invocation) == "cancelled"
    assert len(shared.standin.requests) == 1


@pytest.mark.parametrize("size", [100 * 1024, 1024 * 1024])
def test_oversized_header_is_431_and_closed_without_reaching_the_app(
    shared: Shared, size: int
) -> None:
    before = cancel_count(shared.gateway)
    response = send_in_pieces(shared.gateway.port, [http_request(
        "PUT", cancel_path(UUID), BEARER, b"X-Padding: " + b"p" * size)])
    assert_error(response, 431, "headers_too_large")
    assert response.header("connection") == "close"
    settle(shared.gateway)
    assert cancel_count(shared.gateway) == before
    assert shared.standin.requests == []


def test_oversized_authorization_header_is_431_not_500(shared: Shared) -> None:
    response = send_in_pieces(shared.gateway.port, [http_request(
        "PUT", cancel_path(UUID), b"Authorization: Bearer " + b"k" * 100 * 1024)])
    assert_error(response, 431, "headers_too_large")
    assert shared.standin.requests == []


def test_header_grown_slowly_in_small_pieces_is_431(shared: Shared) -> None:
    """A header value that never ends is refused once the head passes the limit."""
    head = http_request("PUT", cancel_path(UUID), BEARER).removesuffix(b"\r\n\r\n")
    pieces = [head + b"\r\nX-Slow: "] + [b"s" * 1024] * 200
    response = send_in_pieces(shared.gateway.port, pieces, pause=0.001)
    assert_error(response, 431, "headers_too_large")
    assert shared.standin.requests == []


def test_head_just_under_the_limit_is_served(shared: Shared) -> None:
    rid = new_rid()
    response = raw_request(shared.gateway.port, http_request(
        "PUT", cancel_path(UUID), BEARER, b"X-Padding: " + b"p" * 30 * 1024, rid=rid))
    assert response.status == 404  # forwarded; the stand-in does not know this invocation
    assert len(shared.standin.requests) == 1


# -- invocation ids -------------------------------------------------------------------------


def fullwidth(text: str) -> str:
    """Digits as FULLWIDTH DIGITs, percent-encoded as UTF-8 (what a browser would send)."""
    return "".join(
        urllib.parse.quote(chr(0xFF10 + int(c))) if c.isdigit() else c for c in text
    )


MALFORMED_IDS: dict[str, str] = {
    "encoded_slash_inside": UUID[:23] + "%2F" + UUID[24:],
    "encoded_slash_after": UUID + "%2F",
    "encoded_dot_dot_slash": "..%2F..%2Fhealthz",
    "encoded_dots_lowercase": "%2e%2e",
    "encoded_dots_then_uuid": "%2E%2E%2F" + UUID,
    "one_char_percent_encoded": "%33" + UUID[1:],
    "percent_sign_only": UUID[:-1] + "%",
    "nul": UUID + "%00",
    "nul_alone": "%00",
    "crlf_header_injection": UUID + "%0d%0aX-Injected:%20yes",
    "braces_encoded": "%7B" + UUID + "%7D",
    "braces_raw": "{" + UUID + "}",
    "urn": "urn:uuid:" + UUID,
    "no_dashes": UUID.replace("-", ""),
    "one_char_short": UUID[:-1],
    "one_char_long": UUID + "0",
    "empty": "",
    "short_number": "1234",
    "non_hex_g": "g" + UUID[1:],
    "dashes_moved": UUID.replace("-", "")[:7] + "-" + UUID.replace("-", "")[7:],
    "trailing_space_encoded": UUID + "%20",
    "trailing_tab_encoded": UUID + "%09",
    "trailing_plus": UUID + "+",
    "leading_space_encoded": "%20" + UUID,
    "semicolon_param": UUID + ";param=1",
    "semicolon_only": UUID + ";",
    "trailing_dot": UUID + ".",
    "fullwidth_digits": fullwidth(UUID),
    "over_128_chars": "a" * 300,
    "sql_quote": UUID + "'--",
    "json_in_id": "%7B%22event%22%3A%22cancel.result%22%7D",
}


@pytest.mark.parametrize("raw_id", MALFORMED_IDS.values(), ids=MALFORMED_IDS)
def test_malformed_invocation_id_is_400_and_not_forwarded(shared: Shared, raw_id: str) -> None:
    rid = new_rid()
    response = raw_request(shared.gateway.port,
                           http_request("PUT", cancel_path(raw_id), BEARER, rid=rid))
    assert_error(response, 400, "invalid_invocation_id")
    assert_one_result(shared.gateway, rid, status=400, error="invalid_invocation_id",
                      outcome="invalid_request", invocation_id=raw_id[:128], team="billing",
                      key_id=BILLING_KEY_ID)
    assert shared.standin.requests == []


@pytest.mark.parametrize("raw_id", [
    UUID.encode() + b"\xff",
    "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in UUID).encode("utf-8"),
    UUID.encode() + b"\x00",
    UUID.encode() + b"\x7f",
], ids=["byte_ff", "raw_fullwidth_utf8", "raw_nul", "raw_del"])
def test_raw_non_ascii_or_control_byte_in_path_is_400_and_closed(
    shared: Shared, raw_id: bytes
) -> None:
    before = cancel_count(shared.gateway)
    response = raw_request(shared.gateway.port,
                           http_request("PUT", b"/api/v1/invocations/" + raw_id, BEARER))
    assert_error(response, 400, "bad_request")
    assert response.closed
    settle(shared.gateway)
    assert cancel_count(shared.gateway) == before
    assert shared.standin.requests == []


# -- raw paths ------------------------------------------------------------------------------

NOT_A_CANCEL_PATHS: dict[str, str] = {
    "raw_dot_dot_to_healthz": "/api/v1/invocations/../../healthz",
    "raw_dot_dot_back_in": f"/api/v1/invocations/../invocations/{UUID}",
    "double_slash_prefix": f"//api/v1/invocations/{UUID}",
    "double_slash_inside": f"/api/v1//invocations/{UUID}",
    "extra_segment": f"/api/v1/invocations/{UUID}/extra",
    "trailing_slash": f"/api/v1/invocations/{UUID}/",
    "dot_segment_before": f"/api/v1/./invocations/{UUID}",
    "encoded_slash_in_prefix": f"/api/v1/invocations%2F{UUID}",
    "uppercase_prefix": f"/API/v1/invocations/{UUID}",
    "no_leading_slash_prefix": f"/api/v1/invocation/{UUID}",
    "backslash": f"/api/v1/invocations\\{UUID}",
}


@pytest.mark.parametrize("target", NOT_A_CANCEL_PATHS.values(), ids=NOT_A_CANCEL_PATHS)
def test_path_trick_is_404_and_not_forwarded(shared: Shared, target: str) -> None:
    before = cancel_count(shared.gateway)
    rid = new_rid()
    response = raw_request(shared.gateway.port, http_request("PUT", target, BEARER, rid=rid))
    assert_error(response, 404, "not_found")
    wait_for_access(shared.gateway, rid)
    assert cancel_count(shared.gateway) == before
    assert shared.standin.requests == []


@pytest.mark.parametrize("query", ["?x=../", "?x=..%2F..%2Fhealthz", "?x=1&x=2#frag",
                                   "?x-chroma-token=attacker"])
def test_query_string_is_ignored_and_never_forwarded(shared: Shared, query: str) -> None:
    invocation = shared.standin.add_pending()
    response = raw_request(shared.gateway.port,
                           http_request("PUT", cancel_path(invocation) + query, BEARER))
    assert response.status == 202
    [forwarded] = shared.standin.requests
    assert forwarded.target == cancel_path(invocation)


def test_absolute_form_target_is_forwarded_to_upstream_only(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    response = raw_request(shared.gateway.port, http_request(
        "PUT", "http://evil.example:81" + cancel_path(invocation.upper()) + "?q=1", BEARER,
        host=b"evil.example:81"))
    assert response.status == 202
    [forwarded] = shared.standin.requests
    assert forwarded.target == cancel_path(invocation)
    assert forwarded.header_values("host") == [f"127.0.0.1:{shared.standin.port}"]


# -- header smuggling -----------------------------------------------------------------------

CALLER_TOKEN_COPIES: dict[str, list[bytes]] = {
    "lowercase": [b"x-chroma-token: attacker"],
    "title_case": [b"X-Chroma-Token: attacker"],
    "uppercase": [b"X-CHROMA-TOKEN: attacker"],
    "two_copies": [b"x-chroma-token: attacker", b"X-Chroma-Token: attacker2"],
    "empty_value": [b"x-chroma-token:"],
    "the_real_token": [b"x-chroma-token: " + UPSTREAM_TOKEN.encode()],
}


@pytest.mark.parametrize("headers", CALLER_TOKEN_COPIES.values(), ids=CALLER_TOKEN_COPIES)
def test_forwarded_request_carries_exactly_one_gateway_token(
    shared: Shared, headers: list[bytes]
) -> None:
    invocation = shared.standin.add_pending()
    response = raw_request(shared.gateway.port,
                           http_request("PUT", cancel_path(invocation), BEARER, *headers))
    assert response.status == 202
    [forwarded] = shared.standin.requests
    assert forwarded.header_values("x-chroma-token") == [UPSTREAM_TOKEN]


HOSTILE_HEADERS = [
    b"Cookie: session=attacker-cookie",
    b"X-Forwarded-For: 10.9.9.9",
    b"X-Forwarded-Host: attacker.example",
    b"X-Forwarded-Proto: attacker-proto",
    b"X-Real-IP: 10.9.9.8",
    b"Forwarded: for=10.9.9.7;host=attacker.example",
    b"Connection: x-secret",
    b"X-Secret: attacker-secret",
    b"Content-Type: text/attacker",
    b"Accept: text/attacker",
    b"Accept-Encoding: attacker-encoding",
    b"User-Agent: attacker-agent",
    b"Te: trailers",
    b"Via: 1.1 attacker",
    b"Origin: http://attacker.example",
    b"Referer: http://attacker.example/",
    b"X-Original-URL: /attacker",
    b"X-HTTP-Method-Override: DELETE",
]


def test_no_caller_header_reaches_the_upstream(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    response = raw_request(shared.gateway.port, http_request(
        "PUT", cancel_path(invocation), BEARER, *HOSTILE_HEADERS, host=b"evil.example",
        body=b'{"attacker": "body"}'))
    assert response.status == 202
    [forwarded] = shared.standin.requests
    names = {name for name, _ in forwarded.headers}
    assert names <= FORWARDED_HEADERS, names - FORWARDED_HEADERS
    everything = repr(forwarded.headers)
    for marker in ("attacker", "10.9.9", "evil", "secret", "trailers", BILLING_KEY):
        assert marker not in everything
    assert forwarded.header_values("host") == [f"127.0.0.1:{shared.standin.port}"]
    assert forwarded.header_values("accept") == ["application/json"]
    assert forwarded.header_values("user-agent")[0].startswith("chroma-sync-gateway/")
    assert forwarded.body == b""
    assert forwarded.method == "PUT"


def test_caller_authorization_is_not_forwarded(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    response = raw_request(shared.gateway.port,
                           http_request("PUT", cancel_path(invocation), BEARER))
    assert response.status == 202
    [forwarded] = shared.standin.requests
    assert forwarded.header_values("authorization") == []
    assert BILLING_KEY not in repr(forwarded)


def test_h2c_upgrade_request_is_not_upgraded_nor_forwarded_as_upgrade(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    response = raw_request(shared.gateway.port, http_request(
        "PUT", cancel_path(invocation), BEARER, b"Connection: Upgrade, HTTP2-Settings",
        b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"))
    assert response.status != 101
    assert response.status < 500
    for forwarded in shared.standin.requests:
        assert not {"upgrade", "http2-settings", "connection"} & {n for n, _ in forwarded.headers}


# -- message framing and smuggling ----------------------------------------------------------

PENDING_MARK = "00000000-0000-4000-8000-00000000beef"  # replaced by a pending invocation's id


def smuggled_cancel(invocation: str) -> bytes:
    return http_request("PUT", cancel_path(invocation), BEARER, close=False)


FRAMING_CASES: dict[str, Callable[[str], bytes]] = {
    "content_length_and_chunked": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Content-Length: 5", b"Transfer-Encoding: chunked",
        body=b"0\r\n\r\n", close=False),
    "chunked_and_content_length": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Transfer-Encoding: chunked", b"Content-Length: 5",
        body=b"0\r\n\r\n", close=False),
    "two_differing_content_lengths": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Content-Length: 0", b"Content-Length: 5",
        body=b"hello", close=False),
    "content_length_list": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Content-Length: 0, 5", body=b"hello", close=False),
    "content_length_plus_sign": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Content-Length: +5", body=b"hello", close=False),
    "content_length_negative": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Content-Length: -1", close=False),
    "content_length_hex": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Content-Length: 0x5", body=b"hello", close=False),
    "gzip_then_chunked": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Transfer-Encoding: gzip, chunked",
        body=b"0\r\n\r\n", close=False),
    "identity": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Transfer-Encoding: identity", close=False),
    "chunked_twice": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: chunked", body=b"0\r\n\r\n", close=False),
    "chunked_then_identity": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Transfer-Encoding: chunked, identity",
        body=b"0\r\n\r\n", close=False),
    "xchunked": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n",
        close=False),
    "space_before_colon": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Transfer-Encoding : chunked", body=b"0\r\n\r\n",
        close=False),
    "obs_fold_transfer_encoding": lambda inv: http_request(
        "PUT", cancel_path(inv), BEARER, b"Transfer-Encoding:\r\n chunked",
        body=b"0\r\n\r\n", close=False),
    "bare_lf_line_ends": lambda inv: (
        b"PUT " + cancel_path(inv).encode() + b" HTTP/1.1\nHost: x\n" + BEARER + b"\n\n"),
    "cl_te_smuggles_a_cancel": lambda inv: http_request(
        "PUT", cancel_path(UUID), BEARER, b"Content-Length: 4", b"Transfer-Encoding: chunked",
        body=b"0\r\n\r\n" + smuggled_cancel(inv), close=False),
    "te_cl_smuggles_a_cancel": lambda inv: http_request(
        "PUT", cancel_path(UUID), BEARER, b"Transfer-Encoding: chunked",
        b"Content-Length: " + str(len(smuggled_cancel(inv)) + 5).encode(),
        body=b"0\r\n\r\n" + smuggled_cancel(inv), close=False),
    "te_obfuscated_smuggles_a_cancel": lambda inv: http_request(
        "PUT", cancel_path(UUID), BEARER, b"Content-Length: 5", b"Transfer-Encoding: chunked",
        b"Transfer-encoding: cow", body=b"0\r\n\r\n" + smuggled_cancel(inv), close=False),
}


@pytest.mark.parametrize("build", FRAMING_CASES.values(), ids=FRAMING_CASES)
def test_ambiguous_framing_is_400_closed_and_nothing_forwarded(
    shared: Shared, build: Callable[[str], bytes]
) -> None:
    invocation = shared.standin.add_pending()
    before = cancel_count(shared.gateway)
    response = raw_request(shared.gateway.port, build(invocation))
    assert_error(response, 400, "bad_request")
    assert response.closed
    settle(shared.gateway)
    assert shared.standin.requests == []
    assert shared.standin.state_of(invocation) == "pending"
    assert cancel_count(shared.gateway) == before


def test_cancel_inside_a_body_is_only_a_body(shared: Shared) -> None:
    """A request hidden in another's Content-Length body is never parsed as a request."""
    invocation = shared.standin.add_pending()
    hidden = smuggled_cancel(invocation)
    response = raw_request(shared.gateway.port, http_request("GET", "/healthz", body=hidden))
    assert response.status == 200
    settle(shared.gateway)
    assert shared.standin.requests == []
    assert shared.standin.state_of(invocation) == "pending"


def test_malformed_request_pipelined_after_a_cancel_does_not_take_its_answer(
    shared: Shared,
) -> None:
    """The error for a broken second request must not be read as the first one's answer."""
    invocation = shared.standin.add_pending()

    def slow(request: Any) -> None:
        time.sleep(0.3)  # the cancel is still in flight when the garbage is parsed
        return None

    shared.standin.behaviour = slow
    rid = new_rid()
    data = (http_request("PUT", cancel_path(invocation), BEARER, rid=rid, close=False)
            + b"GARBAGE \x00 HTTP/9.9\r\n\r\n")
    response = raw_request(shared.gateway.port, data)
    assert response.status == 202
    assert response.header("x-request-id") == rid
    assert response.closed
    assert shared.standin.state_of(invocation) == "cancelled"


def test_oversized_head_pipelined_after_a_cancel_does_not_take_its_answer(
    shared: Shared,
) -> None:
    invocation = shared.standin.add_pending()

    def slow(request: Any) -> None:
        time.sleep(0.3)
        return None

    shared.standin.behaviour = slow
    rid = new_rid()
    first = http_request("PUT", cancel_path(invocation), BEARER, rid=rid, close=False)
    pieces = [first + b"PUT /healthz HTTP/1.1\r\nX-Big: "] + [b"b" * 8192] * 8
    started = time.monotonic()
    response = send_in_pieces(shared.gateway.port, pieces, pause=0.01)
    assert time.monotonic() - started < 3.0  # closed after the answer, not by a timeout
    assert response.status == 202
    assert response.header("x-request-id") == rid
    assert shared.standin.state_of(invocation) == "cancelled"
    assert len(shared.standin.requests) == 1


# -- audit client, log injection, disconnects, methods --------------------------------------


def test_audit_client_is_the_socket_peer_not_x_forwarded_for(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    rid = new_rid()
    response = raw_request(shared.gateway.port, http_request(
        "PUT", cancel_path(invocation), BEARER, b"X-Forwarded-For: 10.9.9.9",
        b"X-Real-IP: 10.9.9.9", b"Forwarded: for=10.9.9.9", rid=rid))
    assert response.status == 202
    records = records_of(shared.gateway, rid)
    assert [r["event"] for r in records] == ["cancel.attempt", "cancel.result"]
    assert {r["client"] for r in records} == {"127.0.0.1"}


INJECTION = '\n{"event":"cancel.result","outcome":"cancelled","team":"billing"}\n'


def test_log_injection_never_adds_an_audit_record_or_log_line(shared: Shared) -> None:
    gateway = shared.gateway
    results_before = sum(1 for r in gateway.audit_records() if r["event"] == "cancel.result")
    encoded = urllib.parse.quote(INJECTION, safe="")
    requests = [
        http_request("PUT", cancel_path(encoded), BEARER, rid=new_rid()),
        http_request("PUT", cancel_path(UUID + encoded), rid=new_rid()),
        http_request("PUT", cancel_path("%0d%0a" + encoded + "%E2%80%A8%E2%80%A9"), BEARER,
                     rid=new_rid()),
        # Header values: quotes, braces and backslashes are allowed raw; CR/LF are not.
        http_request("PUT", cancel_path(UUID), BEARER,
                     b'X-Request-Id: x","event":"cancel.result'),
        http_request("PUT", cancel_path(UUID), BEARER,
                     b'User-Agent: a\\n{"event":"cancel.result"}\\u000a\xe2\x80\xa8',
                     rid=new_rid()),
        http_request("PUT", cancel_path("\\u000a" + UUID), BEARER, rid=new_rid()),
    ]
    answered = [raw_request(gateway.port, data) for data in requests]
    assert [r.status for r in answered] == [400, 401, 400, 404, 404, 400]
    # A raw LF or CR inside a header value is refused by the parser, before the app.
    for raw in (b"User-Agent: a\n" + INJECTION.strip().encode(),
                b"X-Request-Id: a\r" + INJECTION.strip().encode()):
        refused = raw_request(gateway.port, http_request("PUT", cancel_path(UUID), BEARER, raw))
        assert_error(refused, 400, "bad_request")
    settle(gateway)
    audit_bytes = gateway.audit_path.read_bytes()
    for line in audit_bytes.split(b"\n")[:-1]:
        assert isinstance(json.loads(line), dict)
    assert audit_bytes.endswith(b"\n")
    results = [r for r in gateway.audit_records() if r["event"] == "cancel.result"]
    assert len(results) - results_before == len(requests)
    assert not any(r["outcome"] == "cancelled" and r["upstream_status"] is None for r in results)
    for line in gateway.stderr_path.read_bytes().split(b"\n")[:-1]:
        assert isinstance(json.loads(line), dict), line
    assert len(shared.standin.requests) == 2  # the two valid ids, unknown upstream (404)


def test_client_gone_while_sending_the_body_is_never_forwarded(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    rid = new_rid()
    head = http_request("PUT", cancel_path(invocation), BEARER, b"Content-Length: 500",
                        rid=rid)
    with socket.create_connection(("127.0.0.1", shared.gateway.port), timeout=5.0) as sock:
        sock.sendall(head + b"only a few bytes")
        time.sleep(0.2)
    wait_for_access(shared.gateway, rid)
    records = records_of(shared.gateway, rid)
    assert [r["event"] for r in records] in ([], ["cancel.result"])
    for record in records:
        assert record["outcome"] == "invalid_request"
        assert record["upstream_status"] is None
        assert record["team"] == "billing"
    assert shared.standin.requests == []
    assert shared.standin.state_of(invocation) == "pending"


@pytest.mark.parametrize("method", ["HEAD", "POST", "DELETE", "GET", "PATCH", "OPTIONS"])
def test_other_method_on_cancel_path_is_405_allow_put_and_not_forwarded(
    shared: Shared, method: str
) -> None:
    invocation = shared.standin.add_pending()
    response = shared.gateway.client.request(
        method, cancel_path(invocation), headers={"Authorization": f"Bearer {BILLING_KEY}"})
    assert response.status_code == 405
    assert response.headers["allow"] == "PUT"
    if method != "HEAD":
        assert_error(response, 405, "method_not_allowed")
    assert shared.standin.requests == []
    assert shared.standin.state_of(invocation) == "pending"


# -- the whole scenario, searched for secrets -----------------------------------------------


def test_no_secret_leaks_anywhere_in_a_whole_scenario(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    gateway = gateway_factory()
    token_path = tmp_path / "token"
    transcript: list[bytes] = []
    wrong_keys = [WRONG_KEY, keys.new_key(), BILLING_KEY[:-1] + "Z", "csg_" + "A" * 43]
    authorizations: list[str] = []

    def call(method: str, path: str, authorization: str | None = None) -> httpx.Response:
        headers = {}
        if authorization is not None:
            authorizations.append(authorization)
            headers["Authorization"] = authorization
        response = gateway.client.request(method, path, headers=headers)
        transcript.append(f"{response.status_code} {response.reason_phrase}\n".encode())
        transcript.extend(k + b": " + v for k, v in response.headers.raw)
        transcript.append(response.content)
        assert response.status_code < 500 or response.status_code in (502, 503, 504)
        return response

    def echo_token(status: int, json_body: bool) -> Callable[[Any], Respond]:
        def behave(request: Any) -> Respond:
            token = request.header_values("x-chroma-token")[0]
            text = f"database said no; token was {token}; headers {request.headers}"
            if json_body:
                return json_response(status, {"error": "InternalError", "message": text})
            return Respond(status, text.encode(), (("content-type", "text/plain"),))
        return behave

    # A cancel that works, and callers that are refused.
    assert call("PUT", cancel_path(standin.add_pending()), f"Bearer {BILLING_KEY}"
                ).status_code == 202
    for wrong in wrong_keys:
        assert call("PUT", cancel_path(UUID), f"Bearer {wrong}").status_code == 401
    assert call("PUT", cancel_path(UUID), f"Basic {BILLING_KEY}").status_code == 401
    assert call("PUT", cancel_path(UUID), f"Bearer {FROZEN_KEY}").status_code == 403
    assert call("PUT", cancel_path("not-a-uuid"), f"Bearer {BILLING_KEY_2}").status_code == 400
    # Upstream echoes the token: in a 5xx message, as plain text, and in a passed-through 4xx.
    for status, json_body in ((500, True), (503, False), (400, True), (404, True), (429, True)):
        standin.behaviour = echo_token(status, json_body)
        call("PUT", cancel_path(standin.add_pending()), f"Bearer {BILLING_KEY}")
    standin.behaviour = None
    # Upstream refuses the gateway's token.
    standin.token = "something-else"
    assert call("PUT", cancel_path(standin.add_pending()), f"Bearer {BILLING_KEY}"
                ).json()["error"] == "upstream_auth_failed"
    # Rotation to a second token, picked up without a restart.
    standin.token = NEW_TOKEN
    staged = tmp_path / "token.new"
    staged.write_text(NEW_TOKEN + "\n")
    os.replace(staged, token_path)
    deadline = time.monotonic() + 5.0
    while call("PUT", cancel_path(standin.add_pending()), f"Bearer {BILLING_KEY_2}"
               ).status_code != 202:
        assert time.monotonic() < deadline, "the rotated token was not picked up"
        time.sleep(0.1)
    standin.behaviour = echo_token(502, True)
    assert call("PUT", cancel_path(standin.add_pending()), f"Bearer {BILLING_KEY_2}"
                ).json()["error"] == "upstream_error"
    standin.behaviour = None
    for path in ("/readyz", "/healthz", "/metrics", "/nope"):
        call("GET", path)
    metrics = call("GET", "/metrics").text
    assert "cancel" in metrics
    assert gateway.stop() == 0

    secrets = {UPSTREAM_TOKEN, NEW_TOKEN, *TEAM_KEYS, *wrong_keys, *authorizations}
    # Recognizable pieces too: half a key or token is still a leak.
    secrets |= {s[: len(s) // 2 + 4] for s in (UPSTREAM_TOKEN, NEW_TOKEN, *TEAM_KEYS)}
    places = {
        "responses": b"\n".join(transcript),
        "stdout": gateway.stdout_path.read_bytes(),
        "stderr": gateway.stderr_path.read_bytes(),
        "audit": gateway.audit_path.read_bytes(),
        "metrics": metrics.encode(),
    }
    assert places["stderr"] and places["audit"]
    for place, data in places.items():
        for secret in secrets:
            assert secret.encode() not in data, f"a secret is in the {place}"
    responses = places["responses"]
    assert b"Traceback" not in responses
    assert str(tmp_path).encode() not in responses
    assert str(tmp_path.parent).encode() not in responses
    assert b"Traceback" not in places["stderr"]
    for line in places["stderr"].splitlines():
        assert isinstance(json.loads(line), dict)
