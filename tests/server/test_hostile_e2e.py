"""Hostile callers and fragile inputs (SPEC.md, Version 0.2), against the real gateway.

Each test is one finding of the review, reproduced over a real loopback socket against the
real gateway (a subprocess) and the real stand-in: slow clients, too many connections, a
request without Host, an unauthenticated flood, an audit file deleted or replaced under the
gateway, an HMAC key that is (or holds) the token, a disguised token echo, and log readers
that stop draining.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.demo.standin import Delay, StandIn, json_response
from tests.harness import (
    BILLING_KEY,
    UPSTREAM_TOKEN,
    RawResponse,
    RunningGateway,
    free_port,
    start_gateway,
    wait_for,
    wait_until_serving,
    write_config,
)

UUID = "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"
HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    server = StandIn(token=UPSTREAM_TOKEN)
    with server.run_in_thread():
        yield server


@pytest.fixture
def make_gateway(standin: StandIn, tmp_path: Path) -> Iterator[Any]:
    started: list[RunningGateway] = []

    def make(**sections: Any) -> RunningGateway:
        standin.behaviour = None
        standin.requests.clear()
        folder = tmp_path / f"gw{len(started)}"
        folder.mkdir()
        port = free_port()
        config = write_config(folder, upstream_url=standin.base_url, port=port, **sections)
        gateway = start_gateway(config, port=port)
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.stop()
    standin.behaviour = None


@pytest.fixture
def timed(make_gateway: Any) -> RunningGateway:
    """A gateway with short (1 s) header and keep-alive timeouts."""
    gateway: RunningGateway = make_gateway(server={
        "header_timeout": HEADER_TIMEOUT, "keepalive_timeout": KEEPALIVE_TIMEOUT})
    return gateway


def connect(gateway: RunningGateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=10)


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took (or `limit`)."""
    start = time.monotonic()
    data = b""
    sock.settimeout(0.1)
    while time.monotonic() - start < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def parse(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:]]
    return RawResponse(int(lines[0].split(" ")[1]), [(k, v) for k, v in headers], body, True)


def assert_error(response: RawResponse, status: int, error: str) -> None:
    assert response.status == status, response.body
    assert response.header("content-type") == "application/json"
    assert json.loads(response.body)["error"] == error


def cancel_head(*, key: str | None = BILLING_KEY, extra: bytes = b"", host: bool = True,
                rid: str | None = None) -> bytes:
    lines = [f"PUT /api/v1/invocations/{UUID} HTTP/1.1".encode()]
    if host:
        lines.append(b"Host: 127.0.0.1")
    if key is not None:
        lines.append(b"Authorization: Bearer " + key.encode())
    if rid is not None:
        lines.append(b"X-Request-Id: " + rid.encode())
    if extra:
        lines.append(extra)
    return b"\r\n".join(lines) + b"\r\n\r\n"


# -- slow clients ---------------------------------------------------------------------------


def test_connection_that_sends_nothing_gets_408_and_is_closed(timed: RunningGateway) -> None:
    with connect(timed) as sock:
        data, seconds = read_until_closed(sock, limit=10)
    assert seconds < HEADER_TIMEOUT + 2
    assert_error(parse(data), 408, "request_timeout")


def test_head_sent_one_byte_at_a_time_gets_408_and_is_closed(timed: RunningGateway) -> None:
    head = cancel_head()
    start = time.monotonic()
    with connect(timed) as sock:
        sock.settimeout(0.3)
        data = b""
        for byte in head[:40]:
            try:
                sock.sendall(bytes([byte]))
                data += sock.recv(65536)
                break  # the server spoke (or closed)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        more, _ = read_until_closed(sock, limit=3)
    assert time.monotonic() - start < HEADER_TIMEOUT + 3
    assert_error(parse(data + more), 408, "request_timeout")


