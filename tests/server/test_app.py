"""The Gateway ASGI app in process: its pure helpers, the order of its checks, and properties
of the cancel route and of `x-request-id` over arbitrary input.

Two ways in: Starlette's TestClient (which runs the lifespan) for ordinary requests, and a
direct ASGI call with a hand-made scope where the raw path or header bytes must be exact (the
TestClient would percent-encode and normalize them). The upstream is always a real
`gateway.demo.standin.StandIn` on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.exceptions import StarletteDeprecationWarning

from gateway.access import keys
from gateway.access.limits import TeamLimits
from gateway.config import load as config
from gateway.config import model
from gateway.demo.standin import Respond, StandIn
from gateway.server.app import Gateway
from gateway.server.router import framing_problem, pick_request_id

with warnings.catch_warnings():  # Starlette's notice that its TestClient will move off httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

TOKEN = "unit-app-upstream-token-0123456789abcdef"
KEY = keys.new_key()
FROZEN_KEY = keys.new_key()
LIMITED_KEY = keys.new_key()
VALID_ID = "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"
CANCEL = "/api/v1/invocations/"
UUID_SHAPE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._-]{1,128}")
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no example database written into the working tree
    # The only function-scoped fixture is conftest's autouse reset of structlog and the
    # environment, which no example depends on; the gateway itself is module-scoped.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# -- building gateways ----------------------------------------------------------------------


def make_config(
    folder: Path, upstream_url: str, *, token: str | None = TOKEN, audit_path: Path | None = None
) -> model.Config:
    folder.mkdir(parents=True, exist_ok=True)
    token_path = folder / "token"
    if token is not None:
        token_path.write_text(token + "\n")
    return config.parse({
        "upstream": {
            "base_url": upstream_url,
            "token_file": str(token_path),
            "connect_timeout": 1.0,
            "timeout": 2.0,
        },
        "audit": {"path": str(audit_path or folder / "audit.jsonl"), "fsync": False},
        "teams": [
            {"name": "billing", "keys": [keys.stored_form(KEY)], "scope": ["*"],
             "rate_limit": 1e6, "burst": 10**9},
            {"name": "frozen", "keys": [keys.stored_form(FROZEN_KEY)], "scope": ["*"],
             "enabled": False},
            {"name": "limited", "keys": [keys.stored_form(LIMITED_KEY)], "scope": ["*"],
             "rate_limit": 1.0, "burst": 1},
        ],
    })


def audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line]


def bearer(key: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {key}".encode())


# -- calling the ASGI app directly ----------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    starts: int  # `http.response.start` messages sent: exactly one is correct

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        wanted = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]

    def json(self) -> Any:
        return json.loads(self.body)


async def asgi_call(
    app: Gateway, method: str, raw_path: bytes, headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> Answer:
    """One request with exactly these path and header bytes; the messages the app sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": urllib.parse.unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert starts, f"no response was started: {sent!r}"
    return Answer(
        status=starts[0]["status"],
        headers=list(starts[0].get("headers", [])),
        body=b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
        starts=len(starts),
    )


Call = Callable[..., Answer]


@contextlib.contextmanager
def running(gateway: Gateway) -> Iterator[Call]:
    """Start the gateway on an event loop of its own; `call(method, raw_path, ...)`."""
    with asyncio.Runner() as runner:
        runner.run(gateway.start())
        try:
            yield lambda *args, **kwargs: runner.run(asgi_call(gateway, *args, **kwargs))
        finally:
            runner.run(gateway.stop())


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[StandIn]:
    server = StandIn(token=TOKEN)
    with server.run_in_thread():
        yield server


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, upstream: StandIn
) -> Iterator[Call]:
    """One healthy gateway for the property tests: the same app across all examples."""
    folder = tmp_path_factory.mktemp("shared-gateway")
    with running(Gateway.from_config(make_config(folder, upstream.base_url))) as call:
        yield call


@pytest.fixture
def standin(upstream: StandIn) -> Iterator[StandIn]:
    upstream.requests.clear()
    upstream.behaviour = None
    yield upstream
    upstream.behaviour = None


