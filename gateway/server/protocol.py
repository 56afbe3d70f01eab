"""Running the gateway under uvicorn: protocol choice, signals, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Generator
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.asgi import IN_PROGRESS, TIMED_OUT
from gateway.config.model import Config, ServerConfig
from gateway.errors import error_body
from gateway.server.app import Gateway

# Request line and headers together; a cancel needs well under 1 KiB, nginx allows 32 KiB.
MAX_HEAD_BYTES = 32 * 1024


class HeadTooLarge(Exception):
    """Raised from a parser callback: the request head is over `MAX_HEAD_BYTES`."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering unparseable requests in the ErrorResponse shape.

    httptools (llhttp) refuses ambiguous framing that h11 accepts, e.g. `Content-Length` with
    `Transfer-Encoding`; such a request never reaches the app, and its connection is closed.

    httptools has no limit of its own on the request head (and joins a long header value
    chunk by chunk, in quadratic time, on the event loop), so a head over `MAX_HEAD_BYTES`
    is answered 431 `headers_too_large` and its connection closed.

    uvicorn has no read timeout, and starts its keep-alive timer only after a response: a
    connection that sends nothing, or a byte a minute, would live forever. So one timer per
    request (`loop.call_later`, cancelled when the request is in) gives the head and body
    `header_timeout` seconds from the connection's start or the request's first byte; then
    408 `request_timeout` and close. Past `max_connections` open connections a new one is
    answered 503 `overloaded` and closed at once. `configured()` sets the three limits.
    """

    header_timeout: float = ServerConfig.header_timeout
    keepalive_timeout: float = ServerConfig.keepalive_timeout
    max_connections: int = ServerConfig.max_connections

    _reading_head = True  # between messages or inside a request line / header block
    _head_bytes = 0  # bytes received while the head is incomplete, counted per chunk
    _parsed_head = 0  # bytes of the request line and headers parsed so far
    _boundary = False  # a head or message ended inside the current `data_received`
    _head_refused = False
    _deadline: asyncio.TimerHandle | None = None  # the request in progress must be in by then

    @classmethod
    def configured(cls, server: ServerConfig) -> type[GatewayHttpProtocol]:
        """This protocol with the limits of `[server]` (uvicorn builds one per connection)."""
        attributes: dict[str, Any] = {
            "header_timeout": server.header_timeout,
            "keepalive_timeout": server.keepalive_timeout,
            "max_connections": server.max_connections,
        }
        return type(cls.__name__, (cls,), attributes)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.keepalive_timeout  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.connections.discard(self)
            self.logger.warning("Too many open connections.")
            self._send_raw_error(503, b"Service Unavailable", "overloaded",
                                 f"the gateway has {self.max_connections} connections open; "
                                 "retry later")
            return
        # Also bounds a connection that never sends a byte.
        self._deadline = self.loop.call_later(self.header_timeout, self._request_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _request_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The gateway stopped reading (a pipelined request waits its turn): not the
            # caller's stall; its time starts again once reading resumes.
            self._deadline = self.loop.call_later(self.header_timeout, self._request_timed_out)
            return
        cycle = self.cycle
        if not self._reading_head and cycle is not None and not cycle.response_started:
            # The app waits for the body: it sees a disconnect marked as a timeout, and
            # records 408; the answer is written here, as the app's would be dropped.
            self.scope[TIMED_OUT] = True  # type: ignore[literal-required]
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # An answer is on its way: a 408 now would be read as (or inside) it.
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        elif cycle is not None and not self._reading_head:
            # Answered already (e.g. a 404 before its body): just stop the dribble.
            self.transport.close()
            return
        self.logger.info("Request timed out.")
        self._send_raw_error(408, b"Request Timeout", "request_timeout",
                             f"the request did not arrive within {self.header_timeout:g} s")

    def data_received(self, data: bytes) -> None:
        self._boundary = False
        if self._deadline is None and self._reading_head:
            # The first bytes after a response (possibly only CRLFs, which start no message).
            self._deadline = self.loop.call_later(self.header_timeout, self._request_timed_out)
        super().data_received(data)
        if not self._reading_head or self._boundary or self.transport.is_closing():
            return
        # A header still incomplete is buffered by httptools, unseen by `on_header`.
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_refused = True
            self.logger.warning("Request head too large.")
            self.send_400_response("Request head too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_head = 0
        if self._deadline is None:  # a request pipelined behind one that just completed
            self._deadline = self.loop.call_later(self.header_timeout, self._request_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_head(len(name) + len(value) + 4)

    def _count_head(self, size: int) -> None:
        self._parsed_head += size
        if self._parsed_head > MAX_HEAD_BYTES:
            self._head_refused = True
            raise HeadTooLarge()  # the parser stops; `data_received` answers 431

    def on_headers_complete(self) -> None:
        self._reading_head, self._head_bytes, self._boundary = False, 0, True
        super().on_headers_complete()
        self.scope[IN_PROGRESS] = self.server_state.tasks  # type: ignore[literal-required]
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # the one just made
            cycle.transport = OneWriteResponses(self.transport, cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes, self._boundary = True, 0, True
        self._disarm()

    def send_400_response(self, msg: str) -> None:
        cycle = self.cycle
        if self._reading_head:  # a new request's head: earlier responses must all be out
            busy = cycle is not None and not cycle.response_complete
        else:  # the current request's body: only its own response may not have begun
            busy = bool(self.pipeline) or cycle.response_started
        if busy:
            # An error written now would be read as the answer to an earlier request, or
            # land inside one: read no more, and close once the responses due are out.
            assert cycle is not None
            if cycle.response_complete:
                self.transport.close()
            else:
                cycle.keep_alive = False
                self.flow.pause_reading()
            return
        if self._head_refused:
            self._send_raw_error(431, b"Request Header Fields Too Large", "headers_too_large",
                                 f"the request head is over {MAX_HEAD_BYTES} bytes")
        else:
            self._send_raw_error(400, b"Bad Request", "bad_request",
                                 "malformed HTTP request: " + msg.rstrip("."))

    def _send_raw_error(self, status: int, reason: bytes, code: str, message: str) -> None:
        body = error_body(code, message)
        head = (
            b"HTTP/1.1 " + str(status).encode("ascii") + b" " + reason + b"\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"x-request-id: " + str(uuid.uuid4()).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()


class OneWriteResponses:
    """The transport as one request's response cycle sees it: the response head is held back
    and written with the body, in one `write`.

    uvicorn writes a head and its body apart: two syscalls, and two segments for the caller
    to wait for. A head is held only when a body of a known, non-zero length follows (the
    cycle has read Content-Length); anything else, and everything after, is written at once.
    Closing writes what is held first, so nothing the cycle wrote is ever lost.
    """

    __slots__ = ("_before_head", "_cycle", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._held: bytes | None = None
        self._before_head = True  # the response head is not written yet

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
            return
        cycle = self._cycle
        if self._before_head and cycle.response_started:  # (a 100 Continue comes before)
            self._before_head = False
            if (cycle.chunked_encoding is False and cycle.expected_content_length > 0
                    and cycle.scope["method"] != "HEAD"):
                self._held = data  # the head: its body comes next
                return
        self._transport.write(data)

    def close(self) -> None:
        if self._held is not None:
            self._transport.write(self._held)
            self._held = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CannotListen(Exception):
    """A listening socket could not be made: one line, for `serve` to print (exit 1)."""


def listen(host: str, port: int, what: str = "listen") -> socket.socket:
    """Bind before anything starts, so a port in use is one line and exit 1, not a half start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or "invalid address"
        raise CannotListen(f"can't {what} on {host}:{port} ({reason})") from None
    except (OverflowError, UnicodeError):
        sock.close()
        raise CannotListen(f"can't {what} on {host}:{port} (invalid address)") from None
    return sock


