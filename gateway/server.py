"""Running the gateway under uvicorn: protocol choice, signals, graceful drain."""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import threading
import uuid
from collections.abc import Callable, Generator

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import Gateway
from gateway.config import Config
from gateway.errors import error_body


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering unparseable requests in the ErrorResponse shape.

    httptools (llhttp) refuses ambiguous framing that h11 accepts, e.g. `Content-Length` with
    `Transfer-Encoding`; such a request never reaches the app, and its connection is closed.
    """

    def send_400_response(self, msg: str) -> None:
        body = error_body("bad_request", "malformed HTTP request: " + msg.rstrip("."))
        head = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"x-request-id: " + str(uuid.uuid4()).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()


class GatewayServer(uvicorn.Server):
    """A uvicorn server that exits 0 after a graceful SIGTERM instead of re-raising it."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None = None):
        super().__init__(config)
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.started and self._on_ready is not None:
            self._on_ready()


def uvicorn_config(gateway: Gateway, config: Config, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        gateway,
        host=host,
        port=port,
        http=GatewayHttpProtocol,
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
    """Serve until SIGTERM or SIGINT; 0 after a clean drain, 1 when it could not start."""
    gateway = Gateway.from_config(config)
    gateway.audit.lock()  # one writer per chain: refuse to start before binding a port
    uv = uvicorn_config(
        gateway, config, host or config.server.host,
        config.server.port if port is None else port,
    )
    server = GatewayServer(uv)
    if on_ready is not None:
        server._on_ready = lambda: on_ready(gateway, server)
    server.run()
    return 0 if server.started else 1


def bound_port(server: uvicorn.Server) -> int:
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("server is not listening")
