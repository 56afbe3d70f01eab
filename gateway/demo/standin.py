"""A stand-in for Chroma Sync: a small, real HTTP/1.1 server on loopback.

Used by the `demo` command, the end-to-end tests and the benchmark. Requests are parsed with
h11; responses are written as raw bytes, one `transport.write` each, so a test can also make
the server misbehave (stall, reset, send garbage). By default it answers like Chroma Sync's
cancel operation:

- `GET /health` is 200 `{}` without authentication;
- anything else needs exactly one `x-chroma-token` equal to `token`, else 401;
- `PUT /api/v1/invocations/{uuid}`: 202 `{}` for a pending invocation (which becomes
  `cancelled`), 412 for a known one in any other state, 404 for an unknown one, 400 when the id
  is not a UUID;
- `GET /api/v1/invocations/{uuid}` (`get_job`): 200 and the `Job`, 404 for an unknown one;
- `GET /api/v1/invocations` (`list_jobs`): the Jobs matching `source_id` or `database_name`
  (not both: 400), `source_type` and `status`, ordered by `created_at` (`order_by`, default
  `DESC`), paged by `limit` (default 100) and `offset`; 404 for an unknown `source_id`;
- any other route is 404. Every error body is an ErrorResponse `{"error", "message"}`.

A `behaviour` callable sees each request first and may return an action to take instead;
returning None falls through to a script, then to the default semantics above.
`script(invocation_id, steps)` makes one invocation misbehave: each PUT of it takes the next
step (an action, or `TakeEffect(action)`: the cancel takes effect, then the action replaces the
answer), and the default semantics come back when the steps run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import http
import json
import logging
import re
import socket
import ssl
import struct
import threading
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import h11

__all__ = [
    "Action",
    "Behaviour",
    "Close",
    "Delay",
    "Raw",
    "ReceivedRequest",
    "Reset",
    "Respond",
    "Stall",
    "StandIn",
    "TakeEffect",
    "json_response",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
_INVOCATION_PREFIX = "/api/v1/invocations/"
_LIST_PATH = "/api/v1/invocations"
# Hyphenated 8-4-4-4-12 or 32 plain hex digits, either case: what Chroma's UUID parser takes.
_UUID_RE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}", re.I
)
_JSON: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)


@dataclass
class StandInJob:
    """One invocation the stand-in knows: what `get_job` and `list_jobs` describe."""

    id: str
    state: str  # pending, processing, complete, failed or cancelled
    database: str
    collection: str
    source_id: str | None
    kind: str  # github, web_scrape or s3
    created_at: str
    order: int  # creation order, for order_by

    def as_json(self) -> dict[str, Any]:
        status: Any = self.state
        if self.state == "complete":
            status = {"complete": {"finished_at": self.created_at, "duration_ms": 1200}}
        elif self.state == "failed":
            status = {"failed": {"error": "the source could not be fetched"}}
        kinds: dict[str, Any] = {
            "github": {"github": {"git_ref_identifier": {"branch": "main"}}},
            "web_scrape": {"web_scrape": {}},
            "s3": {"s3": {"bucket_name": "chroma-sync-demo", "object_key": "docs/"}},
        }
        metadata = {"database_name": self.database, "collection_name": self.collection,
                    **kinds[self.kind]}
        return {"id": self.id, "source_id": self.source_id, "status": status,
                "created_at": self.created_at, "metadata": metadata}


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the stand-in received it."""

    method: str
    target: str  # raw request target as sent, query string included
    headers: tuple[tuple[str, str], ...]  # names lowercased, in order, values latin-1
    body: bytes
    http_version: str = "1.1"

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (any case), in the order received."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]


@dataclass(frozen=True)
class Respond:
    """Send a response. `content-length` is added unless set already or `chunked` is true."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = _JSON
    reason: str | None = None
    chunked: bool = False  # send the body as one chunk with `transfer-encoding: chunked`


@dataclass(frozen=True)
class Stall:
    """Read the request, send nothing for `seconds`, then close the connection."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Close the connection abruptly: a TCP RST (SO_LINGER 0)."""


@dataclass(frozen=True)
class Raw:
    """Write `data` verbatim; close afterwards unless `close` is false."""

    data: bytes
    close: bool = True