class GatewayServer(uvicorn.Server):
    """A uvicorn server that exits 0 after a graceful SIGTERM instead of re-raising it.

    SIGHUP reloads the config's `[[teams]]` (see `gateway.server.reload`) instead of killing the
    process. With `metrics` (a second uvicorn server on its own socket), `/metrics` is served
    there as well, started and stopped with this one.
    """

    def __init__(
        self, config: uvicorn.Config, on_ready: Callable[[], None] | None = None, *,
        on_hangup: Callable[[], None] | None = None,
        on_exit: Callable[[], None] | None = None,
        metrics: tuple[uvicorn.Server, socket.socket] | None = None,
    ):
        super().__init__(config)
        self._on_ready = on_ready
        self._on_hangup = on_hangup
        self._on_exit = on_exit
        self._metrics = metrics

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._on_exit is not None:
            self._on_exit()  # long work in flight (a bulk cancel) starts nothing new

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        if self._on_hangup is not None:
            on_hangup = self._on_hangup
            original[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: on_hangup())
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.started and self._metrics is not None:
            metrics_server, metrics_socket = self._metrics
            # What `uvicorn.Server.serve` would do first; this one runs inside our loop.
            metrics_server.config.load()
            metrics_server.lifespan = metrics_server.config.lifespan_class(metrics_server.config)
            await metrics_server.startup(sockets=[metrics_socket])
        if self.started and self._on_ready is not None:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._metrics is not None and self._metrics[0].started:
            await self._metrics[0].shutdown(sockets=[self._metrics[1]])
        await super().shutdown(sockets=sockets)


