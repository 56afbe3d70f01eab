"""End to end: `POST /gateway/v1/bulk-cancel` on the real gateway in front of the real stand-in.

The stand-in is seeded with more than two pages (> 200) of pending invocations across
sources and databases; each test works on a source or database of its own, and counts the
PUTs the stand-in received per invocation id.
"""

from __future__ import annotations

import collections
import json
import resource
import signal
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access import keys
from gateway.demo.standin import Delay, ReceivedRequest, Respond, StandIn, json_response
from tests.audit.test_log_e2e import assert_verify_ok, whole_lines
from tests.audit.test_verify import docs_script, run_script
from tests.conftest import GatewayFactory
from tests.harness import (
    BILLING_KEY,
    FROZEN_KEY,
    UPSTREAM_TOKEN,
    RunningGateway,
    Servers,
    default_teams,
    free_port,
    start_gateway,
    write_config,
)

ROUTE = "/gateway/v1/bulk-cancel"
HANDBOOK_KEY = keys.new_key()  # a team that may cancel one collection of database "shared"
LIMITED_KEY = keys.new_key()  # a team with one request's worth of rate limit
BILLING_KEY_ID = keys.key_id(keys.stored_form(BILLING_KEY))


def teams() -> list[dict[str, Any]]:
    return [
        *default_teams(),
        {"name": "handbook", "keys": [keys.stored_form(HANDBOOK_KEY)],
         "scope": ["collection:shared/handbook"], "rate_limit": 10000.0, "burst": 10000},
        {"name": "limited", "keys": [keys.stored_form(LIMITED_KEY)], "scope": ["*"],
         "rate_limit": 0.001, "burst": 1},
    ]


@pytest.fixture(scope="module")
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    standin = StandIn(token=UPSTREAM_TOKEN)
    with standin.run_in_thread():
        folder = tmp_path_factory.mktemp("bulk-gateway")
        port = free_port()
        config = write_config(folder, upstream_url=standin.base_url, port=port, teams=teams())
        gateway = start_gateway(config, port=port)
        try:
            yield Servers(standin, gateway)
        finally:
            gateway.stop()


@pytest.fixture
def shared(_servers: Servers) -> Servers:
    return _servers.reset()


# -- helpers ---------------------------------------------------------------------------------


