"""End to end: the circuit breaker opens on consecutive upstream failures, answers 503 at once
with nothing forwarded (and nothing looked up), lets one probe through after the pause, and
closes on its success; its gauge and log lines follow."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from gateway.access import keys
from gateway.demo.standin import Respond, StandIn
from tests.harness import BILLING_KEY, RunningGateway

GatewayFactory = Callable[..., RunningGateway]
UNAVAILABLE = Respond(503, b"maintenance", (("content-type", "text/plain"),))


def gauge(gateway: RunningGateway) -> float:
    for line in gateway.client.get("/metrics").text.splitlines():
        if line.startswith("chroma_sync_gateway_upstream_circuit_open "):
            return float(line.split()[1])
    raise AssertionError("gauge not rendered")


def test_breaker_opens_refuses_without_forwarding_then_a_probe_closes_it(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    # A scoped team: while open, not even its scope lookup may reach upstream.
    teams = [{"name": "billing", "keys": [keys.stored_form(BILLING_KEY)],
              "scope": ["database:docs"], "rate_limit": 1000.0, "burst": 1000}]
    gateway = gateway_factory(
        teams=teams, upstream={"retries": 0, "breaker_failures": 2, "breaker_seconds": 1.0})
    standin.behaviour = lambda request: UNAVAILABLE
    for _ in range(2):
        assert gateway.cancel(str(uuid.uuid4())).status_code == 502
    assert gauge(gateway) == 1.0
    sent = len(standin.requests)

    invocation = standin.add_pending()
    refused = gateway.cancel(invocation, headers={"x-request-id": "while-open"})

    assert refused.status_code == 503
    body = refused.json()
    assert body["error"] == "upstream_unavailable" and "circuit open" in body["message"]
    assert len(standin.requests) == sent  # no PUT, no lookup
    [result] = [r for r in gateway.wait_for_records(
        lambda rs: any(r.get("request_id") == "while-open" for r in rs))
        if r.get("request_id") == "while-open"]
    assert (result["event"], result["outcome"], result["status"], result["error"]) == (
        "cancel.result", "unavailable", 503, "upstream_unavailable")
    assert result["attempts"] == 0

    standin.behaviour = None
    time.sleep(1.1)
    probe = gateway.cancel(invocation)

    assert probe.status_code == 202
    assert standin.state_of(invocation) == "cancelled"
    assert gauge(gateway) == 0.0
    assert gateway.cancel(standin.add_pending()).status_code == 202
    events = [entry["event"] for entry in gateway.logs()]
    assert events.index("upstream.circuit_opened") < events.index("upstream.circuit_probe")
    assert events.index("upstream.circuit_probe") < events.index("upstream.circuit_closed")


def test_a_failed_probe_opens_it_again(gateway_factory: GatewayFactory, standin: StandIn) -> None:
    gateway = gateway_factory(
        upstream={"retries": 0, "breaker_failures": 1, "breaker_seconds": 0.5})
    standin.behaviour = lambda request: UNAVAILABLE
    assert gateway.cancel(str(uuid.uuid4())).status_code == 502
    time.sleep(0.6)

    assert gateway.cancel(str(uuid.uuid4())).status_code == 502  # the probe, failing
    sent = len(standin.requests)
    assert gateway.cancel(str(uuid.uuid4())).status_code == 503
    assert len(standin.requests) == sent
    assert gauge(gateway) == 1.0


def test_4xx_answers_do_not_count_as_failures(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(upstream={"breaker_failures": 2})
    for _ in range(4):
        assert gateway.cancel(str(uuid.uuid4())).status_code == 404  # unknown: upstream's 404
    assert gauge(gateway) == 0.0
