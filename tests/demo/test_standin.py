"""The Chroma Sync stand-in: default semantics, recording, and each misbehaviour action."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme

from gateway.demo.standin import (
    Close,
    Delay,
    Raw,
    ReceivedRequest,
    Reset,
    Respond,
    Stall,
    StandIn,
    json_response,
)

TOKEN = "ck-test-token"
AUTH = {"x-chroma-token": TOKEN}


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(TOKEN).run_in_thread() as server:
        yield server


@pytest.fixture
def client(standin: StandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=standin.base_url, timeout=5) as c:
        yield c


def cancel_path(invocation_id: str) -> str:
    return f"/api/v1/invocations/{invocation_id}"


def raw_exchange(standin: StandIn, data: bytes, timeout: float = 5) -> bytes:
    """Send `data` on a fresh socket and read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", standin.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def put_request(target: str, *extra: str) -> bytes:
    lines = [f"PUT {target} HTTP/1.1", "Host: x", f"X-Chroma-Token: {TOKEN}", *extra]
    return ("\r\n".join(lines) + "\r\ncontent-length: 0\r\n\r\n").encode()


def test_pending_invocation_cancels_once_then_412(standin: StandIn, client: httpx.Client) -> None:
    invocation_id = standin.add_pending()
    assert standin.state_of(invocation_id) == "pending"
    first = client.put(cancel_path(invocation_id), headers=AUTH)
    assert (first.status_code, first.json()) == (202, {})
    assert first.headers["content-type"] == "application/json"
    assert standin.state_of(invocation_id) == "cancelled"
    second = client.put(cancel_path(invocation_id), headers=AUTH)
    assert second.status_code == 412
    assert second.json() == {
        "error": "InvalidArgumentError",
        "message": "Invocation is not in a cancelable state",
    }


def test_uppercase_id_cancels_the_same_invocation(standin: StandIn, client: httpx.Client) -> None:
    invocation_id = standin.add_pending()
    assert client.put(cancel_path(invocation_id.upper()), headers=AUTH).status_code == 202
    assert standin.state_of(invocation_id) == "cancelled"


def test_invocation_in_other_state_is_412(standin: StandIn, client: httpx.Client) -> None:
    invocation_id = standin.add_invocation(state="processing")
    assert client.put(cancel_path(invocation_id), headers=AUTH).status_code == 412
    assert standin.state_of(invocation_id) == "processing"