def bulk(
    gateway: RunningGateway, body: Any, *, key: str | None = BILLING_KEY,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    all_headers = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        all_headers["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return gateway.client.post(ROUTE, content=content, headers=all_headers, timeout=60.0)


def seed(
    standin: StandIn, count: int, *, source: str | None = None, database: str = "docs",
    collection: str = "handbook", state: str = "pending",
) -> list[str]:
    return [
        standin.add_invocation(state=state, source_id=source, database=database,
                               collection=collection)
        for _ in range(count)
    ]


def puts(standin: StandIn) -> collections.Counter[str]:
    """PUTs received, per invocation id."""
    return collections.Counter(
        r.target.rsplit("/", 1)[1] for r in list(standin.requests) if r.method == "PUT")


def list_calls(standin: StandIn) -> list[dict[str, str]]:
    return [
        dict(urllib.parse.parse_qsl(r.target.partition("?")[2]))
        for r in list(standin.requests)
        if r.method == "GET" and r.target.partition("?")[0] == "/api/v1/invocations"
    ]


def batch_records(gateway: RunningGateway, batch_id: str) -> list[dict[str, Any]]:
    def done(records: list[dict[str, Any]]) -> bool:
        return any(r["event"] == "batch.result" and r.get("batch_id") == batch_id
                   for r in records)

    return [r for r in gateway.wait_for_records(done) if r.get("batch_id") == batch_id]


def result_of(gateway: RunningGateway, request_id: str) -> dict[str, Any]:
    def done(records: list[dict[str, Any]]) -> bool:
        return any(r["event"] == "batch.result" and r["request_id"] == request_id
                   for r in records)

    found = [r for r in gateway.wait_for_records(done)
             if r["event"] == "batch.result" and r["request_id"] == request_id]
    assert len(found) == 1, found
    return found[0]


# -- the batch -------------------------------------------------------------------------------


def test_a_source_with_over_two_pages_has_each_pending_invocation_cancelled_exactly_once(
    shared: Servers,
) -> None:
    standin, gateway = shared.standin, shared.gateway
    source, other = str(uuid.uuid4()), str(uuid.uuid4())
    pending = seed(standin, 230, source=source)
    busy = seed(standin, 3, source=source, state="processing")
    untouched = seed(standin, 20, source=other) + seed(standin, 20, database="elsewhere")
    response = bulk(gateway, {"source_id": source.upper()})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["matched"] == 230 and answer["truncated"] is False
    assert answer["dry_run"] is False
    assert answer["counts"] == {"cancelled": 230}
    assert [r["invocation_id"] for r in answer["results"]] == pending  # oldest first
    assert all(r == {"invocation_id": r["invocation_id"], "status": 202, "outcome": "cancelled",
                     "error": None} for r in answer["results"])
    assert puts(standin) == collections.Counter(pending)  # each once, nothing else
    assert all(standin.state_of(i) == "cancelled" for i in pending)
    assert all(standin.state_of(i) == "processing" for i in busy)
    assert all(standin.state_of(i) == "pending" for i in untouched)
    # Listed first, in pages of 100 by offset, oldest first, pending only.
    calls = list_calls(standin)
    assert calls == [
        {"source_id": source, "status": "pending", "order_by": "ASC", "limit": "100",
         "offset": str(offset)}
        for offset in (0, 100, 200)
    ]
    first_put = next(n for n, r in enumerate(standin.requests) if r.method == "PUT")
    last_list = max(n for n, r in enumerate(standin.requests) if r.method == "GET")
    assert last_list < first_put


def test_a_database_across_sources_is_cancelled_with_the_right_counts(shared: Servers) -> None:
    standin, gateway = shared.standin, shared.gateway
    database = f"db-{uuid.uuid4().hex[:8]}"
    pending = [i for _ in range(3) for i in seed(standin, 70, source=str(uuid.uuid4()),
                                                  database=database)]
    pending += seed(standin, 5, database=database, collection="other")
    gone = pending[7]
    stuck = pending[11]
    failing = pending[100]

    def behaviour(request: ReceivedRequest) -> Respond | None:
        if request.method != "PUT":
            return None
        if request.target.endswith(gone):
            return json_response(404, {"error": "NotFoundError", "message": "gone"})
        if request.target.endswith(stuck):
            return json_response(412, {"error": "InvalidArgumentError", "message": "no"})
        if request.target.endswith(failing):
            return json_response(500, {"error": "InternalError", "message": "boom"})
        return None

    standin.behaviour = behaviour
    response = bulk(gateway, {"database_name": database})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["matched"] == len(pending) == 215
    assert answer["counts"] == {"cancelled": 212, "not_cancelable": 1, "not_found": 1,
                                "upstream_error": 1}
    by_id = {r["invocation_id"]: r for r in answer["results"]}
    assert by_id[gone] == {"invocation_id": gone, "status": 404, "outcome": "not_found",
                           "error": "not_found"}
    assert by_id[stuck]["status"] == 412 and by_id[stuck]["error"] == "not_cancelable"
    # One failure never stops the others.
    assert by_id[failing] == {"invocation_id": failing, "status": 502,
                              "outcome": "upstream_error", "error": "upstream_error"}
    assert puts(standin) == collections.Counter(pending)


def test_every_cancel_of_a_batch_is_audited_like_a_single_cancel_and_the_log_verifies(
    shared: Servers, tmp_path: Path,
) -> None:
    standin, gateway = shared.standin, shared.gateway
    source = str(uuid.uuid4())
    pending = seed(standin, 12, source=source, database="audited", collection="notes")
    response = bulk(gateway, {"source_id": source}, headers={"x-request-id": "bulk-audit"})
    assert response.status_code == 200
    batch_id = response.json()["batch_id"]
    records = batch_records(gateway, batch_id)
    started, *cancels, finished = records
    assert {k: started[k] for k in started if k not in ("ts", "seq", "prev", "hash", "chain")} == {
        "event": "batch.started", "batch_id": batch_id, "request_id": "bulk-audit",
        "team": "billing", "key_id": BILLING_KEY_ID, "client": "127.0.0.1",
        "source_id": source, "dry_run": False, "limit": 1000,
    }
    assert finished["event"] == "batch.result"
    assert finished["matched"] == 12 and finished["counts"] == {"cancelled": 12}
    assert finished["status"] == 200 and finished["error"] is None
    assert finished["truncated"] is False
    per_id: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in cancels:
        per_id[record["invocation_id"]].append(record)
    assert set(per_id) == set(pending)
    for number, invocation_id in enumerate(pending, 1):
        attempt, result = per_id[invocation_id]
        assert attempt["event"] == "cancel.attempt" and attempt["outcome"] == "pending"
        assert result["event"] == "cancel.result" and result["outcome"] == "cancelled"
        assert attempt["seq"] < result["seq"]
        assert attempt["request_id"] == result["request_id"] == f"bulk-audit.{number}"
        assert (result["database"], result["collection"], result["source_id"]) == (
            "audited", "notes", source)
        assert result["status"] == 202 and result["upstream_status"] == 202
    # The request id the stand-in saw for each PUT is that cancel's own.
    seen = {r.target.rsplit("/", 1)[1]: r.header_values("x-request-id")
            for r in standin.requests if r.method == "PUT"}
    assert seen[pending[0]] == ["bulk-audit.1"]
    # batch.* records are part of the chain: both verifiers accept the log.
    assert_verify_ok(gateway.audit_path)
    done = run_script(docs_script(tmp_path), str(gateway.audit_path))
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stdout + done.stderr


def test_a_dry_run_sends_no_cancel_and_records_only_the_batch(shared: Servers) -> None:
    standin, gateway = shared.standin, shared.gateway
    source = str(uuid.uuid4())
    pending = seed(standin, 140, source=source)
    response = bulk(gateway, {"source_id": source, "dry_run": True})
    assert response.status_code == 200
    answer = response.json()
    assert answer["dry_run"] is True and answer["matched"] == 140
    assert answer["counts"] == {"would_cancel": 140}
    assert answer["results"][0] == {"invocation_id": pending[0], "status": None,
                                    "outcome": "would_cancel", "error": None}
    assert not puts(standin)
    assert all(standin.state_of(i) == "pending" for i in pending)
    records = batch_records(gateway, answer["batch_id"])
    assert [r["event"] for r in records] == ["batch.started", "batch.result"]
    assert records[0]["dry_run"] is True and records[1]["counts"] == {"would_cancel": 140}


def test_more_than_limit_is_truncated_and_only_the_oldest_limit_are_cancelled(
    shared: Servers,
) -> None:
    standin, gateway = shared.standin, shared.gateway
    database = f"db-{uuid.uuid4().hex[:8]}"
    pending = seed(standin, 120, database=database)
    response = bulk(gateway, {"database_name": database, "limit": 50})
    answer = response.json()
    assert answer["matched"] == 50 and answer["truncated"] is True
    assert puts(standin) == collections.Counter(pending[:50])
    assert all(standin.state_of(i) == "pending" for i in pending[50:])
    assert result_of(gateway, response.headers["x-request-id"])["truncated"] is True
    started = [r for r in gateway.audit_records() if r["event"] == "batch.started"
               and r["batch_id"] == answer["batch_id"]]
    assert started[0]["limit"] == 50 and started[0]["database_name"] == database


def test_exactly_limit_matching_is_not_truncated(shared: Servers) -> None:
    standin, gateway = shared.standin, shared.gateway
    source = str(uuid.uuid4())
    pending = seed(standin, 100, source=source)
    answer = bulk(gateway, {"source_id": source, "limit": 100}).json()
    assert answer["matched"] == 100 and answer["truncated"] is False
    assert puts(standin) == collections.Counter(pending)
    # One more than the limit was asked for: a second page to know there is no 101st.
    assert [c["offset"] for c in list_calls(standin)] == ["0", "100"]


def test_a_collection_scoped_team_cancels_only_its_collection_of_a_database(
    shared: Servers,
) -> None:
    standin, gateway = shared.standin, shared.gateway
    mine = seed(standin, 30, database="shared", collection="handbook")
    theirs = seed(standin, 25, database="shared", collection="payroll")
    response = bulk(gateway, {"database_name": "shared"}, key=HANDBOOK_KEY)
    assert response.status_code == 200
    answer = response.json()
    assert answer["matched"] == 55
    assert answer["counts"] == {"cancelled": 30, "forbidden": 25}
    by_id = {r["invocation_id"]: r for r in answer["results"]}
    for invocation_id in theirs:
        assert by_id[invocation_id] == {"invocation_id": invocation_id, "status": 403,
                                        "outcome": "forbidden", "error": "out_of_scope"}
        assert standin.state_of(invocation_id) == "pending"
    assert puts(standin) == collections.Counter(mine)
    # The scope came from the list's own metadata: no get_job lookup.
    assert not [r for r in standin.requests if r.method == "GET" and "?" not in r.target]
    records = batch_records(gateway, answer["batch_id"])
    refused = [r for r in records if r["event"] == "cancel.result" and r["outcome"] == "forbidden"]
    assert {r["invocation_id"] for r in refused} == set(theirs)
    assert all(r["error"] == "out_of_scope" and r["status"] == 403 for r in refused)
    attempted = {r["invocation_id"] for r in records if r["event"] == "cancel.attempt"}
    assert attempted == set(mine)


def test_a_collection_scoped_team_dry_run_reports_forbidden_ones(shared: Servers) -> None:
    standin, gateway = shared.standin, shared.gateway
    source = str(uuid.uuid4())
    mine = seed(standin, 2, source=source, database="shared", collection="handbook")
    seed(standin, 3, source=source, database="shared", collection="payroll")
    answer = bulk(gateway, {"source_id": source, "dry_run": True}, key=HANDBOOK_KEY).json()
    assert answer["counts"] == {"forbidden": 3, "would_cancel": 2}
    assert [r["invocation_id"] for r in answer["results"]
            if r["outcome"] == "would_cancel"] == mine
    assert not puts(standin)


def test_the_listed_contexts_are_cached_for_later_single_cancels(shared: Servers) -> None:
    standin, gateway = shared.standin, shared.gateway
    source = str(uuid.uuid4())
    seed(standin, 2, source=source, database="shared", collection="handbook")
    [later] = seed(standin, 1, source=source, database="shared", collection="handbook")
    bulk(gateway, {"source_id": source, "dry_run": True}, key=HANDBOOK_KEY)
    standin.requests.clear()
    assert gateway.cancel(later, key=HANDBOOK_KEY).status_code == 202
    assert [r.method for r in standin.requests] == ["PUT"]  # no get_job first


# -- listing fails: nothing is cancelled -----------------------------------------------------


def test_a_failing_second_page_cancels_nothing_and_maps_the_failure(shared: Servers) -> None:
    standin, gateway = shared.standin, shared.gateway
    source = str(uuid.uuid4())
    pending = seed(standin, 150, source=source)

    def behaviour(request: ReceivedRequest) -> Respond | None:
        if "offset=100" in request.target:
            return json_response(500, {"error": "InternalError", "message": "db down"})
        return None

    standin.behaviour = behaviour
    response = bulk(gateway, {"source_id": source})
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_error"
    assert "500" in response.json()["message"]
    assert not puts(standin)
    assert all(standin.state_of(i) == "pending" for i in pending)
    result = result_of(gateway, response.headers["x-request-id"])
    assert (result["status"], result["error"], result["matched"]) == (502, "upstream_error", 0)


def test_an_unknown_source_is_404_from_the_listing(shared: Servers) -> None:
    response = bulk(shared.gateway, {"source_id": str(uuid.uuid4())})
    assert response.status_code == 404
    assert response.json() == {"error": "NotFoundError", "message": "Source not found"}
    assert not puts(shared.standin)


def test_a_listing_that_is_not_a_list_of_jobs_is_502_and_cancels_nothing(
    shared: Servers,
) -> None:
    standin, gateway = shared.standin, shared.gateway
    source = str(uuid.uuid4())
    seed(standin, 3, source=source)
    standin.behaviour = lambda r: json_response(200, [{"id": "nope"}]) if r.method == "GET" \
        else None
    response = bulk(gateway, {"source_id": source})
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert not puts(standin)


def test_an_empty_source_matches_nothing(shared: Servers) -> None:
    source = shared.standin.add_source()
    answer = bulk(shared.gateway, {"source_id": source}).json()
    assert (answer["matched"], answer["counts"], answer["results"]) == (0, {}, [])


# -- bad bodies ------------------------------------------------------------------------------

SOURCE = "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source_id": SOURCE, "database_name": "docs"}, "source_id and database_name"),
        ({}, "source_id and database_name"),
        ({"dry_run": True}, "source_id and database_name"),
        ({"source_id": "not-a-uuid"}, "source_id"),
        ({"source_id": "{" + SOURCE + "}"}, "source_id"),
        ({"source_id": 7}, "source_id"),
        ({"database_name": ""}, "database_name"),
        ({"database_name": ["docs"]}, "database_name"),
        ({"source_id": SOURCE, "limit": 0}, "limit"),
        ({"source_id": SOURCE, "limit": 10001}, "limit"),
        ({"source_id": SOURCE, "limit": "5"}, "limit"),
        ({"source_id": SOURCE, "limit": 5.0}, "limit"),
        ({"source_id": SOURCE, "limit": True}, "limit"),
        ({"source_id": SOURCE, "dry_run": "yes"}, "dry_run"),
        ({"source_id": SOURCE, "dryrun": True}, "dryrun"),
        (b"source_id=" + SOURCE.encode(), "JSON"),
        (b"", "JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"source_id": "%s", "source_id": "%s"}' % (SOURCE.encode(), b"x"), "source_id"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"source_id": "' + SOURCE.encode() + b'", "limit": NaN}', "JSON"),
        (json.dumps({"database_name": "x" * 4100}).encode(), "4096 bytes"),
    ],
    ids=[
        "both-filters", "neither", "only-dry-run", "bad-uuid", "braced-uuid", "uuid-number",
        "empty-database", "database-list", "limit-0", "limit-10001", "limit-string",
        "limit-float", "limit-bool", "dry-run-string", "unknown-field", "non-json", "empty",
        "array", "duplicate-key", "not-utf8", "nan", "over-4-kib",
    ],
)
def test_a_bad_body_is_400_invalid_request_naming_the_field_and_lists_nothing(
    shared: Servers, body: Any, field: str,
) -> None:
    response = bulk(shared.gateway, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "invalid_request"
    assert field in error["message"]
    assert not shared.standin.requests  # nothing listed, nothing cancelled
    result = result_of(shared.gateway, response.headers["x-request-id"])
    assert (result["status"], result["error"]) == (400, "invalid_request")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json; charset=latin-1",
                                          "application/x-www-form-urlencoded"])
