"""What the caller gets back for each upstream answer: the mapping table of the docs' "Calling
it" page, row by row."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from gateway.errors import GatewayError, UpstreamFailure, UpstreamRefused, error_body
from gateway.upstream import redaction
from gateway.upstream.client import UpstreamAnswer

MAX_UPSTREAM_MESSAGE = 512
WITHHELD = "[message withheld: it held the gateway's credential]"

# Statuses whose ErrorResponse is passed through, with the code used when it isn't one.
PASSED_THROUGH = {
    400: ("bad_request", "rejected_by_upstream"),
    404: ("not_found", "not_found"),
    409: ("conflict", "rejected_by_upstream"),
    412: ("not_cancelable", "not_cancelable"),
    422: ("unprocessable", "rejected_by_upstream"),
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_RETRY_AFTER = re.compile(r"[0-9]{1,10}|[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9:]{8} GMT")


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    outcome: str
    error: str | None
    upstream_status: int | None  # None: settled by a lookup after a PUT with no answer
    headers: dict[str, str] = field(default_factory=dict)


def error_response_of(body: bytes) -> dict[str, object] | None:
    """The body as an ErrorResponse (`error` and `message` strings), or None."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # deeply nested JSON raises RecursionError
        return None
    if (
        isinstance(parsed, dict)
        and isinstance(parsed.get("error"), str)
        and isinstance(parsed.get("message"), str)
    ):
        return parsed
    return None


def interpret(answer: UpstreamAnswer, *, secrets: tuple[str, ...] = ()) -> Reply:
    """Map an upstream answer to the caller's reply, or raise `UpstreamFailure`."""
    status = answer.status
    if status == 202:
        if answer.body == b"{}":  # what Chroma Sync sends: nothing to parse or to check
            return Reply(202, b"{}", "cancelled", None, status)
        try:
            parsed = json.loads(answer.body) if answer.body else {}
        except (ValueError, RecursionError):
            parsed = {}
        if not isinstance(parsed, dict) or _holds_secret(answer.body, parsed, secrets):
            parsed = {}
        # ASCII escapes: upstream JSON may hold lone surrogates, which UTF-8 can't encode.
        body = json.dumps(parsed).encode("ascii")
        return Reply(202, body, "cancelled", None, status)
    if status in PASSED_THROUGH:
        code, outcome = PASSED_THROUGH[status]
        if _passable(answer.body, secrets):
            return Reply(status, answer.body, outcome, code, status)
        return Reply(status, error_body(code, _normalized_message(status)), outcome, code, status)
    if status == 429:
        headers = {}
        retry_after = answer.headers.get("retry-after", "").strip()
        if _RETRY_AFTER.fullmatch(retry_after):
            headers["retry-after"] = retry_after
        body = (
            answer.body
            if _passable(answer.body, secrets)
            else error_body(
                "upstream_rate_limited", "Chroma Sync is limiting requests; retry later"
            )
        )
        return Reply(429, body, "rejected_by_upstream", "upstream_rate_limited", status, headers)
    if status in (401, 403):
        raise UpstreamFailure(
            f"Chroma Sync refused the gateway's own credential ({status}); "
            "the operator must check the upstream token",
            code="upstream_auth_failed",
        )
    if 500 <= status <= 599:
        raise UpstreamFailure(
            f"Chroma Sync answered {status}: {upstream_message(answer.body, secrets)}",
            code="upstream_error",
        )
    if 300 <= status <= 399:
        raise UpstreamFailure(
            f"Chroma Sync answered with a redirect ({status}); redirects are never followed",
            code="upstream_redirect",
        )
    raise UpstreamFailure(
        f"Chroma Sync answered with an unexpected status ({status})",
        code="upstream_unexpected_status",
    )


def refusal(answer: UpstreamAnswer, *, secrets: tuple[str, ...] = ()) -> GatewayError:
    """A lookup's answer other than 200, as the error the caller gets (the same table)."""
    if answer.status == 202:  # a GET never cancels: not an answer the table knows
        error: GatewayError = UpstreamFailure(
            "Chroma Sync answered a lookup with an unexpected status (202)",
            code="upstream_unexpected_status",
        )
    else:
        try:
            reply = interpret(answer, secrets=secrets)
        except UpstreamFailure as exc:
            error = exc
        else:
            error = UpstreamRefused(
                f"Chroma Sync refused the lookup ({reply.status})", status=reply.status,
                code=reply.error, outcome=reply.outcome, headers=reply.headers, body=reply.body,
            )
    error.upstream_status = answer.status
    return error


def upstream_message(body: bytes, secrets: tuple[str, ...] = ()) -> str:
    """Upstream's own message, safe to show: at most 512 characters, no control characters."""
    parsed = error_response_of(body)
    if parsed is not None:
        text = str(parsed["message"])
    else:
        text = body.decode("utf-8", "replace").strip() or "no message"
    # Control characters and lone surrogates go first, so neither can hide a secret.
    text = _CONTROL.sub("", text).encode("utf-8", "replace").decode("utf-8")
    if redaction.holds(text, secrets):
        return WITHHELD  # the whole text: a token in any form, or a piece of it, never shows
    return text[:MAX_UPSTREAM_MESSAGE]


def _passable(body: bytes, secrets: tuple[str, ...]) -> bool:
    """Whether an upstream error body may go to the caller unchanged."""
    parsed = error_response_of(body)
    return parsed is not None and not _holds_secret(body, parsed, secrets)


def _holds_secret(body: bytes, parsed: object, secrets: tuple[str, ...]) -> bool:
    """Whether a body (and its parsed JSON) holds a secret, raw or JSON-escaped, in any form
    `gateway.upstream.redaction` knows (letter case, a 16-character piece, base64, hex)."""
    if not any(secrets):
        return False
    texts = [body.decode("utf-8", "replace"), *_json_strings(parsed)]
    return any(redaction.holds(text, secrets) for text in texts)


def _json_strings(value: object) -> list[str]:
    """Every string (keys included) in a parsed JSON value; iterative, as nesting can be deep."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _normalized_message(status: int) -> str:
    return {
        400: "Chroma Sync rejected the request as malformed",
        404: "Invocation not found",
        409: "Chroma Sync reported a conflict",
        412: "Invocation is not in a cancelable state",
        422: "Chroma Sync could not process the request",
    }[status]
