"""End to end: the circuit breaker opens on consecutive upstream failures, answers 503 at once
with nothing forwarded (and nothing looked up), lets one probe through after the pause, and
closes on its success; its gauge and log lines follow."""

from __future__ import annotations

import concurrent.futures
import itertools
import time
import uuid
from collections.abc import Callable

from gateway.access import keys
from gateway.demo.standin import Delay, ReceivedRequest, Respond, StandIn
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


def test_one_probe_at_a_time_and_late_answers_from_before_the_opening_do_not_move_it(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    """Issue 17, finding 3, as reproduced: with `breaker_failures = 1`, `breaker_seconds = 0.5`
    and an upstream that answers 503 after 1 s, a cancel sent before the circuit opened
    answered while the first probe was out, opened it again and cleared the probe's flag, so a
    second probe PUT overlapped the first."""
    gateway = gateway_factory(upstream={"retries": 0, "breaker_failures": 1,
                                        "breaker_seconds": 0.5, "timeout": 5.0})
    arrivals: list[float] = []

    def slow_failure(request: ReceivedRequest) -> Delay | None:
        if request.method != "PUT":
            return None
        arrivals.append(time.monotonic())
        return Delay(1.0, UNAVAILABLE)

    standin.behaviour = slow_failure
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(gateway.cancel, str(uuid.uuid4()))  # opens it at about 1.0 s
        time.sleep(0.6)
        late = pool.submit(gateway.cancel, str(uuid.uuid4()))  # sent closed, answers at 1.6 s
        time.sleep(0.45)
        assert first.result(timeout=10).status_code == 502
        opened = time.monotonic()
        others = []
        while time.monotonic() - start < 3.6:  # cancels keep coming: each may be a probe
            others.append(pool.submit(gateway.cancel, str(uuid.uuid4())))
            time.sleep(0.1)
        assert late.result(timeout=10).status_code == 502
        statuses = [f.result(timeout=10).status_code for f in others]
    probes = sorted(t for t in arrivals if t > opened)
    assert probes, "no probe was sent"
    assert statuses.count(502) == len(probes)  # every other cancel: 503 at once
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(gap >= 0.95 for gap in gaps), f"probe PUTs overlapped: gaps {gaps}"
