"""gateway.errors: the exception tree's defaults, `render()` and the ErrorResponse body."""

from __future__ import annotations

import json

import pytest

from gateway.audit.writer import AuditUnavailable
from gateway.errors import (
    GatewayError,
    RequestRejected,
    ServiceUnavailable,
    UpstreamFailure,
    error_body,
    render,
    unauthenticated,
)


def test_render_gives_status_json_content_type_and_an_error_response_body() -> None:
    exc = RequestRejected("invocation_id must be a UUID", status=400,
                          code="invalid_invocation_id", outcome="invalid_request")
    status, headers, body = render(exc)
    assert status == 400
    assert headers == [(b"content-type", b"application/json")]
    assert json.loads(body) == {"error": "invalid_invocation_id",
                                "message": "invocation_id must be a UUID"}


def test_render_adds_www_authenticate_for_unauthenticated() -> None:
    status, headers, body = render(unauthenticated())
    assert status == 401
    assert (b"www-authenticate", b"Bearer") in headers
    assert (b"content-type", b"application/json") in headers
    assert json.loads(body)["error"] == "unauthenticated"


def test_unauthenticated_is_a_401_request_rejected_with_outcome_unauthenticated() -> None:
    exc = unauthenticated()
    assert isinstance(exc, RequestRejected)
    assert (exc.status, exc.code, exc.outcome) == (401, "unauthenticated", "unauthenticated")
    assert "Bearer" in exc.message


def test_render_passes_extra_headers_after_the_content_type() -> None:
    exc = RequestRejected("slow down", status=429, code="rate_limited", outcome="rate_limited",
                          headers={"retry-after": "3", "allow": "PUT"})
    status, headers, _ = render(exc)
    assert status == 429
    assert headers[0] == (b"content-type", b"application/json")
    assert headers[1:] == [(b"retry-after", b"3"), (b"allow", b"PUT")]


def test_render_does_not_share_header_lists_between_calls() -> None:
    exc = unauthenticated()
    _, first, _ = render(exc)
    first.append((b"connection", b"close"))  # what the app does for a 413
    _, second, _ = render(exc)
    assert (b"connection", b"close") not in second
    assert exc.headers == {"www-authenticate": "Bearer"}


def test_render_body_holds_exactly_error_and_message() -> None:
    _, _, body = render(GatewayError("boom"))
    assert list(json.loads(body)) == ["error", "message"]


@pytest.mark.parametrize("message", [
    'a "quoted" word',
    "back\\slash",
    "tab\there",
    "line\nbreak\r\n{\"error\": \"forged\"}",
    "nul\x00byte",
    "caf\u00e9 \u2603 \U0001f600 \u65e5\u672c",
    "\u2028line separator\u2029",
    "",
])
def test_error_body_is_one_line_of_utf8_json_that_round_trips(message: str) -> None:
    body = error_body("bad_request", message)
    assert b"\n" not in body and b"\r" not in body
    assert json.loads(body.decode("utf-8")) == {"error": "bad_request", "message": message}


def test_error_body_escapes_quotes_and_control_characters() -> None:
    body = error_body('co"de', 'say "hi"\n')
    assert body == b'{"error": "co\\"de", "message": "say \\"hi\\"\\n"}'


def test_error_body_writes_non_ascii_as_utf8() -> None:
    body = error_body("x", "caf\u00e9")
    assert body == '{"error": "x", "message": "caf\u00e9"}'.encode()
    assert b"\\u" not in body


def test_error_body_of_a_lone_surrogate_is_still_valid_utf8_json() -> None:
    body = error_body("upstream_error", "Chroma Sync answered 500: \ud800")
    assert json.loads(body.decode("utf-8"))["error"] == "upstream_error"


# -- the tree's defaults, as SPEC.md names them ------------------------------------------


def test_gateway_error_defaults_to_500_internal_error() -> None:
    exc = GatewayError("oops")
    assert (exc.status, exc.code, exc.outcome, exc.headers) == (
        500, "internal_error", "upstream_error", {})
    assert exc.upstream_status is None
    assert str(exc) == exc.message == "oops"


def test_service_unavailable_defaults_to_503_outcome_unavailable() -> None:
    exc = ServiceUnavailable("no token", code="token_unavailable")
    assert isinstance(exc, GatewayError)
    assert (exc.status, exc.code, exc.outcome) == (503, "token_unavailable", "unavailable")


def test_audit_unavailable_is_a_503_audit_unavailable_service_unavailable() -> None:
    exc = AuditUnavailable()
    assert isinstance(exc, ServiceUnavailable)
    assert (exc.status, exc.code, exc.outcome) == (503, "audit_unavailable", "unavailable")
    status, _, body = render(exc)
    assert status == 503
    assert json.loads(body)["error"] == "audit_unavailable"


def test_upstream_failure_defaults_to_502_upstream_unavailable_outcome_upstream_error() -> None:
    exc = UpstreamFailure("connection refused")
    assert isinstance(exc, GatewayError)
    assert (exc.status, exc.code, exc.outcome) == (502, "upstream_unavailable", "upstream_error")


def test_upstream_failure_takes_504_upstream_timeout_when_told() -> None:
    exc = UpstreamFailure("too slow", status=504, code="upstream_timeout")
    assert (exc.status, exc.code, exc.outcome) == (504, "upstream_timeout", "upstream_error")


def test_overrides_are_per_instance_not_per_class() -> None:
    RequestRejected("x", status=403, code="forbidden", outcome="forbidden")
    ServiceUnavailable("y", code="token_unavailable")
    exc = UpstreamFailure("z", status=504, code="upstream_timeout")
    exc.upstream_status = 500
    assert (RequestRejected.status, RequestRejected.code) == (400, "bad_request")
    assert ServiceUnavailable.code == "internal_error"
    assert (UpstreamFailure.status, UpstreamFailure.code) == (502, "upstream_unavailable")
    assert UpstreamFailure.upstream_status is None


def test_request_rejected_defaults_to_a_caller_side_outcome() -> None:
    exc = RequestRejected("refused")
    assert exc.outcome == "invalid_request"
    assert 400 <= exc.status < 500