# -- pick_request_id ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    b"a", b"req-1.2_3", b"A" * 128, b"0", b"...", b"---", b"_",
    b"3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b",
])
def test_pick_request_id_keeps_a_valid_caller_value(value: bytes) -> None:
    assert pick_request_id([(b"x-request-id", value)]) == value.decode()


def assert_new_uuid4(value: str) -> None:
    parsed = uuid.UUID(value)
    assert parsed.version == 4
    assert str(parsed) == value


@pytest.mark.parametrize("headers", [
    [(b"x-request-id", b"A" * 129)],
    [(b"x-request-id", b"")],
    [(b"x-request-id", b"has space")],
    [(b"x-request-id", b" padded")],
    [(b"x-request-id", b"caf\xc3\xa9")],
    [(b"x-request-id", b"caf\xe9")],
    [(b"x-request-id", b"line\nbreak")],
    [(b"x-request-id", b"a/b")],
    [(b"x-request-id", b"ok-1"), (b"x-request-id", b"ok-1")],
    [(b"x-request-id", b"ok-1"), (b"x-request-id", b"ok-2")],
    [],
    [(b"x-correlation-id", b"ok-1")],
], ids=["129-chars", "empty", "space", "leading-space", "utf8", "latin1", "newline", "slash",
        "duplicated-same", "duplicated-different", "absent", "other-header"])
def test_pick_request_id_replaces_anything_else_with_a_new_uuid4(
    headers: list[tuple[bytes, bytes]],
) -> None:
    first = pick_request_id(headers)
    assert_new_uuid4(first)
    assert pick_request_id(headers) != first  # new each time, not a constant


# -- framing_problem ------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "problem"), [
    ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
     "both Content-Length and Transfer-Encoding"),
    ([(b"transfer-encoding", b"chunked"), (b"content-length", b"0")],
     "both Content-Length and Transfer-Encoding"),
    ([(b"content-length", b"5"), (b"content-length", b"6")], "differing Content-Length values"),
    ([(b"content-length", b"5"), (b"content-length", b"05")],
     "differing Content-Length values"),
    ([(b"content-length", b"five")], "a malformed Content-Length"),
    ([(b"content-length", b"-1")], "a malformed Content-Length"),
    ([(b"content-length", b"+5")], "a malformed Content-Length"),
    ([(b"content-length", b"5, 5")], "a malformed Content-Length"),
    ([(b"content-length", b"")], "a malformed Content-Length"),
    ([(b"content-length", b"0x10")], "a malformed Content-Length"),
    ([(b"transfer-encoding", b"gzip")], "an unsupported transfer coding"),
    ([(b"transfer-encoding", b"gzip, chunked")], "an unsupported transfer coding"),
    ([(b"transfer-encoding", b"chunked, chunked")], "an unsupported transfer coding"),
    ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
     "an unsupported transfer coding"),
    ([(b"transfer-encoding", b"chunke")], "an unsupported transfer coding"),
    ([(b"transfer-encoding", b"")], "an unsupported transfer coding"),
    ([(b"transfer-encoding", b"chun ked")], "an unsupported transfer coding"),
])
def test_framing_problem_names_ambiguous_framing(
    headers: list[tuple[bytes, bytes]], problem: str,
) -> None:
    assert framing_problem(headers) == problem


@pytest.mark.parametrize("headers", [
    [],
    [(b"content-length", b"0")],
    [(b"content-length", b"1024")],
    [(b"content-length", b"5"), (b"content-length", b"5")],  # the same length twice
    [(b"content-length", b" 5"), (b"content-length", b"5 ")],  # differing only in padding
    [(b"transfer-encoding", b"chunked")],
    [(b"transfer-encoding", b"CHUNKED")],
    [(b"transfer-encoding", b"Chunked")],
    [(b"transfer-encoding", b"  chunked\t")],
    [(b"x-content-length", b"nope"), (b"te", b"trailers")],
], ids=["none", "cl-0", "cl-1024", "same-cl-twice", "same-cl-padded", "chunked",
        "CHUNKED", "Chunked", "chunked-padded", "lookalike-names"])
def test_framing_problem_accepts_unambiguous_framing(
    headers: list[tuple[bytes, bytes]],
) -> None:
    assert framing_problem(headers) is None