def test_blank_lines_between_requests_do_not_keep_a_connection_alive(
    timed: RunningGateway,
) -> None:
    # CRLFs before a request start no message: they must not hold the connection open.
    start = time.monotonic()
    with connect(timed) as sock:
        closed = False
        while time.monotonic() - start < 8 and not closed:
            try:
                sock.sendall(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            _, waited = read_until_closed(sock, limit=0.3)
            closed = waited < 0.3
    assert time.monotonic() - start < HEADER_TIMEOUT + 3


def test_cancel_body_dribbled_gets_408_closed_audited_and_not_forwarded(
    timed: RunningGateway, standin: StandIn,
) -> None:
    rid = "hostile-" + uuid.uuid4().hex
    with connect(timed) as sock:
        sock.sendall(cancel_head(rid=rid, extra=b"Content-Length: 200") + b"{")
        data, seconds = read_until_closed(sock, limit=10)
    assert seconds < HEADER_TIMEOUT + 2
    assert_error(parse(data), 408, "request_timeout")
    records = wait_for(lambda: [r for r in timed.audit_records()
                                if r.get("request_id") == rid and r["event"] == "cancel.result"])
    assert [(r["status"], r["error"]) for r in records] == [(408, "request_timeout")]
    assert not standin.requests


def test_slow_upstream_is_not_a_slow_client(timed: RunningGateway, standin: StandIn) -> None:
    # The clock stops once the request is in: a cancel waiting on upstream is not cut short.
    standin.behaviour = lambda request: Delay(HEADER_TIMEOUT + 0.5)
    response = timed.cancel(standin.add_pending())
    assert response.status_code == 202


def test_idle_kept_alive_connection_is_closed_after_keepalive_timeout(
    timed: RunningGateway,
) -> None:
    with connect(timed) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data, seconds = read_until_closed(sock, limit=10)
    assert parse(data).status == 200
    assert seconds < KEEPALIVE_TIMEOUT + 1.5  # uvicorn's own default is 5 s


def test_kept_alive_connection_serves_requests_until_idle(timed: RunningGateway) -> None:
    with httpx.Client(base_url=timed.base_url, trust_env=False) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(KEEPALIVE_TIMEOUT / 3)


def test_connections_past_max_connections_get_503_overloaded(make_gateway: Any) -> None:
    gateway = make_gateway(server={"max_connections": 3, "header_timeout": 30.0})
    held = [connect(gateway) for _ in range(3)]
    try:
        time.sleep(0.2)
        with connect(gateway) as extra:
            data, seconds = read_until_closed(extra, limit=5)
        assert seconds < 2
        assert_error(parse(data), 503, "overloaded")
        held.pop().close()
        time.sleep(0.2)
        response = httpx.get(gateway.base_url + "/healthz", trust_env=False)
        assert response.status_code == 200
    finally:
        for sock in held:
            sock.close()


# -- Host ------------------------------------------------------------------------------------


def test_http11_request_without_host_is_400_not_audited_nor_forwarded(
    make_gateway: Any, standin: StandIn,
) -> None:
    gateway = make_gateway()
    rid = "hostile-" + uuid.uuid4().hex
    with connect(gateway) as sock:
        sock.sendall(cancel_head(host=False, rid=rid))
        data, _ = read_until_closed(sock, limit=5)
    response = parse(data)
    assert_error(response, 400, "bad_request")
    assert "Host" in json.loads(response.body)["message"]
    time.sleep(0.3)
    assert not [r for r in gateway.audit_records() if r.get("request_id") == rid]
    assert not standin.requests


def test_two_host_headers_are_400(make_gateway: Any, standin: StandIn) -> None:
    gateway = make_gateway()
    with connect(gateway) as sock:
        sock.sendall(cancel_head(extra=b"Host: elsewhere.example"))
        data, _ = read_until_closed(sock, limit=5)
    assert_error(parse(data), 400, "bad_request")
    assert not standin.requests


# -- an unauthenticated flood ---------------------------------------------------------------


def test_unauthenticated_flood_is_summarized_not_written_record_by_record(
    make_gateway: Any, standin: StandIn,
) -> None:
    gateway = make_gateway(audit={"denied_per_second": 5})
    count = 60
    head = cancel_head(key="csg_" + "x" * 40)
    with connect(gateway) as sock:
        last = head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        sock.sendall(head * (count - 1) + last)
        data, _ = read_until_closed(sock, limit=10)
    assert data.count(b"HTTP/1.1 401 ") == count  # every request is still answered
    gateway.stop()
    records = gateway.audit_records()
    results = [r for r in records if r["event"] == "cancel.result"]
    summaries = [r for r in records if r["event"] == "audit.suppressed"]
    seconds = {r["ts"][:19] for r in results}
    assert len(results) <= 5 * len(seconds)
    assert summaries, "the excess must be summed up"
    assert len(results) + sum(s["count"] for s in summaries) == count  # nothing unrecorded
    for summary in summaries:
        assert summary["client"] == "127.0.0.1"
        assert set(summary["outcomes"]) == {"unauthenticated"}
        assert summary["first_ts"] <= summary["last_ts"]
        assert {"ts", "seq", "prev", "hash"} <= set(summary)
    verified = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", str(gateway.audit_path)],
        capture_output=True, text=True, timeout=30, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert not standin.requests


def test_unauthenticated_bulk_flood_shares_the_suppression_budget(
    make_gateway: Any, standin: StandIn,
) -> None:
    gateway = make_gateway(audit={"denied_per_second": 3})
    count = 30
    body = b'{"database_name": "docs"}'
    head = (b"POST /gateway/v1/bulk-cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer csg_" + b"x" * 40 + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)
    with connect(gateway) as sock:
        last = head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        sock.sendall(head * (count - 1) + last)
        data, _ = read_until_closed(sock, limit=10)
    assert data.count(b"HTTP/1.1 401 ") == count
    gateway.stop()
    records = gateway.audit_records()
    results = [r for r in records if r["event"] == "batch.result"]
    summaries = [r for r in records if r["event"] == "audit.suppressed"]
    assert len(results) <= 3 * len({r["ts"][:19] for r in results})
    assert len(results) + sum(s["count"] for s in summaries) == count  # nothing unrecorded
    assert all(set(s["outcomes"]) == {"unauthenticated"} for s in summaries)
    assert not standin.requests


def test_authenticated_refusals_are_never_suppressed(make_gateway: Any) -> None:
    gateway = make_gateway(audit={"denied_per_second": 1})
    with httpx.Client(base_url=gateway.base_url, trust_env=False) as client:
        for _ in range(5):
            response = client.put("/api/v1/invocations/not-a-uuid",
                                  headers={"Authorization": f"Bearer {BILLING_KEY}"})
            assert response.status_code == 400
    results = wait_for(lambda: len([r for r in gateway.audit_records()
                                    if r["event"] == "cancel.result"]) == 5)
    assert results


# -- the audit file --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_audit_file_deleted_or_replaced_fails_closed(
    make_gateway: Any, standin: StandIn, how: str,
) -> None:
    gateway = make_gateway()
    assert gateway.cancel(standin.add_pending()).status_code == 202
    path = gateway.audit_path
    if how == "deleted":
        path.unlink()
    else:
        fresh = path.with_name("fresh.jsonl")
        fresh.write_bytes(b"")
        os.replace(fresh, path)
    standin.requests.clear()
    response = gateway.cancel(UUID)
    assert response.status_code == 503
    assert response.json()["error"] == "audit_unavailable"
    assert not standin.requests
    ready = gateway.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"] == "audit_unavailable"
    assert gateway.cancel(UUID).status_code == 503  # and stays so: no new chain
    assert not path.exists() or path.read_bytes() == b""
    assert any(e.get("event") == "audit.unavailable" and e.get("level") == "error"
               and "audit.path" in e.get("problem", "") for e in gateway.logs())


