"""End to end: the real gateway (a subprocess) in front of the real stand-in, over loopback.

SPEC.md's "What the caller gets back" table row by row, then request ids, the invocation id,
the body rule, the order of checks, the other routes, rate limits, TLS to upstream and the
upstream token's life (rotation, symlink swap, deletion, invalid values).

Most rows share one gateway per module (each test uses its own `x-request-id` to find its
audit records); tests that need their own configuration start their own.
"""

from __future__ import annotations

import os
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from gateway.access import keys
from gateway.demo.standin import (
    Action,
    Close,
    Raw,
    ReceivedRequest,
    Reset,
    Respond,
    Stall,
    StandIn,
    json_response,
)
from gateway.secrets.sources import fingerprint
from tests.harness import (
    BILLING_KEY,
    FROZEN_KEY,
    UPSTREAM_TOKEN,
    RunningGateway,
    free_port,
    raw_request,
    running_servers,
)
from tests.harness import (
    Servers as Shared,
)

GatewayFactory = Callable[..., RunningGateway]

FORWARDED_HEADERS = {"host", "x-chroma-token", "x-request-id", "accept", "user-agent",
                     "content-length"}
BILLING_KEY_ID = keys.key_id(keys.stored_form(BILLING_KEY))
FROZEN_KEY_ID = keys.key_id(keys.stored_form(FROZEN_KEY))
NEW_TOKEN = "chroma-rotated-token-0d9e8f7a6b5c4d3e2f1a"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# -- a gateway shared by the module ----------------------------------------------------------


@pytest.fixture(scope="module")
def _shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    # One upstream answer per cancel: this module is SPEC's table (retries: test_retry_e2e).
    with running_servers(tmp_path_factory.mktemp("shared-gateway"),
                         upstream={"retries": 0}) as servers:
        yield servers


@pytest.fixture
def shared(_shared_servers: Shared) -> Shared:
    """The module's gateway, with the stand-in back to Chroma's own behaviour."""
    return _shared_servers.reset()


# -- helpers ---------------------------------------------------------------------------------


def new_request_id() -> str:
    return f"test-{uuid.uuid4().hex}"


def random_id() -> str:
    return str(uuid.uuid4())


def put(gateway: RunningGateway, invocation: str, request_id: str, *,
        key: str | None = BILLING_KEY, **kwargs: Any) -> httpx.Response:
    headers = {"x-request-id": request_id, **kwargs.pop("headers", {})}
    return gateway.cancel(invocation, key=key, headers=headers, **kwargs)