# -- through TestClient (lifespan included) -------------------------------------------------


@pytest.fixture
def client_gateway(tmp_path: Path, standin: StandIn) -> Iterator[tuple[TestClient, Path]]:
    gateway = Gateway.from_config(make_config(tmp_path, standin.base_url))
    with TestClient(gateway, raise_server_exceptions=True) as client:
        yield client, tmp_path / "audit.jsonl"


def test_testclient_cancel_is_forwarded_once_with_attempt_and_result_records(
    client_gateway: tuple[TestClient, Path], standin: StandIn,
) -> None:
    client, audit_path = client_gateway
    invocation = standin.add_pending()
    response = client.put(CANCEL + invocation.upper(), headers={
        "Authorization": f"Bearer {KEY}", "x-request-id": "trace-42",
        "x-chroma-token": "caller-copy", "cookie": "a=b",
    })
    assert response.status_code == 202
    assert response.json() == {}
    assert response.headers["x-request-id"] == "trace-42"
    assert len(standin.requests) == 1
    sent = standin.requests[0]
    assert sent.target == CANCEL + invocation  # canonical lowercase
    assert sent.header_values("x-chroma-token") == [TOKEN]
    assert sent.header_values("x-request-id") == ["trace-42"]
    assert sent.header_values("cookie") == []
    assert sent.header_values("authorization") == []
    events = [(r["event"], r["outcome"]) for r in audit_records(audit_path)
              if r["event"].startswith("cancel.")]
    assert events == [("cancel.attempt", "pending"), ("cancel.result", "cancelled")]


def test_testclient_health_ready_and_metrics_answer(
    client_gateway: tuple[TestClient, Path],
) -> None:
    client, _ = client_gateway
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"chroma_sync_gateway_upstream_token_available 1.0" in metrics.content
    for response in (ready, metrics):
        assert_new_uuid4(response.headers["x-request-id"])


def test_testclient_unknown_route_is_404_and_wrong_method_on_plain_route_is_405(
    client_gateway: tuple[TestClient, Path],
) -> None:
    client, _ = client_gateway
    missing = client.get("/healthz/")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["error"] == "not_found"
    wrong = client.post("/healthz")
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]


def test_testclient_readyz_is_503_token_unavailable_without_a_token(
    tmp_path: Path, standin: StandIn,
) -> None:
    gateway = Gateway.from_config(make_config(tmp_path, standin.base_url, token=None))
    with TestClient(gateway) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/json"
    assert ready.json()["error"] == "token_unavailable"
    assert str(tmp_path) not in ready.text  # no host path in an error message


# -- the order of checks --------------------------------------------------------------------


BIG_BODY = b"x" * 2048


@dataclass(frozen=True)
class Row:
    name: str
    gateway: str  # "broken": no token, audit unwritable; "no_audit": token, audit unwritable
    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    status: int
    error: str


ORDER_ROWS = (
    Row("framing 400 before route 404", "broken", "GET", "/nope",
        ((b"content-length", b"1"), (b"transfer-encoding", b"chunked")), b"", 400,
        "bad_request"),
    Row("route 404 before authentication", "broken", "PUT", CANCEL + VALID_ID + "/more", (),
        b"", 404, "not_found"),
    Row("route 405 before authentication", "broken", "GET", CANCEL + VALID_ID, (), b"", 405,
        "method_not_allowed"),
    Row("401 before 400", "broken", "PUT", CANCEL + "not-a-uuid", (), b"", 401,
        "unauthenticated"),
    Row("401 before 403 (a frozen team's key, sent twice)", "broken", "PUT", CANCEL + VALID_ID,
        (bearer(FROZEN_KEY), bearer(FROZEN_KEY)), b"", 401, "unauthenticated"),
    Row("403 before 400", "broken", "PUT", CANCEL + "not-a-uuid", (bearer(FROZEN_KEY),), b"",
        403, "forbidden"),
    Row("400 before 413", "broken", "PUT", CANCEL + "not-a-uuid",
        (bearer(KEY), (b"content-length", b"2048")), BIG_BODY, 400, "invalid_invocation_id"),
    Row("413 before 429", "broken", "PUT", CANCEL + VALID_ID,
        (bearer(LIMITED_KEY), (b"content-length", b"2048")), BIG_BODY, 413,
        "payload_too_large"),
    Row("413 before 429 (no Content-Length)", "broken", "PUT", CANCEL + VALID_ID,
        (bearer(LIMITED_KEY),), BIG_BODY, 413, "payload_too_large"),
    Row("429 before 503 token", "broken", "PUT", CANCEL + VALID_ID, (bearer(LIMITED_KEY),),
        b"", 429, "rate_limited"),
    Row("503 token before 503 audit", "broken", "PUT", CANCEL + VALID_ID, (bearer(KEY),), b"",
        503, "token_unavailable"),
    Row("503 audit, the last check before the forward", "no_audit", "PUT", CANCEL + VALID_ID,
        (bearer(KEY),), b"", 503, "audit_unavailable"),
)