# -- the HMAC key ----------------------------------------------------------------------------


def test_check_config_refuses_the_token_file_as_hmac_key_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, upstream_url="http://127.0.0.1:9", port=free_port(),
                          audit={"hmac_key_file": str(tmp_path / "token")})
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "audit.hmac_key_file" in lines[0], result.stderr
    assert UPSTREAM_TOKEN not in result.stdout + result.stderr


def test_hmac_key_file_holding_the_token_fails_closed(
    make_gateway: Any, standin: StandIn, tmp_path: Path,
) -> None:
    key = tmp_path / "hmac.key"
    key.write_text(UPSTREAM_TOKEN + "\n")
    gateway = make_gateway(audit={"hmac_key_file": str(key)})
    response = gateway.cancel(UUID)
    assert response.status_code == 503
    assert response.json()["error"] == "audit_unavailable"
    assert not standin.requests
    assert gateway.client.get("/readyz").status_code == 503
    assert not [r for r in gateway.audit_records() if "mac" in r]


# -- redaction -------------------------------------------------------------------------------


DISGUISES = {
    "upper case": UPSTREAM_TOKEN.upper(),
    "39 of 40 characters": UPSTREAM_TOKEN[1:],
    "a 16-character piece": UPSTREAM_TOKEN[10:26],
    "base64": base64.b64encode(UPSTREAM_TOKEN.encode()).decode(),
    "base64 inside a header": base64.b64encode(b"x-chroma-token: " + UPSTREAM_TOKEN.encode())
    .decode(),
    "hex": UPSTREAM_TOKEN.encode().hex().upper(),
}


