"""Real parts for end-to-end tests: the gateway as a subprocess, configs, raw sockets.

The gateway under test is the real thing: `python -m gateway serve` on a free loopback port,
configured by a TOML file written here, talking to a `gateway.demo.standin.StandIn` on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.access import keys
from gateway.demo.standin import StandIn

UPSTREAM_TOKEN = "chroma-test-token-7f3a9c1e5b2d4f6a8c0e"
BILLING_KEY = keys.new_key()
BILLING_KEY_2 = keys.new_key()  # a second key of the same team (rotation)
FROZEN_KEY = keys.new_key()  # a team whose kill switch is off
TEAM_KEYS = (BILLING_KEY, BILLING_KEY_2, FROZEN_KEY)


@contextlib.contextmanager
def black_holed_port() -> Iterator[int]:
    """A loopback port whose connects hang: a listener that never accepts, its backlog full.

    The kernel drops further SYNs, exactly like a connect to a black-holed address.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def render_toml(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for section, table in data.items():
        if isinstance(table, list):
            continue
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items() if v is not None)
        lines.append("")
    for section, tables in data.items():  # arrays of tables: [[teams]], [[issuers]]
        for entry in tables if isinstance(tables, list) else ():
            lines.append(f"[[{section}]]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in entry.items())
            lines.append("")
    return "\n".join(lines)


def default_teams() -> list[dict[str, Any]]:
    return [
        {
            "name": "billing",
            "keys": [keys.stored_form(BILLING_KEY), keys.stored_form(BILLING_KEY_2)],
            "scope": ["*"],
            "rate_limit": 10000.0,
            "burst": 10000,
        },
        {"name": "frozen", "keys": [keys.stored_form(FROZEN_KEY)], "scope": ["*"],
         "enabled": False},
    ]


def write_config(
    folder: Path,
    *,
    upstream_url: str,
    port: int,
    upstream: Mapping[str, Any] | None = None,
    audit: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    teams: list[dict[str, Any]] | None = None,
    issuers: list[dict[str, Any]] | None = None,
    traces: Mapping[str, Any] | None = None,
    token: str | None = UPSTREAM_TOKEN,
) -> Path:
    """A config in `folder`; the token goes to `folder/token` unless `token` is None."""
    token_path = folder / "token"
    if token is not None:
        token_path.write_text(token + "\n")
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "grace_period": 5.0, **(server or {})},
        "upstream": {
            "base_url": upstream_url,
            "token_file": str(token_path),
            "connect_timeout": 1.0,
            "timeout": 2.0,
            **(upstream or {}),
        },
        # Tests send many refusals a second from one address and read each one's record;
        # suppression (audit.denied_per_second) has tests of its own.
        "audit": {"path": str(folder / "audit.jsonl"), "fsync": True,
                  "denied_per_second": 100_000, **(audit or {})},
        "teams": teams if teams is not None else default_teams(),
    }
    if issuers:
        data["issuers"] = issuers
    if traces:
        data["traces"] = dict(traces)
    path = folder / "config.toml"
    path.write_text(render_toml(data))
    return path


@dataclass
class RunningGateway:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    config_path: Path
    stdout_path: Path
    stderr_path: Path
    audit_path: Path
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, timeout=10.0, trust_env=False)
        return self._client

    def cancel(
        self, invocation_id: str, *, key: str | None = BILLING_KEY,
        headers: Mapping[str, str] | None = None, **kwargs: Any,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers.setdefault("Authorization", f"Bearer {key}")
        return self.client.put(f"/api/v1/invocations/{invocation_id}", headers=all_headers,
                               **kwargs)

    def audit_records(self, path: Path | None = None) -> list[dict[str, Any]]:
        target = path or self.audit_path
        if not target.exists():
            return []
        return [json.loads(line) for line in target.read_bytes().splitlines() if line]

    def cancel_records(self) -> list[dict[str, Any]]:
        return [r for r in self.audit_records() if r["event"].startswith("cancel.")]

    def wait_for_records(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Results are written just after the response: wait for them to land."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.audit_records()
            if predicate(records) or time.monotonic() > deadline:
                return records
            time.sleep(0.02)

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"event": "<not json>", "raw": line})
        return entries

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


def start_gateway(
    config_path: Path,
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    wait_ready: bool = True,
) -> RunningGateway:
    folder = config_path.parent
    stdout_path = folder / f"stdout-{port}.log"
    stderr_path = folder / f"stderr-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMA_SYNC")}
    full_env.update(env or {})
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
            stdout=out, stderr=err, env=full_env, preexec_fn=preexec_fn,
        )
    config_text = config_path.read_text()
    audit_line = next(line for line in config_text.splitlines() if line.startswith("path = "))
    gateway = RunningGateway(
        process, port, folder, config_path, stdout_path, stderr_path,
        Path(json.loads(audit_line.split("=", 1)[1].strip())),
    )
    if wait_ready:
        wait_until_serving(gateway)
    return gateway


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll `predicate` until it is truthy or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def wait_until_serving(gateway: RunningGateway, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(
                f"gateway exited with {gateway.process.returncode}:\n"
                + gateway.stderr_path.read_text(errors="replace")[-4000:]
            )
        # The port is bound before start-up runs (a port in use fails at once), so a
        # connection alone does not mean started: /healthz answers once start-up is done.
        try:
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                if sock.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    gateway.stop()
    raise RuntimeError("gateway did not start listening in time")


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool  # the server closed the connection after answering

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> RawResponse:
    """Send bytes as they are, read one response, and see whether the connection closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a response: {buffer!r}")
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:]]
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        body, extra = rest[:length], rest[length:]
        sock.settimeout(1.0)
        try:
            closed = not extra and sock.recv(1) == b""
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
        return RawResponse(status, [(k, v) for k, v in headers], body, closed)


@dataclass
class Servers:
    """A stand-in and a gateway wired to it, shared by the tests of a module."""

    standin: StandIn
    gateway: RunningGateway

    def reset(self) -> Servers:
        """Back to Chroma's own behaviour, with nothing recorded and nothing in flight."""
        assert self.gateway.process.poll() is None, "the shared gateway died"
        # A cancel of an earlier test still in flight would disturb the counts of this one.
        self.gateway.wait_for_records(_nothing_in_flight, timeout=2.0)
        self.standin.requests.clear()
        self.standin.behaviour = None
        self.standin.token = UPSTREAM_TOKEN
        return self


def _nothing_in_flight(records: list[dict[str, Any]]) -> bool:
    attempted = {r["request_id"] for r in records if r["event"] == "cancel.attempt"}
    return attempted <= {r["request_id"] for r in records if r["event"] == "cancel.result"}


# A gateway shared by many tests: one test's upstream failures must not open the circuit
# breaker for the next.
SHARED_UPSTREAM = {"breaker_failures": 1_000_000}


@contextlib.contextmanager
def running_servers(
    folder: Path, *, upstream: Mapping[str, Any] | None = None
) -> Iterator[Servers]:
    standin = StandIn(token=UPSTREAM_TOKEN)
    with standin.run_in_thread():
        port = free_port()
        config = write_config(folder, upstream_url=standin.base_url, port=port,
                              upstream={**SHARED_UPSTREAM, **(upstream or {})})
        gateway = start_gateway(config, port=port)
        try:
            yield Servers(standin, gateway)
        finally:
            gateway.stop()