def uvicorn_config(gateway: Gateway, config: Config, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        gateway.router,  # the lifespan runs in its plain app: Gateway.start and stop
        host=host,
        port=port,
        http=GatewayHttpProtocol.configured(config.server),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        ws="none",
        lifespan="on",
        # The audit log records the socket's peer; X-Forwarded-For is never trusted.
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(config.server.grace_period)),
    )


def serve(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[Gateway, GatewayServer], None] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean drain, 1 when it could not start.

    Raises `CannotListen` when a port can't be bound: before anything has started.
    """
    gateway = Gateway.from_config(config)
    gateway.audit.lock()  # one writer per chain: refuse to start before binding a port
    host = host or config.server.host
    port = config.server.port if port is None else port
    sockets = [listen(host, port)]
    metrics = None
    try:
        if config.server.metrics_port is not None:
            metrics_socket = listen(config.server.metrics_host, config.server.metrics_port,
                                    "serve metrics")
            metrics = (uvicorn.Server(metrics_config(gateway, config)), metrics_socket)
    except CannotListen:
        sockets[0].close()
        raise
    server = GatewayServer(uvicorn_config(gateway, config, host, port),
                           on_hangup=lambda: gateway.reloader.request_threadsafe("sighup"),
                           on_exit=gateway.drain,
                           metrics=metrics)
    if on_ready is not None:
        server._on_ready = lambda: on_ready(gateway, server)
    # What start-up made (modules, config, the app) lives as long as the process: out of the
    # collector's sight, a full collection under load walks only what requests made (it
    # walked ~40,000 objects, 4 to 7 ms, in which no request moved).
    gc.collect()
    gc.freeze()
    server.run(sockets=sockets)
    return 0 if server.started else 1


def metrics_config(gateway: Gateway, config: Config) -> uvicorn.Config:
    """The `server.metrics_port` listener: `/metrics` alone (other paths are 404s)."""
    app = Starlette(routes=[Route("/metrics", gateway.router.metrics_endpoint, methods=["GET"])])
    return uvicorn.Config(
        app, http=GatewayHttpProtocol, ws="none", lifespan="off", proxy_headers=False,
        server_header=False, access_log=False, log_config=None, timeout_graceful_shutdown=1,
    )


def bound_port(server: uvicorn.Server) -> int:
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("server is not listening")
