"""Least privilege over real sockets: a scoped team's cancel is looked up, then decided.

The gateway runs as a subprocess against the stand-in, which holds jobs in two databases,
several collections and two sources.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.access import keys
from gateway.demo.standin import Respond, Stall, StandIn, json_response
from tests.conftest import GatewayFactory
from tests.harness import BILLING_KEY, UPSTREAM_TOKEN, RunningGateway
from tests.server.test_app_e2e import (
    FORWARDED_HEADERS,
    assert_error,
    new_request_id,
    records_for,
)

DOCS_KEY = keys.new_key()  # scope: database docs
WEB_KEY = keys.new_key()  # scope: collection search/web
SOURCE_KEY = keys.new_key()  # scope: one source
SOURCE = "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"
OTHER_SOURCE = "5d6e7f80-91a2-4b3c-8d4e-5f6a7b8c9d0e"


def scoped_teams() -> list[dict[str, Any]]:
    return [
        {"name": "billing", "keys": [keys.stored_form(BILLING_KEY)], "scope": ["*"],
         "rate_limit": 1e6, "burst": 10**6},
        {"name": "docs", "keys": [keys.stored_form(DOCS_KEY)], "scope": ["database:docs"],
         "rate_limit": 1e6, "burst": 10**6},
        {"name": "web", "keys": [keys.stored_form(WEB_KEY)], "scope": ["collection:search/web"],
         "rate_limit": 1e6, "burst": 10**6},
        {"name": "ingest", "keys": [keys.stored_form(SOURCE_KEY)],
         "scope": [f"source:{SOURCE.upper()}"], "rate_limit": 1e6, "burst": 10**6},
    ]


@pytest.fixture
def scoped(gateway_factory: GatewayFactory) -> RunningGateway:
    return gateway_factory(teams=scoped_teams())


def cancel(gateway: RunningGateway, invocation: str, key: str) -> tuple[Any, str]:
    request_id = new_request_id()
    response = gateway.cancel(invocation, key=key, headers={"x-request-id": request_id})
    return response, request_id


def methods(standin: StandIn) -> list[str]:
    return [request.method for request in standin.requests]


def test_scoped_team_cancels_in_its_database_after_one_lookup(
    scoped: RunningGateway, standin: StandIn
) -> None:
    invocation = standin.add_pending(database="docs", collection="handbook", source_id=SOURCE)
    response, request_id = cancel(scoped, invocation, DOCS_KEY)
    assert response.status_code == 202, response.text
    assert methods(standin) == ["GET", "PUT"]
    assert standin.requests[0].target == f"/api/v1/invocations/{invocation}"
    assert standin.state_of(invocation) == "cancelled"
    attempt, result = records_for(scoped, request_id, 2)
    for record in (attempt, result):
        assert (record["database"], record["collection"], record["source_id"]) == (
            "docs", "handbook", SOURCE)
    assert (result["outcome"], result["team"]) == ("cancelled", "docs")


def test_out_of_scope_is_403_with_no_put_and_names_nothing_of_the_job(
    scoped: RunningGateway, standin: StandIn
) -> None:
    invocation = standin.add_pending(database="search", collection="web",
                                     source_id=OTHER_SOURCE)
    response, request_id = cancel(scoped, invocation, DOCS_KEY)
    message = assert_error(response, 403, "out_of_scope")
    for secret_name in ("search", "web", OTHER_SOURCE):
        assert secret_name not in message
    assert methods(standin) == ["GET"]
    assert standin.state_of(invocation) == "pending"
    [result] = records_for(scoped, request_id, 1)
    assert (result["event"], result["outcome"], result["error"], result["status"]) == (
        "cancel.result", "forbidden", "out_of_scope", 403)
    # The auditors may see what was refused; the caller may not.
    assert (result["database"], result["collection"]) == ("search", "web")


@pytest.mark.parametrize(("key", "job", "allowed"), [
    (DOCS_KEY, {"database": "docs", "collection": "anything"}, True),
    (DOCS_KEY, {"database": "docs-staging", "collection": "handbook"}, False),
    (WEB_KEY, {"database": "search", "collection": "web"}, True),
    (WEB_KEY, {"database": "search", "collection": "images"}, False),
    (WEB_KEY, {"database": "docs", "collection": "web"}, False),
    (SOURCE_KEY, {"database": "docs", "collection": "handbook", "source_id": SOURCE}, True),
    (SOURCE_KEY, {"database": "docs", "collection": "handbook",
                  "source_id": OTHER_SOURCE}, False),
    (SOURCE_KEY, {"database": "docs", "collection": "handbook", "source_id": None}, False),
], ids=["database-match", "database-other", "collection-match", "collection-other-name",
        "collection-other-database", "source-match", "source-other", "source-none"])
def test_each_scope_kind_matches_only_its_jobs(
    scoped: RunningGateway, standin: StandIn, key: str, job: dict[str, Any], allowed: bool
) -> None:
    invocation = standin.add_pending(**job)
    response, _ = cancel(scoped, invocation, key)
    if allowed:
        assert response.status_code == 202, response.text
        assert methods(standin) == ["GET", "PUT"]
    else:
        assert_error(response, 403, "out_of_scope")
        assert methods(standin) == ["GET"]
        assert standin.state_of(invocation) == "pending"


def test_lookup_404_is_404_and_nothing_is_forwarded(
    scoped: RunningGateway, standin: StandIn
) -> None:
    unknown = "11111111-2222-4333-8444-555555555555"
    response, request_id = cancel(scoped, unknown, DOCS_KEY)
    assert response.status_code == 404
    assert response.json() == {"error": "NotFoundError", "message": "Invocation not found"}
    assert methods(standin) == ["GET"]
    [result] = records_for(scoped, request_id, 1)
    assert (result["outcome"], result["status"], result["upstream_status"]) == (
        "not_found", 404, 404)


@pytest.mark.parametrize(("answer", "status", "code"), [
    (json_response(500, {"error": "InternalError", "message": "db down"}), 502,
     "upstream_error"),
    (json_response(401, {"error": "Unauthorized", "message": "bad key"}), 502,
     "upstream_auth_failed"),
    (json_response(403, {"error": "Forbidden", "message": "no access"}), 502,
     "upstream_auth_failed"),
    (Respond(302, b"", (("location", "https://elsewhere.example/"),)), 502,
     "upstream_redirect"),
    (Stall(5.0), 504, "upstream_timeout"),
    (json_response(200, {"id": "x", "status": "pending"}), 502, "upstream_unavailable"),
    (Respond(200, b"<html>maintenance</html>", (("content-type", "text/html"),)), 502,
     "upstream_unavailable"),
], ids=["500", "401", "403", "redirect", "timeout", "not-a-job", "html"])
def test_a_failed_lookup_is_mapped_and_nothing_is_forwarded(
    scoped: RunningGateway, standin: StandIn, answer: Any, status: int, code: str
) -> None:
    invocation = standin.add_pending(database="docs")
    standin.behaviour = lambda request: answer if request.method == "GET" else None
    response, request_id = cancel(scoped, invocation, DOCS_KEY)
    message = assert_error(response, status, code)
    assert UPSTREAM_TOKEN not in message
    assert methods(standin) == ["GET"]
    assert standin.state_of(invocation) == "pending"
    [result] = records_for(scoped, request_id, 1)
    assert (result["event"], result["error"], result["status"]) == ("cancel.result", code,
                                                                     status)


def test_a_job_missing_its_collection_name_is_a_broken_response(
    scoped: RunningGateway, standin: StandIn
) -> None:
    invocation = standin.add_pending(database="docs")
    job = standin.job_of(invocation)
    assert job is not None
    del job["metadata"]["collection_name"]
    standin.behaviour = lambda r: json_response(200, job) if r.method == "GET" else None
    response, _ = cancel(scoped, invocation, DOCS_KEY)
    assert_error(response, 502, "upstream_unavailable")
    assert methods(standin) == ["GET"]


def test_the_job_context_is_cached_and_the_status_is_not(
    scoped: RunningGateway, standin: StandIn
) -> None:
    invocation = standin.add_pending(database="docs")
    first, _ = cancel(scoped, invocation, DOCS_KEY)
    second, _ = cancel(scoped, invocation, DOCS_KEY)
    assert (first.status_code, second.status_code) == (202, 412)
    assert methods(standin) == ["GET", "PUT", "PUT"]  # the second cancel asked upstream again
    metrics = scoped.client.get("/metrics").text
    assert 'chroma_sync_gateway_job_lookups_total{result="hit"} 1.0' in metrics
    assert 'chroma_sync_gateway_job_lookups_total{result="miss"} 1.0' in metrics


def test_an_unrestricted_team_sends_no_lookup(scoped: RunningGateway, standin: StandIn) -> None:
    invocation = standin.add_pending(database="search", collection="web")
    response, request_id = cancel(scoped, invocation, BILLING_KEY)
    assert response.status_code == 202
    assert methods(standin) == ["PUT"]
    _attempt, result = records_for(scoped, request_id, 2)
    assert (result["database"], result["collection"], result["source_id"]) == (None, None, None)


def test_record_context_looks_up_every_cancel(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(teams=scoped_teams(), audit={"record_context": True})
    invocation = standin.add_pending(database="search", collection="web", source_id=SOURCE)
    response, request_id = cancel(gateway, invocation, BILLING_KEY)
    assert response.status_code == 202
    assert methods(standin) == ["GET", "PUT"]
    attempt, _result = records_for(gateway, request_id, 2)
    assert (attempt["database"], attempt["collection"], attempt["source_id"]) == (
        "search", "web", SOURCE)


def test_the_lookup_carries_only_the_header_allowlist(
    scoped: RunningGateway, standin: StandIn
) -> None:
    invocation = standin.add_pending(database="docs")
    request_id = new_request_id()
    scoped.cancel(invocation, key=DOCS_KEY, headers={
        "x-request-id": request_id, "x-chroma-token": "caller-copy", "cookie": "a=b",
        "x-forwarded-for": "10.1.2.3"})
    get, put = standin.requests
    for sent in (get, put):
        assert {name for name, _ in sent.headers} <= FORWARDED_HEADERS
        assert sent.header_values("x-chroma-token") == [UPSTREAM_TOKEN]
        assert sent.header_values("x-request-id") == [request_id]


def test_lookup_cache_zero_looks_up_every_time(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(teams=scoped_teams(), upstream={"lookup_cache": 0})
    invocation = standin.add_pending(database="docs")
    cancel(gateway, invocation, DOCS_KEY)
    cancel(gateway, invocation, DOCS_KEY)
    assert methods(standin) == ["GET", "PUT", "GET", "PUT"]


def test_check_config_lists_each_teams_scope(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    import subprocess
    import sys

    gateway = gateway_factory(teams=scoped_teams())
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(gateway.config_path)],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "scope database:docs" in result.stdout
    assert "scope collection:search/web" in result.stdout
    assert f"scope source:{SOURCE}" in result.stdout
    assert "scope *" in result.stdout
    assert json.dumps(UPSTREAM_TOKEN)[1:-1] not in result.stdout