def test_checks_run_in_spec_order_and_the_first_failure_answers_unforwarded(
    tmp_path: Path, standin: StandIn,
) -> None:
    missing_folder = tmp_path / "no-such-folder" / "audit.jsonl"
    gateways = {
        "broken": Gateway.from_config(make_config(
            tmp_path / "broken", standin.base_url, token=None, audit_path=missing_folder)),
        "no_audit": Gateway.from_config(make_config(
            tmp_path / "no-audit", standin.base_url, audit_path=missing_folder)),
    }
    # The limited team's bucket is empty and never refills (a clock that stands still).
    for gateway in gateways.values():
        gateway.policy = dataclasses.replace(
            gateway.policy, limits=TeamLimits(gateway.config.teams, clock=lambda: 0.0))
        assert gateway.policy.limits.retry_after("limited") == 0
    with running(gateways["broken"]) as broken, running(gateways["no_audit"]) as no_audit:
        calls = {"broken": broken, "no_audit": no_audit}
        for row in ORDER_ROWS:
            answer = calls[row.gateway](row.method, row.path.encode(), row.headers, row.body)
            assert (answer.status, answer.json()["error"]) == (row.status, row.error), row.name
            assert answer.starts == 1, row.name
            assert answer.header("content-type") == "application/json", row.name
            assert set(answer.json()) == {"error", "message"}, row.name
            assert standin.requests == [], f"{row.name}: something was forwarded"
            if row.status == 401:
                assert answer.header("www-authenticate") == "Bearer", row.name
            if row.status == 405:
                assert answer.header("allow") == "PUT", row.name
            if row.status == 429:
                assert int(answer.header("retry-after") or "0") >= 1, row.name
            if row.status in (400, 413) and row.error != "invalid_invocation_id":
                assert answer.header("connection") == "close", row.name
    assert not missing_folder.parent.exists()


def test_a_valid_cancel_on_a_healthy_gateway_is_forwarded(shared: Call, standin: StandIn) -> None:
    """The control for the test above: the same request does reach the stand-in."""
    answer = shared("PUT", (CANCEL + VALID_ID).encode(), [bearer(KEY)])
    assert answer.status == 404  # the stand-in does not know this invocation
    assert len(standin.requests) == 1


def test_a_content_length_with_thousands_of_leading_zeros_is_not_a_500(
    shared: Call, standin: StandIn,
) -> None:
    length = b"0" * 5000 + b"1"
    answer = shared("PUT", (CANCEL + VALID_ID).encode(),
                    [bearer(KEY), (b"content-length", length)], b"x")
    assert answer.status != 500
    assert answer.json()["error"] != "internal_error"


def test_an_upstream_5xx_message_with_a_lone_surrogate_is_a_502_with_a_result_record(
    tmp_path: Path, standin: StandIn,
) -> None:
    standin.behaviour = lambda request: Respond(500, b'{"error":"x","message":"\\ud800"}')
    with running(Gateway.from_config(make_config(tmp_path, standin.base_url))) as call:
        answer = call("PUT", (CANCEL + VALID_ID).encode(), [bearer(KEY)])
    assert (answer.status, answer.json()["error"]) == (502, "upstream_error")
    results = [r for r in audit_records(tmp_path / "audit.jsonl")
               if r["event"] == "cancel.result"]
    assert [(r["status"], r["upstream_status"]) for r in results] == [(502, 500)]


