"""The cancel pipeline on the real gateway: what operators read of it. A refused upstream token
shows in one metric whichever call met it (`call` = cancel or get_job), and the access log
carries the error code, so that two 403s tell apart."""

from __future__ import annotations

from pathlib import Path

from gateway.access import keys
from gateway.demo.standin import StandIn
from tests.conftest import GatewayFactory
from tests.harness import BILLING_KEY, FROZEN_KEY, default_teams, wait_for

SCOPED_KEY = keys.new_key()


def teams() -> list[dict[str, object]]:
    return [*default_teams(), {"name": "docs", "keys": [keys.stored_form(SCOPED_KEY)],
                               "scope": ["database:docs"]}]


def failures(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("chroma_sync_gateway_upstream_failures_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split("{", 1)[1].rstrip("}")] = float(value)
    return found


def test_a_refused_token_counts_as_an_upstream_failure_of_the_call_that_met_it(
    gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    gateway = gateway_factory(teams=teams())
    job = standin.add_pending(database="docs")
    standin.token = "the-account-rotated-its-key"
    assert gateway.cancel(job, key=SCOPED_KEY).status_code == 502  # its lookup is refused
    assert gateway.cancel(job, key=BILLING_KEY).status_code == 502  # the PUT is refused
    metrics = gateway.client.get("/metrics").text
    assert failures(metrics) == {
        'call="get_job",error="upstream_auth_failed"': 1.0,
        'call="cancel",error="upstream_auth_failed"': 1.0,
    }


def test_a_lookup_answered_404_is_the_callers_answer_not_an_upstream_failure(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory(teams=teams())
    assert gateway.cancel("0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4", key=SCOPED_KEY).status_code \
        == 404
    assert failures(gateway.client.get("/metrics").text) == {}


def test_the_access_log_names_the_error_code_of_each_answer(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path,
) -> None:
    gateway = gateway_factory(teams=teams())
    answers = {
        "forbidden": gateway.cancel(standin.add_pending(), key=FROZEN_KEY),
        "out_of_scope": gateway.cancel(standin.add_pending(database="search"), key=SCOPED_KEY),
        None: gateway.cancel(standin.add_pending(database="docs"), key=SCOPED_KEY),
        "not_found": gateway.client.get("/nowhere"),
        "method_not_allowed": gateway.client.get("/api/v1/invocations/x"),
    }
    assert [r.status_code for r in answers.values()] == [403, 403, 202, 404, 405]
    wanted = {r.headers["x-request-id"]: code for code, r in answers.items()}

    def access() -> dict[str, object]:
        return {e["request_id"]: e.get("error", "<absent>") for e in gateway.logs()
                if e.get("event") == "access" and e.get("request_id") in wanted}

    wait_for(lambda: len(access()) == len(wanted))
    assert access() == wanted