def test_unknown_invocation_is_404(standin: StandIn, client: httpx.Client) -> None:
    response = client.put(cancel_path("3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"), headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"error": "NotFoundError", "message": "Invocation not found"}


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7", "%41"])
def test_non_uuid_invocation_id_is_400(client: httpx.Client, bad_id: str) -> None:
    response = client.put(cancel_path(bad_id), headers=AUTH)
    assert response.status_code == 400
    assert set(response.json()) == {"error", "message"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-chroma-token": "wrong"}, {"x-chroma-token": TOKEN + "x"}, {"x-chroma-token": ""}],
    ids=["missing", "wrong", "longer", "empty"],
)
def test_missing_or_wrong_token_is_401(
    standin: StandIn, client: httpx.Client, headers: dict[str, str]
) -> None:
    invocation_id = standin.add_pending()
    response = client.put(cancel_path(invocation_id), headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "Unauthorized"
    assert standin.state_of(invocation_id) == "pending"


def test_duplicate_or_non_ascii_token_is_401(standin: StandIn) -> None:
    invocation_id = standin.add_pending()
    twice = raw_exchange(
        standin,
        put_request(cancel_path(invocation_id), f"x-chroma-token: {TOKEN}", "connection: close"),
    )
    assert twice.startswith(b"HTTP/1.1 401 ")
    odd = raw_exchange(
        standin,
        put_request(cancel_path(invocation_id), "connection: close").replace(
            TOKEN.encode(), b"\xff\xfe"
        ),
    )
    assert odd.startswith(b"HTTP/1.1 401 ")
    assert standin.state_of(invocation_id) == "pending"


def test_health_needs_no_token_and_other_routes_are_404(client: httpx.Client) -> None:
    health = client.get("/health")
    assert (health.status_code, health.json()) == (200, {})
    assert client.get("/nope", headers=AUTH).status_code == 404
    assert (
        client.get(cancel_path("3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"), headers=AUTH).status_code
        == 404
    )


def test_requests_are_recorded_with_raw_target_and_duplicate_headers(standin: StandIn) -> None:
    target = "/api/v1/invocations/3F2A1C9E-8B7D-4E6F-9A1B-2C3D4E5F6A7B?x=%41"
    data = (
        f"PUT {target} HTTP/1.1\r\nHost: up\r\nX-Dup: one\r\nX-Chroma-Token: {TOKEN}\r\n"
        "x-dup: two\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
    ).encode()
    raw_exchange(standin, data)
    [request] = standin.requests
    assert isinstance(request, ReceivedRequest)
    assert (request.method, request.target, request.body) == ("PUT", target, b"abc")
    assert [name for name, _ in request.headers] == [
        "host",
        "x-dup",
        "x-chroma-token",
        "x-dup",
        "connection",
        "content-length",
    ]
    assert request.header_values("X-DUP") == ["one", "two"]
    assert request.header_values("x-chroma-token") == [TOKEN]


def test_recorded_requests_are_bounded_oldest_dropped() -> None:
    with StandIn(TOKEN, max_recorded=3).run_in_thread() as standin, httpx.Client() as c:
        for i in range(5):
            c.get(f"{standin.base_url}/health?n={i}")
        assert [r.target for r in standin.requests] == [f"/health?n={i}" for i in (2, 3, 4)]


def test_keep_alive_100_requests_share_one_connection(
    standin: StandIn, client: httpx.Client
) -> None:
    for _ in range(100):
        invocation_id = standin.add_pending()
        assert client.put(cancel_path(invocation_id), headers=AUTH).status_code == 202
    assert standin.connection_count == 1
    assert len(standin.requests) == 100


def test_pipelined_requests_are_answered_in_order(standin: StandIn) -> None:
    first, second = standin.add_pending(), standin.add_pending()
    data = put_request(cancel_path(first)) + put_request(cancel_path(second), "connection: close")
    reply = raw_exchange(standin, data)
    assert reply.count(b"HTTP/1.1 202 Accepted\r\n") == 2
    assert reply.endswith(b"\r\n\r\n{}")
    assert standin.state_of(second) == "cancelled"


def test_client_connection_close_is_honoured(standin: StandIn) -> None:
    reply = raw_exchange(standin, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in reply


def test_malformed_http_is_answered_400_and_closed(standin: StandIn) -> None:
    reply = raw_exchange(standin, b"this is not http\r\n\r\nGET /health HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert reply.count(b"HTTP/1.1") == 1
    assert b'"error":' in reply


def test_behaviour_none_falls_through_and_is_settable_at_run_time(
    standin: StandIn, client: httpx.Client
) -> None:
    seen: list[str] = []

    def spy(request: ReceivedRequest) -> None:
        seen.append(request.target)

    standin.behaviour = spy
    assert client.get("/health").status_code == 200
    standin.behaviour = lambda request: json_response(503, {"error": "X", "message": "down"})
    assert client.get("/health").status_code == 503
    standin.behaviour = None
    assert client.get("/health").status_code == 200
    assert seen == ["/health"]


def test_behaviour_that_raises_gives_500(standin: StandIn, client: httpx.Client) -> None:
    def broken(request: ReceivedRequest) -> None:
        raise RuntimeError("boom")

    standin.behaviour = broken
    response = client.get("/health")
    assert response.status_code == 500
    assert response.json()["error"] == "InternalError"


def test_respond_sends_custom_status_reason_and_headers(standin: StandIn) -> None:
    standin.behaviour = lambda r: Respond(
        418,
        b"tea",
        headers=(("content-type", "text/plain"), ("x-a", "1"), ("x-a", "2")),
        reason="Short And Stout",
    )
    reply = raw_exchange(standin, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 418 Short And Stout",
        b"content-type: text/plain",
        b"x-a: 1",
        b"x-a: 2",
        b"content-length: 3",
        b"connection: close",
    ]
    assert body == b"tea"


def test_respond_keeps_connection_alive_and_supports_chunked(
    standin: StandIn, client: httpx.Client
) -> None:
    standin.behaviour = lambda r: Respond(
        429, b'{"a":1}', chunked=True, headers=(("retry-after", "7"),)
    )
    for _ in range(3):
        response = client.get("/x")
        assert (response.status_code, response.json()) == (429, {"a": 1})
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["retry-after"] == "7"
    assert standin.connection_count == 1


def test_stall_makes_client_time_out_without_blocking_others(
    standin: StandIn, client: httpx.Client
) -> None:
    standin.behaviour = lambda r: Stall(5) if r.target == "/stall" else None
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.get("/stall", timeout=httpx.Timeout(5, read=0.3))
    assert time.monotonic() - started < 2
    with httpx.Client(base_url=standin.base_url, timeout=1) as other:
        assert other.get("/health").status_code == 200


def test_stall_closes_connection_after_its_time(standin: StandIn) -> None:
    standin.behaviour = lambda r: Stall(0.2)
    started = time.monotonic()
    assert raw_exchange(standin, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert 0.15 < time.monotonic() - started < 2


def test_delay_answers_after_its_time_without_blocking_others(
    standin: StandIn, client: httpx.Client
) -> None:
    invocation = standin.add_pending()
    standin.behaviour = lambda r: Delay(0.6) if r.method == "PUT" else None
    answers: list[tuple[int, float]] = []

    def slow_cancel() -> None:
        started = time.monotonic()
        with httpx.Client(base_url=standin.base_url, timeout=5) as c:
            response = c.put(cancel_path(invocation), headers=AUTH)
        answers.append((response.status_code, time.monotonic() - started))

    thread = threading.Thread(target=slow_cancel)
    thread.start()
    time.sleep(0.1)
    assert client.get("/health").status_code == 200  # the stand-in is not blocked...
    assert answers == []  # ...while the delayed answer is still due
    assert standin.state_of(invocation) == "pending"  # the default is decided after the wait
    thread.join(5)
    [(status, seconds)] = answers
    assert status == 202 and seconds >= 0.55
    assert standin.state_of(invocation) == "cancelled"


def test_delay_then_action_and_keep_alive_continue_on_the_connection(
    standin: StandIn, client: httpx.Client
) -> None:
    standin.behaviour = lambda r: (
        Delay(0.2, then=json_response(409, {"error": "Conflict", "message": "late"}))
        if r.target == "/slow"
        else None
    )
    started = time.monotonic()
    response = client.get("/slow")
    assert (response.status_code, response.json()["message"]) == (409, "late")
    assert time.monotonic() - started >= 0.15
    assert client.get("/health").status_code == 200
    assert standin.connection_count == 1
    reply = raw_exchange(
        standin,
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 409 ")
    assert reply.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 200 " in reply  # pipelined, in order


def test_reset_gives_connection_reset(standin: StandIn) -> None:
    standin.behaviour = lambda r: Reset()
    with pytest.raises(ConnectionResetError):
        raw_exchange(standin, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    with httpx.Client(base_url=standin.base_url) as c, pytest.raises(httpx.ReadError):
        c.get("/health")


def test_raw_bytes_arrive_verbatim(standin: StandIn) -> None:
    garbage = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n<html>trunc\x00\xff"
    standin.behaviour = lambda r: Raw(garbage)
    assert raw_exchange(standin, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") == garbage


def test_raw_without_close_keeps_connection_open(standin: StandIn) -> None:
    standin.behaviour = lambda r: Raw(b"HTTP/1.1 204 No Content\r\n\r\n", close=False)
    data = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert raw_exchange(standin, data) == b"HTTP/1.1 204 No Content\r\n\r\n" * 2


def test_close_ends_connection_without_answer(standin: StandIn) -> None:
    standin.behaviour = lambda r: Close()
    assert raw_exchange(standin, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    with httpx.Client(base_url=standin.base_url) as c, pytest.raises(httpx.RemoteProtocolError):
        c.get("/health")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_standin(ca: trustme.CA) -> StandIn:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return StandIn(TOKEN, ssl_context=context)


def test_tls_client_trusting_the_ca_reaches_https_base_url(ca: trustme.CA) -> None:
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with tls_standin(ca).run_in_thread() as standin, httpx.Client(verify=trusting) as c:
        assert standin.base_url.startswith("https://localhost:")
        invocation_id = standin.add_pending()
        response = c.put(f"{standin.base_url}{cancel_path(invocation_id)}", headers=AUTH)
        assert response.status_code == 202


def test_tls_client_not_trusting_the_ca_fails_verification(ca: trustme.CA) -> None:
    with (
        tls_standin(ca).run_in_thread() as standin,
        httpx.Client(verify=ssl.create_default_context()) as c,
    ):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            c.get(f"{standin.base_url}/health")
        assert standin.requests == []


def test_close_returns_promptly_while_a_stall_is_in_progress() -> None:
    async def scenario() -> tuple[float, bytes]:
        standin = StandIn(TOKEN, behaviour=lambda r: Stall(30))
        await standin.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", standin.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        while not standin.requests:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await standin.close()
        elapsed = time.monotonic() - started
        try:
            left = await asyncio.wait_for(reader.read(), 2)
        except ConnectionResetError:
            left = b""
        writer.close()
        return elapsed, left

    elapsed, left = asyncio.run(scenario())
    assert elapsed < 1
    assert left == b""


def test_run_in_thread_exit_is_prompt_while_a_stall_is_in_progress() -> None:
    standin = StandIn(TOKEN, behaviour=lambda r: Stall(30))
    with standin.run_in_thread():
        sock = socket.create_connection(("127.0.0.1", standin.port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        while not standin.requests:
            time.sleep(0.01)
        started = time.monotonic()
    assert time.monotonic() - started < 1
    sock.close()
    assert not any(t.name == "standin" and t.is_alive() for t in threading.enumerate())


# -- get_job and list_jobs -------------------------------------------------------------------


def test_get_job_answers_the_job_and_404_for_an_unknown_one() -> None:
    from gateway.jobs import parse_job_body

    standin = StandIn(TOKEN)
    with standin.run_in_thread():
        invocation = standin.add_pending(database="docs", collection="c", kind="s3")
        headers = {"x-chroma-token": TOKEN}
        with httpx.Client(base_url=standin.base_url, headers=headers) as client:
            answer = client.get(f"/api/v1/invocations/{invocation}")
            assert answer.status_code == 200
            job = parse_job_body(answer.content)
            assert (job.id, job.status, job.context.database) == (invocation, "pending", "docs")
            assert "s3" in answer.json()["metadata"]
            missing = client.get("/api/v1/invocations/11111111-2222-4333-8444-555555555555")
            assert missing.status_code == 404


def test_list_jobs_filters_orders_and_pages() -> None:
    standin = StandIn(TOKEN)
    source = standin.add_source()
    with standin.run_in_thread():
        ids = [standin.add_pending(database="docs", source_id=source) for _ in range(5)]
        standin.add_invocation(state="processing", database="docs", source_id=source)
        standin.add_pending(database="search")
        with httpx.Client(base_url=standin.base_url,
                          headers={"x-chroma-token": TOKEN}) as client:
            def listed(**params: object) -> list[str]:
                answer = client.get("/api/v1/invocations", params=params)
                assert answer.status_code == 200, answer.text
                return [job["id"] for job in answer.json()]

            assert listed(source_id=source, status="pending", order_by="ASC") == ids
            assert listed(source_id=source, status="pending") == ids[::-1]  # DESC by default
            assert listed(database_name="docs", status="pending", order_by="ASC", limit=2,
                          offset=2) == ids[2:4]
            assert len(listed(database_name="docs")) == 6
            assert listed(database_name="nothing") == []
            both = client.get("/api/v1/invocations",
                              params={"source_id": source, "database_name": "docs"})
            assert both.status_code == 400
            unknown = client.get("/api/v1/invocations",
                                 params={"source_id": "11111111-2222-4333-8444-555555555555"})
            assert unknown.status_code == 404
            assert unknown.json()["message"] == "Source not found"
