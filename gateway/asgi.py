"""The ASGI boundary: the types every route handler uses, what one request has become so far,
reading a small body, and the one way a response leaves (`send_response`, `send_error`).

Errors become responses in `gateway.errors.render`; this module only writes them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, RequestRejected, render

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Set in the scope by the protocol when the body did not arrive within server.header_timeout.
TIMED_OUT = "gateway.timed_out"
# Set in the scope by the protocol: the live collection of requests in progress (uvicorn's
# tasks, every connection's). A cancel that is the only one writes its attempt record at once.
IN_PROGRESS = "gateway.in_progress"
# Set in the scope by a plain route that answers with an error: its code, for the access log.
ERROR = "gateway.error"


class ClientGone(Exception):
    """The caller disconnected before its request was complete: nothing is forwarded."""


@dataclass
class Exchange:
    """What one request has become so far; read by the access log and the audit record."""

    request_id: str
    route: str = "other"
    status: int = 0
    team: str | None = None
    error: str | None = None  # the `error` code answered, if any


async def read_body(
    headers: list[tuple[bytes, bytes]], receive: Receive, *, limit: int,
    too_large: RequestRejected,
) -> bytes:
    """The whole body, at most `limit` bytes (else `too_large`); a disconnect is `ClientGone`."""
    for name, value in headers:
        if name == b"content-length":
            # Digits only (framing was checked); length first, as int() refuses 4300+ digits.
            digits = value.strip().lstrip(b"0")
            if len(digits) > 9 or int(digits or b"0") > limit:
                raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """A whole response: JSON unless said otherwise, with its length."""
    names = {name for name, _ in headers}
    if b"content-type" not in names:
        headers = [(b"content-type", b"application/json"), *headers]
    headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: GatewayError, *, close: bool = False) -> None:
    """An ErrorResponse; `close` asks the server to close the connection after it."""
    status, headers, body = render(exc)
    if close:
        headers.append((b"connection", b"close"))
    await send_response(send, status, body, headers)