def assert_json_answer(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("x-request-id")
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The answer is an ErrorResponse with `code`; return its message."""
    body = assert_json_answer(response, status)
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def assert_forwarded_once(standin: StandIn, invocation: str, request_id: str,
                          token: str = UPSTREAM_TOKEN) -> ReceivedRequest:
    """Exactly one PUT reached the stand-in, built only from the allowlist (an ambiguous
    answer is followed by a reconciliation GET)."""
    puts = [r for r in standin.requests if r.method == "PUT"]
    assert len(puts) == 1, standin.requests
    [received] = puts
    assert received.method == "PUT"
    assert received.target == f"/api/v1/invocations/{invocation.lower()}"
    assert received.header_values("x-chroma-token") == [token]
    assert received.header_values("x-request-id") == [request_id]
    assert {name for name, _ in received.headers} == FORWARDED_HEADERS
    assert received.body == b""
    return received


def records_for(gateway: RunningGateway, request_id: str, count: int) -> list[dict[str, Any]]:
    def mine(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r.get("request_id") == request_id]

    records = mine(gateway.wait_for_records(lambda rs: len(mine(rs)) >= count))
    assert len(records) == count, records
    return records


def assert_forward_audited(
    gateway: RunningGateway, request_id: str, invocation: str, *, outcome: str, status: int,
    upstream_status: int | None, error: str | None,
) -> dict[str, Any]:
    """A pending `cancel.attempt`, then the `cancel.result`; return the result."""
    attempt, result = records_for(gateway, request_id, 2)
    expected_common = {
        "invocation_id": invocation.lower(), "team": "billing", "key_id": BILLING_KEY_ID,
        "client": "127.0.0.1",
    }
    assert attempt["event"] == "cancel.attempt"
    assert {k: attempt[k] for k in expected_common} == expected_common
    assert (attempt["outcome"], attempt["status"], attempt["upstream_status"],
            attempt["error"]) == ("pending", None, None, None)
    assert result["event"] == "cancel.result"
    assert result["seq"] > attempt["seq"]
    assert {k: result[k] for k in expected_common} == expected_common
    assert (result["outcome"], result["status"], result["upstream_status"],
            result["error"]) == (outcome, status, upstream_status, error)
    return result


def assert_refused_audited(
    gateway: RunningGateway, request_id: str, *, outcome: str, status: int, error: str,
    team: str | None = "billing",
) -> dict[str, Any]:
    """A request that was not forwarded leaves one `cancel.result` and no attempt."""
    [result] = records_for(gateway, request_id, 1)
    time.sleep(0.05)  # nothing more may follow
    assert len(records_for(gateway, request_id, 1)) == 1
    assert result["event"] == "cancel.result"
    assert (result["outcome"], result["status"], result["upstream_status"],
            result["error"], result["team"]) == (outcome, status, None, error, team)
    return result


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> float:
    """Poll `condition`; return the seconds it took, or fail after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


# -- SPEC's table, one row at a time ---------------------------------------------------------


@dataclass(frozen=True)
class Row:
    action: Action
    status: int  # to the caller
    error: str | None  # the caller's `error` code (None for 202)
    outcome: str
    upstream_status: int | None
    audit_error: str | None = None  # defaults to `error`
    body: bytes | None = None  # exactly this body, passed through
    json_body: Any = None  # this parsed body (202)
    headers: dict[str, str] = field(default_factory=dict)  # kept on the caller's answer
    message_has: tuple[str, ...] = ()


ERROR_RESPONSE = b'{"error":"SomeUpstreamError","message":"upstream says no","detail":[1,2]}'
HTML = (("content-type", "text/html"),)
HTML_PAGE = b"<!doctype html><html><body><h1>Oops</h1></body></html>"
REDIRECT_TO = "/api/v1/invocations/00000000-0000-4000-8000-000000000000"
OVER_64K = b'{"a":"' + b"x" * (64 * 1024) + b'"}'

ROWS: dict[str, Row] = {
    "202-object-passed-through": Row(
        json_response(202, {"id": "abc", "status": "cancelled", "n": [1, 2]}), 202, None,
        "cancelled", 202, json_body={"id": "abc", "status": "cancelled", "n": [1, 2]}),
    "202-no-body-is-empty-object": Row(Respond(202, b"", ()), 202, None, "cancelled", 202,
                                       json_body={}),
    "202-array-is-empty-object": Row(Respond(202, b"[1,2,3]"), 202, None, "cancelled", 202,
                                     json_body={}),
    "202-html-is-empty-object": Row(Respond(202, HTML_PAGE, HTML), 202, None, "cancelled", 202,
                                    json_body={}),
    "202-deeply-nested-array-is-empty-object": Row(
        Respond(202, b"[" * 60_000), 202, None, "cancelled", 202, json_body={}),
    "202-body-of-exactly-64kib-is-read": Row(
        Respond(202, b'{"a":"' + b"x" * (64 * 1024 - 8) + b'"}', chunked=True), 202, None,
        "cancelled", 202, json_body={"a": "x" * (64 * 1024 - 8)}),
    **{
        f"{status}-error-response-passed-through": Row(
            Respond(status, ERROR_RESPONSE), status, "SomeUpstreamError", outcome, status,
            audit_error=code, body=ERROR_RESPONSE)
        for status, code, outcome in [
            (400, "bad_request", "rejected_by_upstream"), (404, "not_found", "not_found"),
            (409, "conflict", "rejected_by_upstream"), (412, "not_cancelable", "not_cancelable"),
            (422, "unprocessable", "rejected_by_upstream"),
        ]
    },
    **{
        f"{status}-html-normalized-to-{code}": Row(
            Respond(status, HTML_PAGE, HTML), status, code, outcome, status)
        for status, code, outcome in [
            (400, "bad_request", "rejected_by_upstream"), (404, "not_found", "not_found"),
            (409, "conflict", "rejected_by_upstream"), (412, "not_cancelable", "not_cancelable"),
            (422, "unprocessable", "rejected_by_upstream"),
        ]
    },
    "404-half-error-response-normalized": Row(
        json_response(404, {"error": "NotFoundError"}), 404, "not_found", "not_found", 404),
    "404-error-response-echoing-the-token-normalized": Row(
        json_response(404, {"error": "NotFoundError", "message": f"no such {UPSTREAM_TOKEN}"}),
        404, "not_found", "not_found", 404),
    "401-upstream-auth-failed": Row(
        json_response(401, {"error": "Unauthorized", "message": "bad key"}), 502,
        "upstream_auth_failed", "upstream_error", 401),
    "403-upstream-auth-failed": Row(
        json_response(403, {"error": "Forbidden", "message": "no"}), 502,
        "upstream_auth_failed", "upstream_error", 403),
    "429-error-response-and-retry-after-kept": Row(
        Respond(429, ERROR_RESPONSE, (("content-type", "application/json"),
                                      ("retry-after", "7"))),
        429, "SomeUpstreamError", "rejected_by_upstream", 429,
        audit_error="upstream_rate_limited", body=ERROR_RESPONSE, headers={"retry-after": "7"}),
    "429-plain-is-upstream-rate-limited-with-retry-after": Row(
        Respond(429, b"slow down", (("retry-after", "3"),)), 429, "upstream_rate_limited",
        "rejected_by_upstream", 429, headers={"retry-after": "3"}),
    "500-upstream-error-names-status-and-message": Row(
        json_response(500, {"error": "InternalError", "message": "database on fire"}), 502,
        "upstream_error", "upstream_error", 500, message_has=("500", "database on fire")),
    "503-upstream-error-names-status-and-message": Row(
        Respond(503, b"Service Unavailable: maintenance", (("content-type", "text/plain"),)),
        502, "upstream_error", "upstream_error", 503,
        message_has=("503", "Service Unavailable: maintenance")),
    **{
        f"{status}-redirect-not-followed": Row(
            Respond(status, b"", (("location", REDIRECT_TO),)), 502, "upstream_redirect",
            "upstream_error", status, message_has=(str(status),))
        for status in (301, 302, 307)
    },
    **{
        f"{status}-unexpected-status": Row(
            Respond(status, b"{}" if status != 204 else b""), 502,
            "upstream_unexpected_status", "upstream_error", status, message_has=(str(status),))
        for status in (200, 204, 418)
    },
    "200-html-page-unexpected-status": Row(
        Respond(200, HTML_PAGE, HTML), 502, "upstream_unexpected_status", "upstream_error", 200),
    "reset-unavailable": Row(Reset(), 502, "upstream_unavailable", "upstream_error", None),
    "close-unavailable": Row(Close(), 502, "upstream_unavailable", "upstream_error", None),
    "garbage-unavailable": Row(
        Raw(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n"), 502, "upstream_unavailable",
        "upstream_error", None),
    "truncated-body-unavailable": Row(
        Raw(b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
            b"content-length: 500\r\n\r\n{\"id\": \"trunc"),
        502, "upstream_unavailable", "upstream_error", None),
    "body-over-64kib-unavailable": Row(
        Respond(202, OVER_64K), 502, "upstream_unavailable", "upstream_error", None),
    "chunked-body-over-64kib-unavailable": Row(
        Respond(202, OVER_64K, chunked=True), 502, "upstream_unavailable", "upstream_error",
        None),
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_upstream_answer_is_mapped_per_spec_table(shared: Shared, row: Row) -> None:
    shared.standin.behaviour = lambda request: row.action
    invocation, request_id = random_id().upper(), new_request_id()

    response = put(shared.gateway, invocation, request_id)

    assert response.status_code == row.status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == request_id
    if row.body is not None:
        assert response.content == row.body
    elif row.json_body is not None:
        assert response.json() == row.json_body
    else:
        message = assert_error(response, row.status, str(row.error))
        for part in row.message_has:
            assert part in message
        assert UPSTREAM_TOKEN not in message
    for name, value in row.headers.items():
        assert response.headers.get(name) == value
    if row.status != 429:
        assert "retry-after" not in response.headers
    assert UPSTREAM_TOKEN not in response.text
    assert_forwarded_once(shared.standin, invocation, request_id)
    assert_forward_audited(
        shared.gateway, request_id, invocation, outcome=row.outcome, status=row.status,
        upstream_status=row.upstream_status,
        error=row.audit_error if row.audit_error is not None else row.error,
    )


def test_5xx_message_is_cut_to_512_characters_without_control_characters(shared: Shared) -> None:
    upstream_message = "line1\nline2\r\x00\x1b[31m\x07" + "Z" * 1000
    shared.standin.behaviour = lambda request: json_response(
        500, {"error": "InternalError", "message": upstream_message})
    request_id = new_request_id()

    message = assert_error(put(shared.gateway, random_id(), request_id), 502, "upstream_error")

    assert "500" in message
    assert not CONTROL.search(message)
    kept = "line1line2[31m"
    assert kept + "Z" * (512 - len(kept)) in message
    assert "Z" * (512 - len(kept) + 1) not in message


def test_5xx_message_holding_the_upstream_token_never_shows_it(shared: Shared) -> None:
    shared.standin.behaviour = lambda request: json_response(
        500, {"error": "InternalError", "message": f"token {UPSTREAM_TOKEN} broke us"})
    request_id = new_request_id()

    response = put(shared.gateway, random_id(), request_id)

    message = assert_error(response, 502, "upstream_error")
    assert "500" in message
    assert UPSTREAM_TOKEN not in response.text
    records_for(shared.gateway, request_id, 2)
    assert UPSTREAM_TOKEN not in shared.gateway.audit_path.read_text()
    assert UPSTREAM_TOKEN not in shared.gateway.stderr_path.read_text()


def test_default_upstream_cancels_a_pending_invocation_once(shared: Shared) -> None:
    invocation, request_id = shared.standin.add_pending(), new_request_id()
    body = assert_json_answer(put(shared.gateway, invocation.upper(), request_id), 202)
    assert body == {}
    assert shared.standin.state_of(invocation) == "cancelled"
    assert_forwarded_once(shared.standin, invocation, request_id)
    assert_forward_audited(shared.gateway, request_id, invocation, outcome="cancelled",
                           status=202, upstream_status=202, error=None)


def test_upstream_stall_past_timeout_is_504_upstream_timeout(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(upstream={"timeout": 0.5})
    standin.behaviour = lambda request: Stall(5.0)
    invocation, request_id = random_id(), new_request_id()

    started = time.monotonic()
    response = put(gateway, invocation, request_id)
    elapsed = time.monotonic() - started

    assert_error(response, 504, "upstream_timeout")
    assert 0.4 < elapsed < 2.5
    assert_forwarded_once(standin, invocation, request_id)
    assert_forward_audited(gateway, request_id, invocation, outcome="upstream_error",
                           status=504, upstream_status=None, error="upstream_timeout")


def test_connection_refused_is_502_upstream_unavailable(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    # Retried by default (never sent): test_retry_e2e; here, the table's one answer.
    gateway = gateway_factory(upstream_url=f"http://127.0.0.1:{free_port()}",
                              upstream={"retries": 0})
    invocation, request_id = random_id(), new_request_id()

    assert_error(put(gateway, invocation, request_id), 502, "upstream_unavailable")

    assert standin.requests == []
    assert_forward_audited(gateway, request_id, invocation, outcome="upstream_error",
                           status=502, upstream_status=None, error="upstream_unavailable")


# -- x-request-id ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "A-z_0.9", "r" * 128])
def test_valid_caller_request_id_is_echoed_forwarded_and_audited(
    shared: Shared, value: str
) -> None:
    invocation = shared.standin.add_pending()
    response = put(shared.gateway, invocation, value)
    assert_json_answer(response, 202)
    assert response.headers["x-request-id"] == value
    assert_forwarded_once(shared.standin, invocation, value)
    records = records_for(shared.gateway, value, 2)
    assert {r["request_id"] for r in records} == {value}


@pytest.mark.parametrize(
    "value",
    [b"r" * 129, b"has space", "caf\u00e9".encode(), b"semi;colon", b"a/b", b""],
    ids=["129-chars", "space", "unicode", "semicolon", "slash", "empty"],
)
def test_invalid_caller_request_id_is_replaced_by_a_uuid4(shared: Shared, value: bytes) -> None:
    invocation = shared.standin.add_pending()
    response = shared.gateway.cancel(invocation, headers={"x-request-id": value})  # type: ignore[dict-item]

    assert_json_answer(response, 202)
    given = response.headers["x-request-id"]
    assert given.encode() != value
    assert uuid.UUID(given).version == 4
    assert str(uuid.UUID(given)) == given
    assert_forwarded_once(shared.standin, invocation, given)
    records = records_for(shared.gateway, given, 2)
    assert {r["request_id"] for r in records} == {given}


def test_duplicate_request_id_headers_are_replaced_by_a_uuid4(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    response = raw_request(
        shared.gateway.port,
        f"PUT /api/v1/invocations/{invocation} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {BILLING_KEY}\r\nx-request-id: one\r\nx-request-id: two\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode(),
    )
    assert response.status == 202
    given = response.header("x-request-id")
    assert given is not None and uuid.UUID(given).version == 4
    assert_forwarded_once(shared.standin, invocation, given)


def test_request_id_is_on_refusals_too(shared: Shared) -> None:
    response = put(shared.gateway, random_id(), "refused-1", key=None)
    assert_error(response, 401, "unauthenticated")
    assert response.headers["x-request-id"] == "refused-1"
    assert_refused_audited(shared.gateway, "refused-1", outcome="unauthenticated", status=401,
                           error="unauthenticated", team=None)


# -- the invocation id -----------------------------------------------------------------------


def test_mixed_case_invocation_id_is_forwarded_and_audited_in_lowercase(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(invocation))
    request_id = new_request_id()
    assert_json_answer(put(shared.gateway, mixed, request_id), 202)
    assert_forwarded_once(shared.standin, invocation, request_id)
    assert_forward_audited(shared.gateway, request_id, invocation, outcome="cancelled",
                           status=202, upstream_status=202, error=None)


@pytest.mark.parametrize(
    "raw_id",
    [
        "3f2a1c9e8b7d4e6f9a1b2c3d4e5f6a7b",
        "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7",
        "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7bb",
        "3f2a1c9g-8b7d-4e6f-9a1b-2c3d4e5f6a7b",
        "%33f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b",  # decodes to a valid UUID
        "{3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b}",
        "..",
    ],
    ids=["no-hyphens", "short", "long", "non-hex", "percent-encoded", "braces", "dots"],
)
def test_malformed_invocation_id_is_400_and_not_forwarded(shared: Shared, raw_id: str) -> None:
    request_id = new_request_id()
    response = raw_request(
        shared.gateway.port,
        f"PUT /api/v1/invocations/{raw_id} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {BILLING_KEY}\r\nx-request-id: {request_id}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode(),
    )
    assert response.status == 400
    assert response.header("content-type") == "application/json"
    assert response.json()["error"] == "invalid_invocation_id"
    assert shared.standin.requests == []
    result = assert_refused_audited(shared.gateway, request_id, outcome="invalid_request",
                                    status=400, error="invalid_invocation_id")
    assert result["invocation_id"] == raw_id


# -- the request body ------------------------------------------------------------------------


def test_body_of_1024_bytes_is_accepted_and_not_forwarded(shared: Shared) -> None:
    invocation, request_id = shared.standin.add_pending(), new_request_id()
    response = put(shared.gateway, invocation, request_id, content=b"b" * 1024)
    assert_json_answer(response, 202)
    forwarded = assert_forwarded_once(shared.standin, invocation, request_id)
    assert forwarded.header_values("content-length") == ["0"]


def test_body_of_1025_bytes_is_413_and_not_forwarded(shared: Shared) -> None:
    invocation, request_id = shared.standin.add_pending(), new_request_id()
    response = put(shared.gateway, invocation, request_id, content=b"b" * 1025)
    assert_error(response, 413, "payload_too_large")
    assert shared.standin.requests == []
    assert shared.standin.state_of(invocation) == "pending"
    assert_refused_audited(shared.gateway, request_id, outcome="invalid_request", status=413,
                           error="payload_too_large")


def test_chunked_body_over_1_kib_is_413_and_not_forwarded(shared: Shared) -> None:
    invocation, request_id = shared.standin.add_pending(), new_request_id()
    chunk = b"c" * 700
    response = raw_request(
        shared.gateway.port,
        f"PUT /api/v1/invocations/{invocation} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {BILLING_KEY}\r\nx-request-id: {request_id}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2 + b"0\r\n\r\n",
    )
    assert response.status == 413
    assert response.json()["error"] == "payload_too_large"
    assert response.closed
    assert shared.standin.requests == []
    assert shared.standin.state_of(invocation) == "pending"


def test_small_chunked_body_is_accepted_and_not_forwarded(shared: Shared) -> None:
    invocation, request_id = shared.standin.add_pending(), new_request_id()
    response = put(shared.gateway, invocation, request_id,
                   content=iter([b"x" * 500, b"y" * 500]))
    assert_json_answer(response, 202)
    assert_forwarded_once(shared.standin, invocation, request_id)


# -- the order of checks ---------------------------------------------------------------------


def test_no_credential_and_bad_id_is_401_not_400(shared: Shared) -> None:
    request_id = new_request_id()
    response = put(shared.gateway, "not-a-uuid", request_id, key=None)
    assert_error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"
    assert shared.standin.requests == []
    result = assert_refused_audited(shared.gateway, request_id, outcome="unauthenticated",
                                    status=401, error="unauthenticated", team=None)
    assert result["key_id"] is None
    assert result["invocation_id"] == "not-a-uuid"


def test_unknown_key_is_401(shared: Shared) -> None:
    response = put(shared.gateway, random_id(), new_request_id(), key=keys.new_key())
    assert_error(response, 401, "unauthenticated")
    assert shared.standin.requests == []


def test_frozen_team_with_bad_id_is_403_not_400(shared: Shared) -> None:
    request_id = new_request_id()
    response = put(shared.gateway, "not-a-uuid", request_id, key=FROZEN_KEY)
    assert_error(response, 403, "forbidden")
    assert shared.standin.requests == []
    result = assert_refused_audited(shared.gateway, request_id, outcome="forbidden",
                                    status=403, error="forbidden", team="frozen")
    assert result["key_id"] == FROZEN_KEY_ID


def test_bad_id_with_oversized_body_is_400_not_413(shared: Shared) -> None:
    response = put(shared.gateway, "not-a-uuid", new_request_id(), content=b"b" * 5000)
    assert_error(response, 400, "invalid_invocation_id")


def test_unauthenticated_oversized_body_is_401_not_413(shared: Shared) -> None:
    response = put(shared.gateway, random_id(), new_request_id(), key=None,
                   content=b"b" * 5000)
    assert_error(response, 401, "unauthenticated")


# -- other routes ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PATCH"])
def test_other_method_on_cancel_path_is_405_with_allow_put(shared: Shared, method: str) -> None:
    response = shared.gateway.client.request(
        method, f"/api/v1/invocations/{random_id()}",
        headers={"Authorization": f"Bearer {BILLING_KEY}"})
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "PUT"
    assert shared.standin.requests == []


@pytest.mark.parametrize(
    "path",
    ["/", "/api/v1/invocations", f"/api/v1/invocations/{uuid.uuid4()}/extra", "/api/v1/jobs",
     "/health", "/healthz/x", f"/api/v2/invocations/{uuid.uuid4()}"],
)
def test_other_path_is_404_not_found(shared: Shared, path: str) -> None:
    response = shared.gateway.client.put(path, headers={"Authorization": f"Bearer {BILLING_KEY}"})
    assert_error(response, 404, "not_found")
    assert shared.standin.requests == []


def test_healthz_and_readyz_are_200(shared: Shared) -> None:
    for path in ("/healthz", "/readyz"):
        response = shared.gateway.client.get(path)
        assert response.status_code == 200, path
        assert response.headers.get("x-request-id")


def test_metrics_count_cancels_by_outcome_and_team(shared: Shared) -> None:
    invocation = shared.standin.add_pending()
    assert_json_answer(put(shared.gateway, invocation, new_request_id()), 202)
    put(shared.gateway, random_id(), new_request_id(), key=FROZEN_KEY)

    def counts() -> dict[tuple[str, str], float]:
        text = shared.gateway.client.get("/metrics").text
        found = re.findall(
            r'^chroma_sync_gateway_cancel_requests_total\{outcome="([a-z_]+)",team="([a-z]*)"\}'
            r" ([0-9.e+]+)$", text, re.M)
        return {(outcome, team): float(value) for outcome, team, value in found}

    wait_until(lambda: {("cancelled", "billing"), ("forbidden", "frozen")} <= set(counts()))
    assert counts()[("cancelled", "billing")] >= 1
    assert counts()[("forbidden", "frozen")] >= 1


# -- the caller's rate limit -----------------------------------------------------------------


def test_team_over_its_burst_gets_429_rate_limited_not_forwarded(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(teams=[{
        "name": "billing", "keys": [keys.stored_form(BILLING_KEY)], "scope": ["*"],
        "rate_limit": 1.0, "burst": 2}])
    invocations = [standin.add_pending() for _ in range(3)]
    request_ids = [new_request_id() for _ in range(3)]

    responses = [put(gateway, inv, rid) for inv, rid in zip(invocations, request_ids, strict=True)]

    assert [r.status_code for r in responses] == [202, 202, 429]
    assert_error(responses[2], 429, "rate_limited")
    assert int(responses[2].headers["retry-after"]) >= 1
    assert len(standin.requests) == 2
    assert standin.state_of(invocations[2]) == "pending"
    assert_refused_audited(gateway, request_ids[2], outcome="rate_limited", status=429,
                           error="rate_limited")


# -- TLS to upstream -------------------------------------------------------------------------


@pytest.fixture
def tls_standin(tmp_path: Path) -> Iterator[tuple[StandIn, Path]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca_pem = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server = StandIn(token=UPSTREAM_TOKEN, ssl_context=context)
    with server.run_in_thread():
        yield server, ca_pem


@pytest.mark.parametrize("transport", ["native", "aiohttp", "httpx"])
def test_tls_upstream_with_ca_file_cancels(
    gateway_factory: GatewayFactory, tls_standin: tuple[StandIn, Path], transport: str
) -> None:
    server, ca_pem = tls_standin
    assert server.base_url.startswith("https://localhost:")
    gateway = gateway_factory(upstream_url=server.base_url,
                              upstream={"ca_file": str(ca_pem), "transport": transport})
    invocation, request_id = server.add_pending(), new_request_id()

    assert_json_answer(put(gateway, invocation, request_id), 202)

    assert server.state_of(invocation) == "cancelled"
    assert_forwarded_once(server, invocation, request_id)


@pytest.mark.parametrize("transport", ["native", "aiohttp", "httpx"])
def test_tls_upstream_without_its_ca_is_502_and_nothing_cancelled(
    gateway_factory: GatewayFactory, tls_standin: tuple[StandIn, Path], transport: str
) -> None:
    server, _ = tls_standin
    gateway = gateway_factory(upstream_url=server.base_url,
                              upstream={"retries": 0, "transport": transport})
    invocation, request_id = server.add_pending(), new_request_id()

    message = assert_error(put(gateway, invocation, request_id), 502, "upstream_unavailable")

    assert "TLS" in message
    assert server.state_of(invocation) == "pending"
    assert server.requests == []
    assert_forward_audited(gateway, request_id, invocation, outcome="upstream_error",
                           status=502, upstream_status=None, error="upstream_unavailable")


# -- the upstream token ----------------------------------------------------------------------


def cancels_with(gateway: RunningGateway, standin: StandIn, token: str) -> bool:
    """One cancel through the gateway; True when it got 202 and carried `token`."""
    invocation = standin.add_pending()
    response = gateway.cancel(invocation)
    if response.status_code != 202:
        return False
    return standin.requests[-1].header_values("x-chroma-token") == [token]


def assert_token_logged_safely(gateway: RunningGateway, *tokens: str) -> None:
    text = gateway.stderr_path.read_text()
    for token in tokens:
        assert token not in text
    rotated = [e for e in gateway.logs() if e.get("event") == "upstream_token.rotated"]
    assert rotated, "no rotation event was logged"
    assert rotated[-1]["fingerprint"] == fingerprint(tokens[-1])


def test_rewritten_token_file_is_used_within_2_seconds(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    gateway = gateway_factory()
    assert cancels_with(gateway, standin, UPSTREAM_TOKEN)

    (tmp_path / "token").write_text(f"  {NEW_TOKEN}\n")
    standin.token = NEW_TOKEN

    wait_until(lambda: cancels_with(gateway, standin, NEW_TOKEN), timeout=2.0)
    assert_token_logged_safely(gateway, UPSTREAM_TOKEN, NEW_TOKEN)


def test_kubernetes_symlink_swap_of_the_token_is_used_within_2_seconds(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    (secret / "..2026_a").mkdir(parents=True)
    (secret / "..2026_a" / "token").write_text(UPSTREAM_TOKEN)
    os.symlink("..2026_a", secret / "..data")
    os.symlink("..data/token", secret / "token")
    gateway = gateway_factory(upstream={"token_file": str(secret / "token")})
    assert cancels_with(gateway, standin, UPSTREAM_TOKEN)

    (secret / "..2026_b").mkdir()
    (secret / "..2026_b" / "token").write_text(NEW_TOKEN)
    os.symlink("..2026_b", secret / "..data_tmp")
    os.replace(secret / "..data_tmp", secret / "..data")
    standin.token = NEW_TOKEN

    wait_until(lambda: cancels_with(gateway, standin, NEW_TOKEN), timeout=2.0)
    assert_token_logged_safely(gateway, UPSTREAM_TOKEN, NEW_TOKEN)


def test_deleted_token_file_is_503_until_a_valid_token_returns(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    gateway = gateway_factory()
    assert cancels_with(gateway, standin, UPSTREAM_TOKEN)

    (tmp_path / "token").unlink()
    wait_until(lambda: gateway.client.get("/readyz").status_code == 503)
    assert_error(gateway.client.get("/readyz"), 503, "token_unavailable")
    before = len(standin.requests)
    invocation, request_id = standin.add_pending(), new_request_id()
    assert_error(put(gateway, invocation, request_id), 503, "token_unavailable")
    assert len(standin.requests) == before
    assert standin.state_of(invocation) == "pending"
    assert_refused_audited(gateway, request_id, outcome="unavailable", status=503,
                           error="token_unavailable")

    (tmp_path / "token").write_text(NEW_TOKEN + "\n")
    standin.token = NEW_TOKEN
    wait_until(lambda: gateway.client.get("/readyz").status_code == 200)
    assert cancels_with(gateway, standin, NEW_TOKEN)


@pytest.mark.parametrize("bad", ["chroma\x07token", "chroma\ntoken", "chroma\x00token", ""],
                         ids=["bell", "newline", "nul", "empty"])
def test_invalid_token_is_503_token_unavailable(
    gateway_factory: GatewayFactory, standin: StandIn, bad: str
) -> None:
    gateway = gateway_factory(token=bad)
    invocation, request_id = standin.add_pending(), new_request_id()

    assert_error(put(gateway, invocation, request_id), 503, "token_unavailable")
    assert_error(gateway.client.get("/readyz"), 503, "token_unavailable")
    assert standin.requests == []
    assert standin.state_of(invocation) == "pending"
    if bad:
        assert bad not in gateway.stderr_path.read_text()


def test_token_loaded_at_start_is_logged_by_fingerprint_only(gateway: RunningGateway) -> None:
    loaded = [e for e in gateway.logs() if e.get("event") == "upstream_token.loaded"]
    assert [e["fingerprint"] for e in loaded] == [fingerprint(UPSTREAM_TOKEN)]
    assert UPSTREAM_TOKEN not in gateway.stderr_path.read_text()
