"""Traces end to end: the real gateway exports over OTLP/HTTP to a receiver on loopback that
decodes the spans; the caller's W3C trace is continued and carried upstream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.access import keys
from gateway.demo.standin import StandIn
from tests.conftest import GatewayFactory
from tests.harness import BILLING_KEY, UPSTREAM_TOKEN, default_teams, wait_for
from tests.otlp import otlp_receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SCOPED_KEY = keys.new_key()


def teams() -> list[dict[str, object]]:
    return [*default_teams(), {"name": "docs", "keys": [keys.stored_form(SCOPED_KEY)],
                               "scope": ["database:docs"]}]


def test_a_cancel_continues_the_callers_trace_with_spans_for_each_step_and_sends_it_upstream(
    gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    with otlp_receiver() as receiver:
        gateway = gateway_factory(teams=teams(), traces={
            "otlp_endpoint": receiver.endpoint, "service_name": "gw-under-test"})
        job = standin.add_pending(database="docs")
        response = gateway.cancel(job, key=SCOPED_KEY, headers={
            "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "x-request-id": "traced-1"})
        assert response.status_code == 202
        assert gateway.stop() == 0  # shutdown sends what is buffered
        spans = {s.name: s for s in receiver.spans}

    request = spans["PUT /api/v1/invocations/{invocation_id}"]
    assert request.trace_id == TRACE_ID and request.parent_span_id == CALLER_SPAN
    assert request.attributes["http.response.status_code"] == 202
    assert request.attributes["gateway.request_id"] == "traced-1"
    assert request.resource["service.name"] == "gw-under-test"
    for step in ("get_job", "audit.commit", "cancel"):
        assert spans[step].trace_id == TRACE_ID, step
        assert spans[step].parent_span_id == request.span_id, step
    # Upstream saw the trace, with the span of the call that carried it as parent.
    sent = {r.method: r.header_values("traceparent") for r in standin.requests}
    assert sent["PUT"] == [f"00-{TRACE_ID}-{spans['cancel'].span_id}-01"]
    assert sent["GET"] == [f"00-{TRACE_ID}-{spans['get_job'].span_id}-01"]
    exported = repr(receiver.spans)
    for secret in (UPSTREAM_TOKEN, SCOPED_KEY, BILLING_KEY):
        assert secret not in exported


def test_a_failed_put_is_a_span_with_the_error_code_as_its_status(
    gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    with otlp_receiver() as receiver:
        gateway = gateway_factory(traces={"otlp_endpoint": receiver.endpoint})
        standin.token = "refused"
        assert gateway.cancel(standin.add_pending()).status_code == 502
        assert gateway.stop() == 0
        cancel = next(s for s in receiver.spans if s.name == "cancel")
    assert cancel.status_code == 2  # STATUS_CODE_ERROR
    assert cancel.status_message == "upstream_auth_failed"


def test_with_traces_off_nothing_is_sent_upstream_and_opentelemetry_is_never_imported(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path,
) -> None:
    gateway = gateway_factory()
    assert gateway.cancel(standin.add_pending(), headers={
        "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}).status_code == 202
    assert all(not r.header_values("traceparent") for r in standin.requests)
    probe = ("import sys, gateway.cli.main, gateway.server.protocol, gateway.server.app; "
             "print(any(m.startswith('opentelemetry') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True, env=dict(os.environ))
    assert result.stdout.strip() == "False"


def test_an_unreachable_collector_never_fails_a_cancel(
    gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    with otlp_receiver() as receiver:
        endpoint = receiver.endpoint
    gateway = gateway_factory(traces={"otlp_endpoint": endpoint})  # nobody listens now
    assert gateway.cancel(standin.add_pending()).status_code == 202
    wait_for(lambda: any(r["event"] == "cancel.result" for r in gateway.audit_records()))