def test_an_upstream_202_body_with_a_lone_surrogate_is_still_a_202(
    tmp_path: Path, standin: StandIn,
) -> None:
    standin.behaviour = lambda request: Respond(202, b'{"a":"\\udfff"}')
    with running(Gateway.from_config(make_config(tmp_path, standin.base_url))) as call:
        answer = call("PUT", (CANCEL + VALID_ID).encode(), [bearer(KEY)])
    assert answer.status == 202
    assert isinstance(answer.json(), dict)


# -- properties: the invocation id ----------------------------------------------------------


_HEX = "0123456789abcdefABCDEF"
uuid_shaped = st.tuples(
    *(st.text(st.sampled_from(_HEX), min_size=n, max_size=n) for n in (8, 4, 4, 4, 12))
).map("-".join)


@st.composite
def uuid_with_one_escape(draw: st.DrawFn) -> str:
    """A UUID-shaped id with one character percent-encoded: decodes to a UUID, sent with `%`."""
    text = draw(uuid_shaped)
    i = draw(st.integers(0, len(text) - 1))
    escape = f"%{ord(text[i]):02{draw(st.sampled_from('xX'))}}"
    return text[:i] + escape + text[i + 1:]


@st.composite
def uuid_mutated(draw: st.DrawFn) -> str:
    """A UUID-shaped id with one character replaced, inserted or removed (then quoted)."""
    text = draw(uuid_shaped)
    i = draw(st.integers(0, len(text) - 1))
    char = draw(st.characters())
    text = draw(st.sampled_from([
        text[:i] + char + text[i + 1:], text[:i] + char + text[i:], text[:i] + text[i + 1:],
    ]))
    return urllib.parse.quote(text, safe="")


raw_segments = st.one_of(
    st.text().map(lambda t: urllib.parse.quote(t, safe="")),
    st.binary().map(lambda b: urllib.parse.quote(b, safe="")),
    uuid_shaped,
    uuid_with_one_escape(),
    uuid_mutated(),
)


@PROPERTY_SETTINGS
@given(segment=raw_segments)
def test_any_id_segment_is_never_a_500_and_only_a_raw_uuid_is_forwarded(
    shared: Call, upstream: StandIn, segment: str,
) -> None:
    before = len(upstream.requests)
    answer = shared("PUT", (CANCEL + segment).encode("ascii"), [bearer(KEY)])
    forwarded = len(upstream.requests) - before
    assert answer.status != 500
    assert answer.starts == 1
    valid = "%" not in segment and UUID_SHAPE.fullmatch(urllib.parse.unquote(segment))
    if valid:
        assert answer.json().get("error") != "invalid_invocation_id"
        assert forwarded == 1
        assert upstream.requests[-1].target == CANCEL + segment.lower()
    else:
        assert (answer.status, answer.json()["error"]) == (400, "invalid_invocation_id")
        assert forwarded == 0


# -- properties: x-request-id ---------------------------------------------------------------


printable_latin1 = st.characters(codec="latin-1", exclude_categories=("Cc",))
request_ids = st.one_of(
    st.text(printable_latin1, max_size=200),
    st.text(st.sampled_from("abcXYZ019._-"), min_size=1, max_size=140),
)


@PROPERTY_SETTINGS
@given(value=request_ids, on_cancel_route=st.booleans())
def test_x_request_id_is_echoed_iff_valid_else_a_new_uuid4(
    shared: Call, value: str, on_cancel_route: bool,
) -> None:
    method, path = ("PUT", CANCEL + VALID_ID) if on_cancel_route else ("GET", "/healthz")
    answer = shared(method, path.encode(), [(b"x-request-id", value.encode("latin-1"))])
    assert answer.status in (401, 200)  # no key on the cancel route
    echoed = answer.headers_named("x-request-id")
    assert len(echoed) == 1
    if REQUEST_ID_SHAPE.fullmatch(value):
        assert echoed[0] == value
    else:
        assert_new_uuid4(echoed[0])
