"""The circuit breaker in process, with a fake clock: opening, the pause, the one probe."""

from __future__ import annotations

import asyncio

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


# Issue 17, finding 3: one probe at a time, and only exchanges of the probe's era move it.

def open_it(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        breaker.record(True, clock.now)


def test_an_answer_to_an_exchange_from_before_the_opening_does_not_close_it() -> None:
    breaker, clock, changes = make()
    early = clock.now  # a cancel's PUT leaves, and stalls
    clock.now += 1
    open_it(breaker, clock)
    clock.now += 10
    assert breaker.admit() is True  # the probe is out
    breaker.record(False, early)  # the stalled PUT answers at last
    assert (breaker.state, changes) == (HALF_OPEN, [True])
    assert_refused(breaker)  # still one probe, still out


def test_a_failure_from_before_the_opening_does_not_reopen_it_under_the_probe() -> None:
    breaker, clock, changes = make()
    early = clock.now
    clock.now += 1
    open_it(breaker, clock)
    clock.now += 10
    assert breaker.admit() is True
    breaker.record(True, early)
    assert (breaker.state, changes) == (HALF_OPEN, [True])
    breaker.record(False, clock.now)  # the probe's own answer decides
    assert (breaker.state, changes) == (CLOSED, [True, False])


def test_exchanges_of_the_pause_do_not_count_once_it_is_closed_again() -> None:
    breaker, clock, _ = make(failures=2)
    open_it(breaker, clock)
    clock.now += 5
    during_pause = clock.now  # e.g. a bulk's next list page, from a batch admitted before
    clock.now += 5
    assert breaker.admit() is True
    breaker.record(False, clock.now)
    breaker.end_probe()
    breaker.record(True, during_pause)
    breaker.record(True, during_pause)
    assert breaker.state == CLOSED


def test_while_half_open_admitted_cancels_stop_sending() -> None:
    breaker, clock, _ = make()
    open_it(breaker, clock)
    clock.now += 10
    assert breaker.admit() is True
    assert breaker.blocking  # a retry of a cancel from before the opening waits
    breaker.record(False, clock.now)
    assert not breaker.blocking


def test_a_failed_probe_still_running_keeps_the_next_probe_out() -> None:
    breaker, clock, _ = make(seconds=10.0)
    open_it(breaker, clock)
    clock.now += 10
    assert breaker.admit() is True
    breaker.record(True, clock.now)  # its PUT timed out; it now settles with a lookup
    clock.now += 10
    assert_refused(breaker)  # the pause is over, but the probe has not ended
    breaker.end_probe()
    assert breaker.admit() is True


def test_an_old_probe_ending_late_leaves_the_new_probe_alone() -> None:
    asyncio.run(old_probe_ending_late())


async def old_probe_ending_late() -> None:
    breaker, clock, _ = make(seconds=10.0)
    open_it(breaker, clock)
    clock.now += 10
    first_admitted, second_admitted = asyncio.Event(), asyncio.Event()
    first_may_end, second_may_end = asyncio.Event(), asyncio.Event()

    async def probe(admitted: asyncio.Event, may_end: asyncio.Event) -> None:
        assert breaker.admit() is True
        admitted.set()
        await may_end.wait()
        breaker.end_probe()

    first = asyncio.create_task(probe(first_admitted, first_may_end))
    await first_admitted.wait()
    breaker.record(False, clock.now)  # its lookup succeeds: closed...
    open_it(breaker, clock)  # ...and opened again by later cancels while its PUT is out
    clock.now += 10
    second = asyncio.create_task(probe(second_admitted, second_may_end))
    await second_admitted.wait()
    first_may_end.set()
    await first
    assert_refused(breaker)  # the second probe is still out: no third one
    second_may_end.set()
    await second
    assert breaker.admit() is True
