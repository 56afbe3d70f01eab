"""`gateway.upstream.mapping`: SPEC's table of upstream answers, row by row, with plain values."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.errors import UpstreamFailure, UpstreamRefused
from gateway.upstream import mapping
from gateway.upstream.client import UpstreamAnswer

TOKEN = "unit-upstream-token-0123456789abcdef"


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> UpstreamAnswer:
    return UpstreamAnswer(status, httpx.Headers(headers or {}), body, 0.01)


def error_response(code: str = "NotFoundError", message: str = "Invocation not found") -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


def failure_of(status: int, body: bytes = b"", *, secrets: tuple[str, ...] = ()) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as caught:
        mapping.interpret(answer(status, body), secrets=secrets)
    return caught.value


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
    assert text == mapping.WITHHELD


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


# -- the whole reply, field by field (issue 17: mutants of these survived) ------------------


def test_the_202_fast_path_reply_is_exactly_a_cancel() -> None:
    assert mapping.interpret(answer(202, b"{}"), secrets=(TOKEN,)) == mapping.Reply(
        202, b"{}", "cancelled", None, 202)


def test_a_202_with_an_object_keeps_upstream_status_and_no_headers() -> None:
    reply = mapping.interpret(answer(202, b'{"id": "x"}', {"retry-after": "3"}))
    assert reply == mapping.Reply(202, b'{"id": "x"}', "cancelled", None, 202)


def test_a_202_holding_the_token_in_a_nested_list_or_a_json_escape_becomes_empty() -> None:
    nested = json.dumps({"echo": {"headers": [["x-chroma-token", TOKEN]]}}).encode()
    # Every character escaped: only the parsed JSON shows the token.
    escaped = b'{"echo": "' + "".join(f"\\u{ord(c):04x}" for c in TOKEN).encode() + b'"}'
    for body in (nested, escaped):
        assert mapping.interpret(answer(202, body), secrets=(TOKEN,)).body == b"{}"


def test_a_202_that_is_not_utf8_is_checked_for_the_token_without_a_crash() -> None:
    for body in (b"\xff\xfe{}", b"\xc3(" + TOKEN.encode()):
        assert mapping.interpret(answer(202, body), secrets=(TOKEN,)).body == b"{}"


@pytest.mark.parametrize(("status", "code", "outcome"), ROWS)
def test_a_normalized_reply_carries_its_upstream_status(
    status: int, code: str, outcome: str
) -> None:
    reply = mapping.interpret(answer(status, b"<html>"))
    assert (reply.status, reply.outcome, reply.error, reply.upstream_status) == (
        status, outcome, code, status)


def test_an_upstream_message_with_a_lone_surrogate_is_shown_without_it() -> None:
    body = b'{"error": "x", "message": "bad \\ud800 thing"}'
    assert failure_of(500, body).message == "Chroma Sync answered 500: bad ? thing"


def test_a_lookups_404_echoing_the_token_is_normalized() -> None:
    error = mapping.refusal(answer(404, error_response(message=f"no {TOKEN}")), secrets=(TOKEN,))
    assert error.body is not None and TOKEN not in error.body.decode()
    assert json.loads(error.body) == {"error": "not_found", "message": "Invocation not found"}


@pytest.mark.parametrize(("status", "code", "outcome"), ROWS)
def test_a_passed_through_reply_carries_its_upstream_status(
    status: int, code: str, outcome: str
) -> None:
    body = error_response()
    assert mapping.interpret(answer(status, body)) == mapping.Reply(
        status, body, outcome, code, status)


def test_a_429_reply_is_exact_with_its_retry_after() -> None:
    reply = mapping.interpret(answer(429, b"busy", {"retry-after": "7"}))
    assert reply == mapping.Reply(
        429, reply.body, "rejected_by_upstream", "upstream_rate_limited", 429,
        {"retry-after": "7"})
    assert json.loads(reply.body) == {
        "error": "upstream_rate_limited",
        "message": "Chroma Sync is limiting requests; retry later"}


def test_399_is_a_redirect_and_400_is_not() -> None:
    assert failure_of(399).code == "upstream_redirect"
    assert "redirect (399)" in failure_of(399).message
    assert mapping.interpret(answer(400, b"")).error == "bad_request"


@pytest.mark.parametrize("status", [400, 404, 429, 502])
def test_a_body_that_is_not_utf8_is_normalized_not_a_crash(status: int) -> None:
    body = b"\xff\xfe\x00 upstream said \xc3"
    try:
        reply = mapping.interpret(answer(status, body), secrets=(TOKEN,))
    except UpstreamFailure as exc:
        assert exc.code == "upstream_error"
        assert "upstream said" in exc.message
    else:
        assert json.loads(reply.body)["error"] == reply.error


def test_a_token_after_bytes_that_are_not_utf8_is_still_withheld() -> None:
    failure = failure_of(500, b"\xff\xfe" + TOKEN.encode(), secrets=(TOKEN,))
    assert TOKEN not in failure.message and mapping.WITHHELD in failure.message


# -- mapping.refusal: a lookup's answer other than 200 ---------------------------------------


def test_a_lookups_404_is_the_callers_404_with_upstreams_body() -> None:
    body = error_response()
    error = mapping.refusal(answer(404, body), secrets=(TOKEN,))
    assert isinstance(error, UpstreamRefused)
    assert (error.status, error.code, error.outcome, error.body, error.upstream_status) == (
        404, "not_found", "not_found", body, 404)
    assert error.message == "Chroma Sync refused the lookup (404)"


def test_a_lookups_429_keeps_retry_after() -> None:
    error = mapping.refusal(answer(429, b"", {"retry-after": "2"}))
    assert (error.status, error.code, error.headers, error.upstream_status) == (
        429, "upstream_rate_limited", {"retry-after": "2"}, 429)


def test_a_lookups_202_is_an_unexpected_status() -> None:
    error = mapping.refusal(answer(202, b"{}"))
    assert isinstance(error, UpstreamFailure)
    assert (error.status, error.code, error.upstream_status) == (
        502, "upstream_unexpected_status", 202)
    assert "(202)" in error.message


@pytest.mark.parametrize(("status", "code"), [
    (500, "upstream_error"), (401, "upstream_auth_failed"), (302, "upstream_redirect"),
    (418, "upstream_unexpected_status")])
def test_a_lookups_failure_is_mapped_by_the_table_with_its_upstream_status(
    status: int, code: str
) -> None:
    error = mapping.refusal(answer(status, b"x"))
    assert isinstance(error, UpstreamFailure)
    assert (error.status, error.code, error.upstream_status) == (502, code, status)