@dataclass(frozen=True)
class Close:
    """Close the connection without answering."""


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` without blocking the stand-in, then take `then`; with None, the default
    answer, decided after the wait (a slow but otherwise normal upstream)."""

    seconds: float
    then: Action | None = None


Action = Respond | Stall | Reset | Raw | Close | Delay
Behaviour = Callable[[ReceivedRequest], Action | None]


@dataclass(frozen=True)
class TakeEffect:
    """A scripted PUT's step: the cancel takes effect (a pending invocation becomes
    `cancelled`), then `then` replaces the answer (`Stall`, `Reset`, a late `Delay`, ...)."""

    then: Action


Step = Action | TakeEffect


def json_response(status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> Respond:
    """A JSON response; `headers` come after `content-type: application/json`."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    return Respond(status, body, _JSON + tuple(headers))


def _error(status: int, error: str, message: str) -> Respond:
    return json_response(status, {"error": error, "message": message})


# The default answers, built once (and encoded once, through the cache on `_encode`).
_OK = json_response(200, {})
_ACCEPTED = json_response(202, {})
_BAD_ID = _error(400, "InvalidArgumentError", "invocation_id must be a UUID")
_UNAUTHORIZED = _error(401, "Unauthorized", "Missing or invalid x-chroma-token")
_NO_ROUTE = _error(404, "NotFoundError", "Not found")
_NO_INVOCATION = _error(404, "NotFoundError", "Invocation not found")
_NOT_CANCELABLE = _error(412, "InvalidArgumentError", "Invocation is not in a cancelable state")


@functools.lru_cache(maxsize=64)
def _encode(response: Respond, close: bool) -> bytes:
    """The whole response as one byte string, so it goes out in a single write."""
    reason = response.reason
    if reason is None:
        try:
            reason = http.HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
    names = {name.lower() for name, _ in response.headers}
    headers = list(response.headers)
    body = response.body
    if response.chunked:
        if "transfer-encoding" not in names:
            headers.append(("transfer-encoding", "chunked"))
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif "content-length" not in names and not (
        response.status < 200 or response.status in (204, 304)
    ):
        headers.append(("content-length", str(len(body))))
    if close and "connection" not in names:
        headers.append(("connection", "close"))
    lines = [f"HTTP/1.1 {response.status} {reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body


def _canonical(invocation_id: str) -> str | None:
    if _UUID_RE.fullmatch(invocation_id) is None:
        return None
    return str(uuid.UUID(invocation_id))


def _wants_close(request: ReceivedRequest) -> bool:
    if request.http_version != "1.1":
        return True
    tokens = ",".join(request.header_values("connection")).lower().split(",")
    return "close" in (token.strip() for token in tokens)


def _parser() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)


class _Connection(asyncio.Protocol):
    """One client connection: h11 parses, the stand-in decides, raw bytes go out."""

    def __init__(self, standin: StandIn) -> None:
        self._standin = standin
        self._h11 = _parser()
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._done = False  # closing, reset or stalled: no more requests
        self._delayed = False  # a Delay is running: the next request waits for its answer
        self._stall: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._standin._connections.add(self)
        self._standin.connection_count += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._standin._connections.discard(self)
        if self._stall is not None:
            self._stall.cancel()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._done and not self._delayed:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._h11.receive_data(data)
        self._process_guarded()

    def _process_guarded(self) -> None:
        try:
            self._process()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            self._send(_error(status, "InvalidArgumentError", f"Bad request: {exc}"), close=True)

    def eof_received(self) -> bool | None:
        if not self._done:
            self._h11.receive_data(b"")
            with contextlib.suppress(h11.RemoteProtocolError):
                self._process()
        return None  # close our side too

    def _process(self) -> None:
        while not self._done and not self._delayed:
            event = self._h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request, self._body, self._body_size = event, [], 0
                if self._h11.they_are_waiting_for_100_continue:
                    continue_ = h11.InformationalResponse(status_code=100, headers=[])
                    self._write(self._h11.send(continue_) or b"")
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > MAX_BODY_BYTES:
                    self._send(_error(413, "InvalidArgumentError", "Body too large"), close=True)
                    return
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._complete()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()

    def _complete(self) -> None:
        head = self._request
        assert head is not None
        request = ReceivedRequest(
            method=head.method.decode("ascii"),
            target=head.target.decode("latin-1"),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
            body=b"".join(self._body),
            http_version=head.http_version.decode("ascii"),
        )
        self._request, self._body = None, []
        self._standin._record(request)
        try:
            action = self._standin._decide(request)
        except Exception as exc:
            logger.exception("stand-in behaviour failed")
            action = _error(500, "InternalError", f"stand-in behaviour raised {exc!r}")
        self._act(action, request, close=_wants_close(request))

    def _act(self, action: Action, request: ReceivedRequest, *, close: bool) -> None:
        if isinstance(action, Respond):
            has_close = any(
                n.lower() == "connection" and "close" in v.lower() for n, v in action.headers
            )
            self._send(action, close=close or has_close)
        elif isinstance(action, Raw):
            self._write(action.data)
            self._finish_cycle(close=close or action.close)
        elif isinstance(action, Stall):
            self._done = True
            assert self._transport is not None
            self._transport.pause_reading()
            self._stall = asyncio.get_running_loop().create_task(self._stall_then_close(action))
        elif isinstance(action, Delay):
            self._delayed = True
            assert self._transport is not None
            self._transport.pause_reading()
            self._stall = asyncio.get_running_loop().create_task(
                self._delay_then_act(action, request, close=close)
            )
        elif isinstance(action, Reset):
            self._reset()
        else:
            self._close()

    def _send(self, response: Respond, *, close: bool) -> None:
        self._write(_encode(response, close))
        self._finish_cycle(close=close)

    def _finish_cycle(self, *, close: bool) -> None:
        """Close, or start a fresh parser on the bytes after this request (keep-alive).

        A fresh parser is cheaper than telling h11 about a response it never wrote.
        """
        if close or self._h11.their_state is not h11.DONE:
            self._close()
            return
        leftover, eof = self._h11.trailing_data
        self._h11 = _parser()
        if leftover:
            self._h11.receive_data(leftover)
        if eof:
            self._h11.receive_data(b"")

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        self._done = True
        if self._transport is not None:
            self._transport.close()

    def _reset(self) -> None:
        self._done = True
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    async def _delay_then_act(self, delay: Delay, request: ReceivedRequest, *, close: bool) -> None:
        await asyncio.sleep(delay.seconds)
        self._delayed = False
        if self._done:
            return
        then = delay.then if delay.then is not None else self._standin._chroma(request)
        self._act(then, request, close=close)
        if not self._done and not self._delayed and self._transport is not None:
            self._transport.resume_reading()
            self._process_guarded()  # a request pipelined meanwhile

    async def _stall_then_close(self, stall: Stall) -> None:
        await asyncio.sleep(stall.seconds)
        self._close()

    def abort(self) -> None:
        self._done = True
        if self._stall is not None:
            self._stall.cancel()
        if self._transport is not None:
            self._transport.abort()


class StandIn:
    """The stand-in server. Use `async with`, `start()`/`close()` or `run_in_thread()`."""

    def __init__(
        self,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        behaviour: Behaviour | None = None,
        max_recorded: int = 10_000,
    ) -> None:
        self.token = token  # settable, e.g. to make upstream refuse the gateway's token
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.behaviour = behaviour
        self.max_recorded = max_recorded
        self.requests: list[ReceivedRequest] = []  # oldest dropped past max_recorded
        self.connection_count = 0  # connections accepted so far
        self._jobs: dict[str, StandInJob] = {}
        self._sources: set[str] = set()
        self._scripts: dict[str, deque[Step]] = {}  # per invocation: steps for its next PUTs
        self._lock = threading.Lock()  # add_pending() may run on another thread
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.abort()
        abort_clients = getattr(server, "abort_clients", None)  # Python 3.13+
        if abort_clients is not None:
            abort_clients()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)

    async def __aenter__(self) -> StandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        if self.ssl_context is not None:
            host = "localhost"
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_context is not None else 'http'}://{host}:{self.port}"

    def add_pending(
        self, invocation_id: str | None = None, *, database: str = "docs",
        collection: str = "handbook", source_id: str | None = None, kind: str = "github",
    ) -> str:
        """Register a pending invocation (a random UUID4 if none is given); return its id."""
        return self.add_invocation(invocation_id, state="pending", database=database,
                                   collection=collection, source_id=source_id, kind=kind)

    def add_invocation(
        self, invocation_id: str | None = None, *, state: str, database: str = "docs",
        collection: str = "handbook", source_id: str | None = None, kind: str = "github",
    ) -> str:
        """Register an invocation in any state (e.g. "processing", which can't be cancelled)."""
        canonical = _canonical(invocation_id or str(uuid.uuid4()))
        if canonical is None:
            raise ValueError(f"not a UUID: {invocation_id!r}")
        source = _canonical(source_id) if source_id else None
        with self._lock:
            order = len(self._jobs)
            created = f"2026-11-20T09:{order // 60 % 60:02d}:{order % 60:02d}.{order:06d}Z"
            self._jobs[canonical] = StandInJob(
                canonical, state, database, collection, source, kind, created, order)
            if source:
                self._sources.add(source)
        return canonical

    def add_source(self, source_id: str | None = None) -> str:
        """Register a source with no invocations (`list_jobs` answers it with `[]`)."""
        canonical = _canonical(source_id or str(uuid.uuid4()))
        if canonical is None:
            raise ValueError(f"not a UUID: {source_id!r}")
        with self._lock:
            self._sources.add(canonical)
        return canonical

    def state_of(self, invocation_id: str) -> str | None:
        canonical = _canonical(invocation_id)
        with self._lock:
            job = None if canonical is None else self._jobs.get(canonical)
            return None if job is None else job.state

    def set_state(self, invocation_id: str, state: str) -> None:
        """Change a known invocation's state (e.g. it finished, or someone else cancelled it)."""
        canonical = _canonical(invocation_id)
        with self._lock:
            self._jobs[canonical or ""].state = state

    def job_of(self, invocation_id: str) -> dict[str, Any] | None:
        """The `Job` JSON `get_job` would answer, or None."""
        canonical = _canonical(invocation_id)
        with self._lock:
            job = None if canonical is None else self._jobs.get(canonical)
            return None if job is None else job.as_json()

    def script(self, invocation_id: str, steps: Iterable[Step]) -> None:
        """The next PUTs of `invocation_id` take these steps, in order, one each."""
        canonical = _canonical(invocation_id)
        if canonical is None:
            raise ValueError(f"not a UUID: {invocation_id!r}")
        with self._lock:
            self._scripts[canonical] = deque(steps)

    def _scripted(self, request: ReceivedRequest) -> Action | None:
        if request.method != "PUT" or not self._scripts:
            return None
        canonical = _canonical(request.target.partition("?")[0][len(_INVOCATION_PREFIX):])
        with self._lock:
            steps = self._scripts.get(canonical or "")
            if not steps:
                return None
            step = steps.popleft()
            if not isinstance(step, TakeEffect):
                return step
            job = self._jobs.get(canonical or "")
            if job is not None and job.state == "pending":
                job.state = "cancelled"
            return step.then

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[StandIn]:
        """Run on a fresh event loop in a daemon thread for the `with` block."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="standin", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.close(), loop).result(10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
                loop.close()

    def _record(self, request: ReceivedRequest) -> None:
        self.requests.append(request)
        if len(self.requests) > self.max_recorded:
            del self.requests[: len(self.requests) - self.max_recorded]

    def _decide(self, request: ReceivedRequest) -> Action:
        behaviour = self.behaviour
        if behaviour is not None:
            action = behaviour(request)
            if action is not None:
                return action
        return self._scripted(request) or self._chroma(request)

    def _chroma(self, request: ReceivedRequest) -> Respond:
        """What Chroma Sync itself answers."""
        path = request.target.partition("?")[0]
        if path == "/health":
            return _OK if request.method == "GET" else _NO_ROUTE
        tokens = request.header_values("x-chroma-token")
        if len(tokens) != 1 or not hmac.compare_digest(
            tokens[0].encode("latin-1"), self.token.encode()
        ):
            return _UNAUTHORIZED
        if path == _LIST_PATH and request.method == "GET":
            return self._list_jobs(request.target.partition("?")[2])
        raw_id = path[len(_INVOCATION_PREFIX) :]
        if request.method not in ("PUT", "GET") or not path.startswith(_INVOCATION_PREFIX) or (
            "/" in raw_id
        ):
            return _NO_ROUTE
        canonical = _canonical(raw_id)
        if canonical is None:
            return _BAD_ID
        with self._lock:
            job = self._jobs.get(canonical)
            if job is None:
                return _NO_INVOCATION
            if request.method == "GET":
                return json_response(200, job.as_json())
            state = job.state
            if state == "pending":
                job.state = "cancelled"
        return _ACCEPTED if state == "pending" else _NOT_CANCELABLE

    def _list_jobs(self, query: str) -> Respond:
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        source = params.get("source_id")
        database = params.get("database_name")
        if source is not None and database is not None:
            return _error(400, "InvalidArgumentError",
                          "source_id and database_name can't be used together")
        try:
            limit = int(params.get("limit", "100"))
            offset = int(params.get("offset", "0"))
        except ValueError:
            return _error(400, "InvalidArgumentError", "limit and offset must be integers")
        order = params.get("order_by", "DESC")
        if limit < 0 or offset < 0 or order not in ("ASC", "DESC"):
            return _error(400, "InvalidArgumentError", "bad limit, offset or order_by")
        with self._lock:
            if source is not None:
                source = _canonical(source)
                if source is None or source not in self._sources:
                    return _error(404, "NotFoundError", "Source not found")
            jobs = [
                job for job in self._jobs.values()
                if (source is None or job.source_id == source)
                and (database is None or job.database == database)
                and ("status" not in params or job.state == params["status"])
                and ("source_type" not in params or job.kind == params["source_type"])
            ]
            jobs.sort(key=lambda job: job.order, reverse=order == "DESC")
            page = [job.as_json() for job in jobs[offset:offset + limit]]
        return json_response(200, page)
