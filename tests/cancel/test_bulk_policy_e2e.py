"""End to end: bulk cancels follow every rule a single cancel does (issue 17, findings 1, 2, 4,
6 and 7), each reproduced as the review did, against a real gateway and the stand-in."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import signal
import socket
import time
import uuid
from typing import Any

import httpx

from gateway.access import keys
from gateway.demo.standin import Delay, ReceivedRequest, StandIn
from tests.conftest import GatewayFactory
from tests.harness import BILLING_KEY, UPSTREAM_TOKEN, RunningGateway, render_toml, wait_for

ROUTE = "/gateway/v1/bulk-cancel"
DOCS_KEY = keys.new_key()  # a team that may cancel database "docs" only
SOURCE_KEY = keys.new_key()  # a team whose scope is one source


def bulk(gateway: RunningGateway, body: Any, *, key: str = BILLING_KEY,
         request_id: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    with httpx.Client(base_url=gateway.base_url, trust_env=False, timeout=60.0) as client:
        return client.post(ROUTE, content=json.dumps(body).encode(), headers=headers)


def teams(*, billing: dict[str, Any] | None = None, docs_scope: list[str] | None = None,
          docs_enabled: bool = True) -> list[dict[str, Any]]:
    return [
        {"name": "billing", "keys": [keys.stored_form(BILLING_KEY)], "scope": ["*"],
         "rate_limit": 10000.0, "burst": 10000, **(billing or {})},
        {"name": "docs", "keys": [keys.stored_form(DOCS_KEY)],
         "scope": docs_scope or ["database:docs"], "enabled": docs_enabled,
         "rate_limit": 10000.0, "burst": 10000},
        {"name": "one-source", "keys": [keys.stored_form(SOURCE_KEY)],
         "scope": ["source:0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"]},
    ]


def reload_teams(gateway: RunningGateway, new: list[dict[str, Any]]) -> None:
    text = gateway.config_path.read_text()
    before = len(config_records(gateway))
    gateway.config_path.write_text(text[: text.index("[[teams]]")] + render_toml({"teams": new}))
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: len(config_records(gateway)) > before), "the reload was not recorded"


def config_records(gateway: RunningGateway) -> list[dict[str, Any]]:
    return [r for r in gateway.audit_records() if r["event"] == "audit.config"]


def batch_records(gateway: RunningGateway, batch_id: str) -> list[dict[str, Any]]:
    def done(records: list[dict[str, Any]]) -> bool:
        return any(r["event"] == "batch.result" and r.get("batch_id") == batch_id
                   for r in records)

    return [r for r in gateway.wait_for_records(done) if r.get("batch_id") == batch_id]


def timed_puts(standin: StandIn, seconds: float) -> list[float]:
    """Make every PUT take `seconds`; return the list their arrival times will fill."""
    arrivals: list[float] = []

    def slow(request: ReceivedRequest) -> Delay | None:
        if request.method != "PUT":
            return None
        arrivals.append(time.monotonic())
        return Delay(seconds)

    standin.behaviour = slow
    return arrivals


def most_at_once(arrivals: list[float], seconds: float) -> int:
    """The most PUTs in flight together, each lasting `seconds` from its arrival."""
    return max((sum(1 for other in arrivals if start <= other < start + seconds * 0.95)
                for start in arrivals), default=0)


# -- finding 1: bulk cancels count against max_in_flight; batches are bounded ------------------


def test_a_batchs_cancels_enter_max_in_flight_and_a_single_cancel_meanwhile_gets_429(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    """A team limited to 1 in flight had 13 PUTs in flight at once through bulk calls."""
    gateway = gateway_factory(teams=teams(billing={"max_in_flight": 1}),
                              bulk={"concurrency": 4})
    source = str(uuid.uuid4())
    jobs = [standin.add_pending(source_id=source) for _ in range(4)]
    arrivals = timed_puts(standin, 0.4)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        batch = pool.submit(bulk, gateway, {"source_id": source})
        assert wait_for(lambda: arrivals)
        single = gateway.cancel(standin.add_pending())
        answer = batch.result(timeout=30)
    assert single.status_code == 429 and single.headers["retry-after"] == "1"
    assert answer.status_code == 200
    assert answer.json()["counts"] == {"cancelled": 4}  # they waited for room, none failed
    assert sorted(standin.state_of(j) for j in jobs) == ["cancelled"] * 4
    assert len(arrivals) == 4 and most_at_once(arrivals, 0.4) == 1


def test_a_third_concurrent_batch_of_a_team_gets_429(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    """16 concurrent dry runs once caused 1,616 list pages: `bulk.max_batches` (2) bounds
    the batches of a team that run at once."""
    gateway = gateway_factory(teams=teams())
    arrivals = timed_puts(standin, 1.0)
    sources = [str(uuid.uuid4()) for _ in range(3)]
    for source in sources:
        standin.add_pending(source_id=source)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = [pool.submit(bulk, gateway, {"source_id": s}) for s in sources[:2]]
        assert wait_for(lambda: len(arrivals) == 2)
        third = bulk(gateway, {"source_id": sources[2]}, request_id="third-batch")
        assert [f.result(timeout=30).status_code for f in running] == [200, 200]
    assert third.status_code == 429 and third.headers["retry-after"] == "1"
    assert third.json()["error"] == "rate_limited"
    [result] = [r for r in gateway.wait_for_records(lambda rs: any(
        r.get("request_id") == "third-batch" for r in rs)) if r.get("request_id") == "third-batch"]
    assert (result["event"], result["status"], result["error"]) == (
        "batch.result", 429, "rate_limited")
    assert len(arrivals) == 2  # nothing of the third was listed or sent
    assert bulk(gateway, {"source_id": sources[2]}).status_code == 200  # places were given back


# -- finding 2: a running batch follows the live policy ----------------------------------------


def test_the_kill_switch_stops_a_running_batch(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    """After `enabled = false` and SIGHUP, a running batch sent 23 more PUTs over 6.7 s."""
    gateway = gateway_factory(teams=teams(), bulk={"concurrency": 1})
    jobs = [standin.add_pending(database="docs") for _ in range(12)]
    arrivals = timed_puts(standin, 0.3)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        batch = pool.submit(bulk, gateway, {"database_name": "docs"}, key=DOCS_KEY)
        assert wait_for(lambda: arrivals)
        reload_teams(gateway, teams(docs_enabled=False))
        sent_at_reload = len(arrivals)
        answer = batch.result(timeout=30).json()
    assert len(arrivals) <= sent_at_reload + 1  # at most the one in flight, then nothing
    stopped = [r for r in answer["results"] if r["outcome"] == "forbidden"]
    assert len(stopped) == 12 - len(arrivals) >= 8
    assert all((r["status"], r["error"]) == (403, "forbidden") for r in stopped)
    assert answer["counts"] == {"cancelled": len(arrivals), "forbidden": len(stopped)}
    for result in stopped:
        assert standin.state_of(result["invocation_id"]) == "pending"
    records = batch_records(gateway, answer["batch_id"])
    refused = {r["invocation_id"] for r in records
               if r["event"] == "cancel.result" and r["error"] == "forbidden"}
    assert refused == {r["invocation_id"] for r in stopped} and refused < set(jobs)


def test_a_removed_key_stops_a_running_batch(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(teams=teams(), bulk={"concurrency": 1})
    for _ in range(8):
        standin.add_pending(database="docs")
    arrivals = timed_puts(standin, 0.3)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        batch = pool.submit(bulk, gateway, {"database_name": "docs"}, key=DOCS_KEY)
        assert wait_for(lambda: arrivals)
        new = teams()
        new[1]["keys"] = [keys.stored_form(keys.new_key())]
        reload_teams(gateway, new)
        answer = batch.result(timeout=30).json()
    assert answer["counts"]["forbidden"] >= 5
    assert answer["counts"]["cancelled"] == len(arrivals) <= 3


def test_a_narrowed_scope_skips_what_it_no_longer_covers(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(teams=teams(docs_scope=["database:docs"]),
                              bulk={"concurrency": 1})
    jobs = [standin.add_pending(database="docs", collection=c)
            for c in itertools.islice(itertools.cycle(["handbook", "payroll"]), 10)]
    arrivals = timed_puts(standin, 0.3)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        batch = pool.submit(bulk, gateway, {"database_name": "docs"}, key=DOCS_KEY)
        assert wait_for(lambda: arrivals)
        reload_teams(gateway, teams(docs_scope=["collection:docs/handbook"]))
        sent_at_reload = len(arrivals)
        answer = batch.result(timeout=30).json()
    skipped = [j for j in jobs[sent_at_reload + 1:]
               if standin.state_of(j) == "pending"]
    assert skipped, "nothing was skipped"
    assert answer["matched"] == 10
    assert answer["counts"]["forbidden"] == len(skipped) + sum(
        1 for j in jobs[sent_at_reload:sent_at_reload + 1] if standin.state_of(j) == "pending")
    listed = {r["invocation_id"] for r in answer["results"]}
    assert not listed & set(skipped)  # out of scope: counted, not listed
    records = batch_records(gateway, answer["batch_id"])
    assert {r["invocation_id"] for r in records if r.get("error") == "out_of_scope"} >= set(
        skipped)
    # What is still in scope went on being cancelled.
    assert all(standin.state_of(j) == "cancelled"
               for j in jobs[sent_at_reload + 1:] if j not in skipped)


# -- finding 4: what the caller was answered is what is recorded ------------------------------


def test_a_bulk_body_that_times_out_is_recorded_408(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(teams=teams(), server={"header_timeout": 1.0})
    head = (f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {BILLING_KEY}"
            "\r\nContent-Type: application/json\r\nContent-Length: 60\r\n"
            "X-Request-Id: slow-bulk-body\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + b'{"source_id": ')
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408")
    [record] = [r for r in gateway.wait_for_records(lambda rs: any(
        r.get("request_id") == "slow-bulk-body" for r in rs))
        if r.get("request_id") == "slow-bulk-body"]
    assert (record["event"], record["status"], record["error"]) == (
        "batch.result", 408, "request_timeout")
    assert not standin.requests


# -- finding 6: upstream text in records is redacted too --------------------------------------


def test_a_jobs_names_holding_the_token_are_recorded_redacted(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(teams=teams())
    source = str(uuid.uuid4())
    job = standin.add_pending(source_id=source, database=f"db-{UPSTREAM_TOKEN}",
                              collection=UPSTREAM_TOKEN[4:20].upper())
    answer = bulk(gateway, {"source_id": source}).json()
    assert answer["counts"] == {"cancelled": 1}
    records = [r for r in batch_records(gateway, answer["batch_id"])
               if r.get("invocation_id") == job]
    assert {r["event"] for r in records} == {"cancel.attempt", "cancel.result"}
    for record in records:
        assert (record["database"], record["collection"], record["source_id"]) == (
            "[redacted]", "[redacted]", source)
    audit_text = gateway.audit_path.read_text()
    assert UPSTREAM_TOKEN not in audit_text and UPSTREAM_TOKEN[4:20].upper() not in audit_text


# -- finding 7: bulk answers reveal nothing outside the scope ---------------------------------


def test_a_selector_the_scope_cannot_match_is_403_before_any_listing(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    """A dry run on another team's database listed its invocation ids."""
    gateway = gateway_factory(teams=teams())
    theirs = [standin.add_pending(database="payroll") for _ in range(3)]
    for key, body in ((DOCS_KEY, {"database_name": "payroll", "dry_run": True}),
                      (SOURCE_KEY, {"source_id": str(uuid.uuid4())}),
                      (SOURCE_KEY, {"database_name": "docs"})):
        refused = bulk(gateway, body, key=key)
        assert refused.status_code == 403, body
        assert refused.json()["error"] == "out_of_scope"
        assert not any(j in refused.text for j in theirs)
    assert not standin.requests  # nothing was listed
    own_source = "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"
    standin.add_pending(source_id=own_source)
    own = bulk(gateway, {"source_id": own_source, "dry_run": True}, key=SOURCE_KEY)
    assert own.status_code == 200 and own.json()["counts"] == {"would_cancel": 1}


def test_a_source_selector_lists_only_the_jobs_in_scope(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(teams=teams())
    source = str(uuid.uuid4())
    mine = [standin.add_pending(source_id=source, database="docs") for _ in range(2)]
    theirs = [standin.add_pending(source_id=source, database="payroll") for _ in range(3)]
    answer = bulk(gateway, {"source_id": source}, key=DOCS_KEY).json()
    assert (answer["matched"], answer["counts"]) == (5, {"cancelled": 2, "forbidden": 3})
    assert sorted(r["invocation_id"] for r in answer["results"]) == sorted(mine)
    records = batch_records(gateway, answer["batch_id"])
    assert {r["invocation_id"] for r in records if r.get("error") == "out_of_scope"} == set(
        theirs)  # the audit trail still names them
    assert all(standin.state_of(j) == "pending" for j in theirs)
