"""The gateway's exception tree, and the one place errors become responses.

    GatewayError                     an answer for the caller: status, `error` code, message
    ├── RequestRejected              the caller's request is refused before anything is forwarded
    ├── ServiceUnavailable           a precondition of the gateway itself is not met (503)
    ├── UpstreamRefused              Chroma Sync refused a lookup; its answer goes to the caller
    └── UpstreamFailure              Chroma Sync could not give a usable answer (502/504)
    ConfigError                      the configuration file is unusable (exit 2 at start)

Messages are for a person and are safe to show: they never hold a secret, a stack trace or a
host path. Upstream and transport exceptions are mapped into this tree in `gateway.upstream.client`,
at one boundary, with `raise ... from exc`.
"""

from __future__ import annotations

import json


class GatewayError(Exception):
    status: int = 500
    code: str = "internal_error"
    outcome: str = "upstream_error"
    upstream_status: int | None = None  # set when Chroma Sync did answer, unusably

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        outcome: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.body = body  # an upstream ErrorResponse passed through, instead of `message`
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if outcome is not None:
            self.outcome = outcome
        self.headers = headers or {}


class RequestRejected(GatewayError):
    """Refused before forwarding: 401, 403, 400, 404, 405, 413, 429."""

    status = 400
    code = "bad_request"
    outcome = "invalid_request"


class ServiceUnavailable(GatewayError):
    """The upstream token or the audit log is not usable: 503, nothing forwarded."""

    status = 503
    outcome = "unavailable"


class UpstreamRefused(GatewayError):
    """A lookup (`get_job`, `list_jobs`) answered 4xx or 429: the caller gets that answer,
    mapped as a cancel's would be (404 stays 404), and nothing is forwarded."""


class UpstreamFailure(GatewayError):
    """Chroma Sync could not be reached or gave no usable answer."""

    status = 502
    code = "upstream_unavailable"
    outcome = "upstream_error"
    # False only when the request certainly never left (refused, connect timeout): then a
    # retry is safe. True covers "may have arrived", which reconciliation has to settle.
    sent: bool = True


class ConfigError(Exception):
    """One line naming the file, the key and the problem."""


def error_body(code: str, message: str) -> bytes:
    """An ErrorResponse as Chroma Sync writes it: `{"error": ..., "message": ...}`."""
    text = json.dumps({"error": code, "message": message}, ensure_ascii=False)
    # "replace": a lone surrogate (from an upstream's JSON) must not stop an error answer.
    return text.encode("utf-8", "replace")


def unauthenticated() -> RequestRejected:
    return RequestRejected(
        "a valid team key is required (Authorization: Bearer <key>)",
        status=401,
        code="unauthenticated",
        outcome="unauthenticated",
        headers={"www-authenticate": "Bearer"},
    )


def method_not_allowed(allow: str) -> RequestRejected:
    return RequestRejected(
        f"only {allow} is allowed on this path", status=405, code="method_not_allowed",
        headers={"allow": allow},
    )


def render(exc: GatewayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one place a `GatewayError` becomes a response: status, headers and body."""
    body = exc.body if exc.body is not None else error_body(exc.code, exc.message)
    headers = [(b"content-type", b"application/json")]
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items())
    return exc.status, headers, body
