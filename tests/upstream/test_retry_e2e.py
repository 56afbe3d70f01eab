"""End to end: retries, reconciliation, max_in_flight and shutdown, against the real stand-in
misbehaving per invocation (`StandIn.script`), over loopback sockets."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.access import keys
from gateway.demo.standin import (
    Delay,
    ReceivedRequest,
    Reset,
    Respond,
    Stall,
    StandIn,
    TakeEffect,
    json_response,
)
from tests.harness import BILLING_KEY, RunningGateway, free_port

GatewayFactory = Callable[..., RunningGateway]
UNAVAILABLE = Respond(503, b"maintenance", (("content-type", "text/plain"),))


def cancel(gateway: RunningGateway, invocation: str) -> tuple[httpx.Response, str]:
    request_id = f"retry-{uuid.uuid4().hex}"
    response = gateway.cancel(invocation, headers={"x-request-id": request_id})
    return response, request_id


def records_of(gateway: RunningGateway, request_id: str) -> tuple[list[dict[str, Any]],
                                                                   dict[str, Any]]:
    """The attempt records and the result of one cancel, once its result has landed."""
    def mine(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r.get("request_id") == request_id]

    records = mine(gateway.wait_for_records(
        lambda rs: any(r["event"] == "cancel.result" for r in mine(rs))))
    attempts = [r for r in records if r["event"] == "cancel.attempt"]
    [result] = [r for r in records if r["event"] == "cancel.result"]
    return attempts, result


def puts_of(standin: StandIn, invocation: str) -> list[ReceivedRequest]:
    return [r for r in standin.requests if r.method == "PUT" and r.target.endswith(invocation)]


def gets_of(standin: StandIn, invocation: str) -> list[ReceivedRequest]:
    return [r for r in standin.requests if r.method == "GET" and r.target.endswith(invocation)]


def watch_attempts_on_disk(gateway: RunningGateway, standin: StandIn) -> list[list[int]]:
    """When each PUT arrives, note the `attempt` numbers already in the audit file."""
    seen: list[list[int]] = []

    def behaviour(request: ReceivedRequest) -> None:
        if request.method == "PUT":
            request_id = request.header_values("x-request-id")[0]
            lines = gateway.audit_path.read_bytes().splitlines()
            seen.append([r["attempt"] for r in map(json.loads, lines)
                         if r["event"] == "cancel.attempt" and r["request_id"] == request_id])

    standin.behaviour = behaviour
    return seen


def test_503_then_202_is_retried_each_attempt_on_disk_before_its_put(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory()
    invocation = standin.add_pending()
    standin.script(invocation, [UNAVAILABLE])
    on_disk = watch_attempts_on_disk(gateway, standin)

    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 202 and response.json() == {}
    assert on_disk == [[1], [1, 2]]
    attempts, result = records_of(gateway, request_id)
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert (result["status"], result["outcome"], result["upstream_status"]) == (
        202, "cancelled", 202)
    assert (result["attempts"], result["reconciled"]) == (2, False)
    assert standin.state_of(invocation) == "cancelled"


def test_429_with_retry_after_then_202_honours_the_wait(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory()
    invocation = standin.add_pending()
    standin.script(invocation, [json_response(
        429, {"error": "TooMany", "message": "slow down"}, (("retry-after", "1"),))])

    started = time.monotonic()
    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 202
    assert time.monotonic() - started >= 1.0
    _, result = records_of(gateway, request_id)
    assert (result["attempts"], result["outcome"]) == (2, "cancelled")


def test_429_whose_retry_after_passes_the_deadline_goes_to_the_caller(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(upstream={"deadline": 3.0})
    invocation = standin.add_pending()
    standin.script(invocation, [json_response(
        429, {"error": "TooMany", "message": "slow down"}, (("retry-after", "30"),))])

    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 429 and response.headers["retry-after"] == "30"
    assert len(puts_of(standin, invocation)) == 1
    _, result = records_of(gateway, request_id)
    assert (result["attempts"], result["outcome"]) == (1, "rejected_by_upstream")
    assert standin.state_of(invocation) == "pending"


def test_always_500_is_sent_once(gateway_factory: GatewayFactory, standin: StandIn) -> None:
    gateway = gateway_factory()
    invocation = standin.add_pending()
    standin.script(invocation, [json_response(500, {"error": "E", "message": "boom"})] * 3)

    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 502 and response.json()["error"] == "upstream_error"
    assert len(puts_of(standin, invocation)) == 1
    attempts, result = records_of(gateway, request_id)
    assert (len(attempts), result["attempts"], result["upstream_status"]) == (1, 1, 500)


def test_takes_effect_then_answers_late_is_reconciled_to_202(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(upstream={"timeout": 0.5})
    invocation = standin.add_pending()
    standin.script(invocation, [TakeEffect(Delay(3.0, json_response(202, {})))])

    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 202 and response.json() == {}
    assert len(puts_of(standin, invocation)) == 1
    assert len(gets_of(standin, invocation)) == 1
    attempts, result = records_of(gateway, request_id)
    assert (result["outcome"], result["error"], result["upstream_status"]) == (
        "cancelled", None, None)
    assert (len(attempts), result["attempts"], result["reconciled"]) == (1, 1, True)


def test_reset_after_taking_effect_is_reconciled_to_202(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory()
    invocation = standin.add_pending()
    standin.script(invocation, [TakeEffect(Reset())])

    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 202
    _, result = records_of(gateway, request_id)
    assert (result["reconciled"], result["attempts"]) == (True, 1)
    assert len(puts_of(standin, invocation)) == 1


@pytest.mark.parametrize("transport", ["native", "aiohttp", "httpx"])
def test_reset_before_taking_effect_is_looked_up_pending_and_retried(
    gateway_factory: GatewayFactory, standin: StandIn, transport: str
) -> None:
    gateway = gateway_factory(upstream={"transport": transport})
    invocation = standin.add_pending()
    standin.script(invocation, [Reset()])
    on_disk = watch_attempts_on_disk(gateway, standin)

    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 202
    assert on_disk == [[1], [1, 2]]
    assert [r.method for r in standin.requests] == ["PUT", "GET", "PUT"]
    _, result = records_of(gateway, request_id)
    assert (result["attempts"], result["reconciled"], result["upstream_status"]) == (
        2, False, 202)


def test_ambiguous_try_on_a_job_that_is_processing_is_412_reconciled(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory()
    invocation = standin.add_invocation(state="processing")
    standin.script(invocation, [Reset()])

    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 412
    assert response.json()["error"] == "not_cancelable"
    assert len(puts_of(standin, invocation)) == 1
    _, result = records_of(gateway, request_id)
    assert (result["outcome"], result["error"], result["reconciled"]) == (
        "not_cancelable", "not_cancelable", True)


def test_ambiguous_try_whose_lookup_fails_keeps_the_original_504(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(upstream={"timeout": 0.5})
    invocation = str(uuid.uuid4())  # unknown: the lookup answers 404
    standin.script(invocation, [Stall(3.0)])

    response, request_id = cancel(gateway, invocation)

    assert response.status_code == 504 and response.json()["error"] == "upstream_timeout"
    assert len(gets_of(standin, invocation)) == 1
    _, result = records_of(gateway, request_id)
    assert (result["error"], result["reconciled"], result["attempts"]) == (
        "upstream_timeout", False, 1)


@pytest.mark.parametrize("transport", ["native", "aiohttp", "httpx"])
def test_refused_connections_are_retried_and_never_count_as_sent(
    gateway_factory: GatewayFactory, transport: str,
) -> None:
    gateway = gateway_factory(upstream_url=f"http://127.0.0.1:{free_port()}",
                              upstream={"transport": transport})

    response, request_id = cancel(gateway, str(uuid.uuid4()))

    assert response.status_code == 502 and response.json()["error"] == "upstream_unavailable"
    attempts, result = records_of(gateway, request_id)
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert (result["attempts"], result["reconciled"]) == (0, False)


def test_max_in_flight_refuses_the_extra_cancel_with_429_and_releases_it(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    teams = [{"name": "billing", "keys": [keys.stored_form(BILLING_KEY)], "scope": ["*"],
              "rate_limit": 1000.0, "burst": 1000, "max_in_flight": 1}]
    gateway = gateway_factory(teams=teams)
    slow, other, later = standin.add_pending(), standin.add_pending(), standin.add_pending()
    standin.script(slow, [Delay(1.0)])
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(cancel(gateway, slow)[0]))
    first.start()
    deadline = time.monotonic() + 5
    while not puts_of(standin, slow) and time.monotonic() < deadline:
        time.sleep(0.01)

    with httpx.Client(base_url=gateway.base_url, trust_env=False) as client:
        refused = client.put(f"/api/v1/invocations/{other}",
                             headers={"Authorization": f"Bearer {BILLING_KEY}",
                                      "x-request-id": "over-the-bound"})
    first.join(10)
    # What the audit trail says of the refusal (issue 17: never checked before).
    attempts, result = records_of(gateway, "over-the-bound")
    assert attempts == []
    assert (result["outcome"], result["status"], result["error"], result["attempts"]) == (
        "rate_limited", 429, "rate_limited", 0)

    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "rate_limited"
    assert puts_of(standin, other) == []
    assert [a.status_code for a in answers] == [202]
    assert cancel(gateway, later)[0].status_code == 202  # the slot was released


def test_sigterm_during_a_backoff_wait_is_bounded_by_the_grace_period_and_recorded(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory(server={"grace_period": 1.0}, upstream={"deadline": 30.0})
    invocation = standin.add_pending()
    standin.script(invocation, [json_response(
        429, {"error": "TooMany", "message": "slow down"}, (("retry-after", "20"),))])
    answers: list[httpx.Response | Exception] = []

    def call() -> None:
        try:
            answers.append(cancel(gateway, invocation)[0])
        except httpx.HTTPError as exc:
            answers.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while not puts_of(standin, invocation) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # now in the Retry-After wait
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    code = gateway.process.wait(10)
    stopped = time.monotonic() - started
    caller.join(10)

    assert code == 0 and stopped < 4.0
    results = [r for r in gateway.audit_records() if r["event"] == "cancel.result"]
    assert len(results) == 1
    assert (results[0]["error"], results[0]["attempts"], results[0]["outcome"]) == (
        "shutdown", 1, "upstream_error")
    assert len(puts_of(standin, invocation)) == 1