def test_a_content_type_other_than_json_is_400(shared: Servers, content_type: str | None) -> None:
    headers = {"authorization": f"Bearer {BILLING_KEY}"}
    if content_type is not None:
        headers["content-type"] = content_type
    response = shared.gateway.client.post(ROUTE, content=json.dumps({"source_id": SOURCE}),
                                          headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "content type" in response.json()["message"]
    assert not shared.standin.requests


def test_json_with_a_utf8_charset_is_accepted(shared: Servers) -> None:
    source = shared.standin.add_source()
    response = bulk(shared.gateway, {"source_id": source},
                    headers={"content-type": "Application/JSON; charset=UTF-8"})
    assert response.status_code == 200


def test_a_declared_body_over_4_kib_is_refused_unread_and_the_connection_closed(
    shared: Servers,
) -> None:
    response = shared.gateway.client.post(
        ROUTE, content=b"{" + b" " * 5000 + b"}",
        headers={"authorization": f"Bearer {BILLING_KEY}", "content-type": "application/json"})
    assert response.status_code == 400
    assert "4096 bytes" in response.json()["message"]
    assert response.headers.get("connection") == "close"


# -- the single cancel's checks, in its order ------------------------------------------------


def test_other_methods_are_405_with_allow_post(shared: Servers) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = shared.gateway.client.request(method, ROUTE)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert response.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("key", [None, "csg_not-a-key"])
def test_no_or_an_unknown_key_is_401_before_the_body_is_judged(
    shared: Servers, key: str | None,
) -> None:
    response = bulk(shared.gateway, b"not json", key=key)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthenticated"
    assert not shared.standin.requests
    result = result_of(shared.gateway, response.headers["x-request-id"])
    assert (result["team"], result["status"], result["error"]) == (None, 401, "unauthenticated")


def test_a_disabled_team_is_403_before_the_body_is_judged(shared: Servers) -> None:
    response = bulk(shared.gateway, b"not json", key=FROZEN_KEY)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert not shared.standin.requests


def test_a_batch_counts_once_against_the_rate_limit_and_the_next_is_429(shared: Servers) -> None:
    standin, gateway = shared.standin, shared.gateway
    source = str(uuid.uuid4())
    pending = seed(standin, 5, source=source)
    # A bad body is judged before the limit, and takes nothing from it.
    assert bulk(gateway, {"source_id": "bad"}, key=LIMITED_KEY).status_code == 400
    first = bulk(gateway, {"source_id": source}, key=LIMITED_KEY)
    assert first.status_code == 200 and first.json()["counts"] == {"cancelled": 5}
    second = bulk(gateway, {"source_id": source}, key=LIMITED_KEY)
    assert second.status_code == 429
    assert second.json()["error"] == "rate_limited"
    assert int(second.headers["retry-after"]) >= 1
    assert puts(standin) == collections.Counter(pending)


def test_no_upstream_token_is_503_after_the_rate_limit_and_lists_nothing(
    gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    gateway = gateway_factory(token=None, teams=teams())
    response = bulk(gateway, {"source_id": SOURCE})
    assert response.status_code == 503
    assert response.json()["error"] == "token_unavailable"
    # The limit comes first: a team over its limit gets 429, not 503.
    assert bulk(gateway, {"source_id": SOURCE}, key=LIMITED_KEY).status_code == 503
    assert bulk(gateway, {"source_id": SOURCE}, key=LIMITED_KEY).status_code == 429
    assert not standin.requests


# -- at most bulk.concurrency at once; SIGTERM ---------------------------------------------

PUT_DELAY = 0.25


def test_at_most_bulk_concurrency_cancels_are_in_flight_at_once(
    standin: StandIn, tmp_path: Path,
) -> None:
    source = str(uuid.uuid4())
    pending = seed(standin, 12, source=source)
    received: list[float] = []

    def slow_puts(request: ReceivedRequest) -> Delay | None:
        if request.method == "PUT":
            received.append(time.monotonic())
            return Delay(PUT_DELAY)
        return None

    standin.behaviour = slow_puts
    folder = tmp_path / "concurrency"
    folder.mkdir()
    port = free_port()
    config = write_config(folder, upstream_url=standin.base_url, port=port)
    config.write_text(config.read_text() + "\n[bulk]\nconcurrency = 3\n")
    running = start_gateway(config, port=port)
    try:
        answer = bulk(running, {"source_id": source}).json()
    finally:
        running.stop()
    assert answer["counts"] == {"cancelled": 12}
    assert puts(standin) == collections.Counter(pending)
    # Each answer comes PUT_DELAY after its PUT arrived, so the PUTs that arrived in the
    # PUT_DELAY before one are exactly those still in flight when it arrived.
    in_flight = [sum(1 for s in received if t - PUT_DELAY * 0.9 < s <= t) for t in received]
    assert max(in_flight) == 3


def test_sigterm_during_a_batch_drains_what_is_in_flight_and_records_the_result(
    gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    source = str(uuid.uuid4())
    pending = seed(standin, 60, source=source)
    standin.behaviour = lambda r: Delay(PUT_DELAY) if r.method == "PUT" else None
    gateway = gateway_factory()
    answer: dict[str, Any] = {}

    def call() -> None:  # its own client: stop() closes the gateway's
        with httpx.Client(base_url=gateway.base_url, trust_env=False) as client:
            response = client.post(ROUTE, json={"source_id": source}, timeout=30, headers={
                "authorization": f"Bearer {BILLING_KEY}"})
        answer.update(response.json(), status=response.status_code)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 10
    while len(puts(standin)) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gateway.stop() == 0  # SIGTERM, then the gateway's own drain
    caller.join(10)
    assert answer["status"] == 200
    sent = puts(standin)
    assert set(sent.values()) == {1}  # none twice
    assert 8 <= len(sent) < 60
    by_outcome = collections.defaultdict(set)
    for result in answer["results"]:
        by_outcome[result["outcome"]].add(result["invocation_id"])
    assert by_outcome["cancelled"] == set(sent)  # what was in flight finished
    assert by_outcome["unavailable"] == set(pending) - set(sent)  # nothing new started
    assert answer["counts"] == {"cancelled": len(sent), "unavailable": 60 - len(sent)}
    records = whole_lines(gateway.audit_path)
    [result] = [r for r in records if r["event"] == "batch.result"]
    assert result["counts"] == answer["counts"] and result["matched"] == 60
    shutdown = [r for r in records if r["event"] == "cancel.result" and r["error"] == "shutdown"]
    assert {r["invocation_id"] for r in shutdown} == by_outcome["unavailable"]
    attempted = {r["invocation_id"] for r in records if r["event"] == "cancel.attempt"}
    assert attempted == set(sent)


def test_an_audit_log_that_fills_up_mid_batch_stops_forwarding_but_not_the_batch(
    gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    limit = 16384  # bytes any file of the gateway may grow to: a real EFBIG mid-batch

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    source = str(uuid.uuid4())
    pending = seed(standin, 40, source=source)
    gateway = gateway_factory(preexec_fn=small_files)
    response = bulk(gateway, {"source_id": source})
    assert response.status_code == 200
    answer = response.json()
    assert answer["matched"] == 40
    refused = {r["invocation_id"] for r in answer["results"]
               if r["error"] == "audit_unavailable"}
    assert refused, "the audit log never reached the file size limit"
    assert all(r["status"] == 503 and r["outcome"] == "unavailable" for r in answer["results"]
               if r["invocation_id"] in refused)
    sent = puts(standin)
    assert not refused & set(sent)  # never an unaudited cancel
    assert set(sent) | refused == set(pending) and set(sent.values()) == {1}
    assert answer["counts"] == {"cancelled": len(sent), "unavailable": len(refused)}
    resource.prlimit(gateway.process.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    deadline = time.monotonic() + 5
    while gateway.client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.stop() == 0
    records = whole_lines(gateway.audit_path)  # retained results written after recovery
    [result] = [r for r in records if r["event"] == "batch.result"]
    assert result["counts"] == answer["counts"]
    assert_verify_ok(gateway.audit_path)


def test_once_the_circuit_opens_the_rest_of_the_batch_is_not_sent(
    gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    source = str(uuid.uuid4())
    pending = seed(standin, 30, source=source)
    gateway = gateway_factory(upstream={"breaker_failures": 5, "breaker_seconds": 60})
    standin.behaviour = lambda r: (json_response(500, {"error": "E", "message": "down"})
                                   if r.method == "PUT" else None)
    answer = bulk(gateway, {"source_id": source}).json()
    sent = puts(standin)
    assert 5 <= len(sent) < 30 and set(sent.values()) == {1}  # a 500 is never retried
    by_outcome = collections.defaultdict(set)
    for result in answer["results"]:
        by_outcome[(result["outcome"], result["error"])].add(result["invocation_id"])
    assert by_outcome[("upstream_error", "upstream_error")] == set(sent)
    assert by_outcome[("unavailable", "upstream_unavailable")] == set(pending) - set(sent)
    # And a new batch is refused before it lists anything.
    standin.requests.clear()
    refused = bulk(gateway, {"source_id": source})
    assert refused.status_code == 503 and refused.json()["error"] == "upstream_unavailable"
    assert not standin.requests