@pytest.mark.parametrize("status", [404, 500])
@pytest.mark.parametrize("disguise", sorted(DISGUISES))
def test_upstream_echo_of_a_disguised_token_is_normalized(
    make_gateway: Any, standin: StandIn, disguise: str, status: int,
) -> None:
    gateway = make_gateway()
    shown = DISGUISES[disguise]
    standin.behaviour = lambda request: json_response(
        status, {"error": "Echo", "message": f"you sent {shown}"})
    response = gateway.cancel(UUID)
    standin.behaviour = None
    assert response.status_code == (404 if status == 404 else 502)
    assert shown not in response.text
    assert shown.lower() not in response.text.lower()
    assert UPSTREAM_TOKEN[10:26] not in response.text


def test_upstream_message_without_the_token_is_still_passed_through(
    make_gateway: Any, standin: StandIn,
) -> None:
    gateway = make_gateway()
    standin.behaviour = lambda request: json_response(
        404, {"error": "NotFound", "message": "no such invocation, chroma-test"})
    response = gateway.cancel(UUID)
    standin.behaviour = None
    assert response.json() == {"error": "NotFound", "message": "no such invocation, chroma-test"}


# -- log readers that stop draining ----------------------------------------------------------


def test_undrained_stderr_and_stdout_pipes_do_not_stall_cancels(
    standin: StandIn, tmp_path: Path,
) -> None:
    standin.behaviour = None
    port = free_port()
    config = write_config(tmp_path, upstream_url=standin.base_url, port=port,
                          audit={"stdout": True, "fsync": False})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMA_SYNC")}
    # Pipes nobody reads: 64 KiB each fills after a few hundred cancels.
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    gateway = RunningGateway(process, port, tmp_path, config, tmp_path / "out", tmp_path / "err",
                             tmp_path / "audit.jsonl")
    try:
        wait_until_serving(gateway)
        with httpx.Client(base_url=gateway.base_url, timeout=5.0, trust_env=False) as client:
            for _ in range(600):
                response = client.put(f"/api/v1/invocations/{standin.add_pending()}",
                                      headers={"Authorization": f"Bearer {BILLING_KEY}"})
                assert response.status_code == 202
            assert client.get("/healthz").status_code == 200
        records = gateway.audit_records()
        assert len([r for r in records if r["event"] == "cancel.result"]) == 600
    finally:
        process.kill()
        process.communicate(timeout=10)
