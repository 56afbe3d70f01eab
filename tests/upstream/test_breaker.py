"""The circuit breaker in process, with a fake clock: opening, the pause, the one probe."""

from __future__ import annotations

import pytest

from gateway.errors import ServiceUnavailable
from gateway.upstream.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(failures: int = 3, seconds: float = 10.0) -> tuple[CircuitBreaker, Clock, list[bool]]:
    clock, changes = Clock(), []
    breaker = CircuitBreaker(failures=failures, seconds=seconds, clock=clock,
                             on_change=changes.append)
    return breaker, clock, changes


def assert_refused(breaker: CircuitBreaker) -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        breaker.admit()
    assert (caught.value.status, caught.value.code, caught.value.outcome) == (
        503, "upstream_unavailable", "unavailable")
    assert "circuit open" in caught.value.message


def test_closed_breaker_admits_and_no_cancel_is_a_probe() -> None:
    breaker, _, changes = make()
    assert breaker.admit() is False
    assert (breaker.state, changes) == (CLOSED, [])


def test_consecutive_failures_open_it_and_it_refuses_at_once() -> None:
    breaker, _, changes = make(failures=3)
    for _ in range(2):
        breaker.record(True)
    assert breaker.state == CLOSED
    breaker.record(True)
    assert (breaker.state, changes, breaker.blocking) == (OPEN, [True], True)
    assert_refused(breaker)


def test_a_success_in_between_resets_the_count() -> None:
    breaker, _, _ = make(failures=3)
    for failed in (True, True, False, True, True):
        breaker.record(failed)
    assert breaker.state == CLOSED


def test_after_the_pause_exactly_one_probe_goes_through() -> None:
    breaker, clock, _ = make(seconds=10.0)
    for _ in range(3):
        breaker.record(True)
    clock.now += 9.9
    assert_refused(breaker)
    clock.now += 0.2
    assert breaker.admit() is True
    assert breaker.state == HALF_OPEN
    assert_refused(breaker)  # a second cancel while the probe is out


def test_a_successful_probe_closes_it() -> None:
    breaker, clock, changes = make()
    for _ in range(3):
        breaker.record(True)
    clock.now += 10
    assert breaker.admit()
    breaker.record(False)
    breaker.end_probe()
    assert (breaker.state, changes) == (CLOSED, [True, False])
    assert breaker.admit() is False


def test_a_failed_probe_opens_it_for_another_pause() -> None:
    breaker, clock, changes = make()
    for _ in range(3):
        breaker.record(True)
    clock.now += 10
    assert breaker.admit()
    breaker.record(True)
    breaker.end_probe()
    assert (breaker.state, changes) == (OPEN, [True, True])
    clock.now += 5
    assert_refused(breaker)
    clock.now += 5
    assert breaker.admit() is True


def test_a_probe_that_never_reached_upstream_hands_over_to_the_next_cancel() -> None:
    breaker, clock, _ = make()
    for _ in range(3):
        breaker.record(True)
    clock.now += 10
    assert breaker.admit()
    breaker.end_probe()  # e.g. refused by its scope: no exchange
    assert breaker.admit() is True


def test_answers_arriving_while_open_do_not_close_it() -> None:
    breaker, _, _ = make()
    for _ in range(3):
        breaker.record(True)
    breaker.record(False)  # a cancel sent before it opened, answering late
    assert breaker.state == OPEN
