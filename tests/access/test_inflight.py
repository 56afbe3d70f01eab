"""gateway.access.inflight: per-team concurrent cancels, counted across a reload of [[teams]]."""

from __future__ import annotations

import asyncio

import pytest

from gateway.access.inflight import InFlight
from gateway.config.model import TeamConfig
from gateway.errors import RequestRejected


def team(limit: int) -> TeamConfig:
    return TeamConfig(name="billing", keys=("sha256:" + "0" * 64,), max_in_flight=limit)


def test_the_bound_is_429_with_retry_after_1_and_leave_frees_a_place() -> None:
    in_flight = InFlight([team(2)])
    in_flight.enter("billing")
    in_flight.enter("billing")
    with pytest.raises(RequestRejected) as info:
        in_flight.enter("billing")
    assert (info.value.status, info.value.code, info.value.outcome, info.value.headers) == (
        429, "rate_limited", "rate_limited", {"retry-after": "1"})
    in_flight.leave("billing")
    in_flight.enter("billing")


def test_a_reload_keeps_counting_the_cancels_still_in_flight() -> None:
    old = InFlight([team(2)])
    old.enter("billing")
    old.enter("billing")
    new = InFlight([team(3)], previous=old)
    new.enter("billing")  # two from before the reload, one after: the new bound is 3
    with pytest.raises(RequestRejected):
        new.enter("billing")
    old.leave("billing")  # a request from before the reload ends through its own policy
    new.enter("billing")
    assert new.count("billing") == 3


def test_a_team_the_limits_do_not_name_gets_the_default_bound() -> None:
    in_flight = InFlight([])
    assert in_flight.count("new") == 0
    for _ in range(TeamConfig.max_in_flight):
        in_flight.enter("new")
    assert in_flight.count("new") == TeamConfig.max_in_flight
    with pytest.raises(RequestRejected):
        in_flight.enter("new")


def test_counts_are_per_team_and_a_leave_without_an_enter_stays_at_zero() -> None:
    in_flight = InFlight([team(1), TeamConfig(name="ops", keys=(), max_in_flight=1)])
    in_flight.enter("billing")
    in_flight.enter("ops")  # another team's bound is its own
    assert (in_flight.count("billing"), in_flight.count("ops")) == (1, 1)
    in_flight.leave("ops")
    assert in_flight.count("ops") == 0
    other = InFlight([team(1)])
    other.leave("never-entered")
    assert other.count("never-entered") == 0


# -- a bulk cancel's cancels wait for room (issue 17, finding 1) ------------------------------


def test_a_bulk_cancel_waits_for_room_instead_of_failing() -> None:
    async def scenario() -> list[str]:
        in_flight = InFlight([team(1)])
        order: list[str] = []
        in_flight.enter("billing")  # a single cancel holds the only place

        async def item(name: str) -> None:
            await in_flight.enter_when_room("billing")
            order.append(f"{name} in")
            await asyncio.sleep(0)
            in_flight.leave("billing")

        waiting = [asyncio.create_task(item(n)) for n in ("a", "b")]
        await asyncio.sleep(0.01)
        assert order == [] and in_flight.count("billing") == 1
        with pytest.raises(RequestRejected):
            in_flight.enter("billing")  # a single cancel meanwhile: 429, as ever
        in_flight.leave("billing")
        await asyncio.gather(*waiting)
        assert in_flight.count("billing") == 0
        return order

    assert sorted(asyncio.run(scenario())) == ["a in", "b in"]


def test_waiters_are_woken_by_a_leave_through_a_reloaded_policy() -> None:
    async def scenario() -> int:
        old = InFlight([team(1)])
        old.enter("billing")
        new = InFlight([team(1)], previous=old)
        waiter = asyncio.create_task(new.enter_when_room("billing"))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        old.leave("billing")  # the request from before the reload ends
        await asyncio.wait_for(waiter, 1)
        return new.count("billing")

    assert asyncio.run(scenario()) == 1


def test_waiting_for_room_counts_from_zero_and_uses_the_default_bound() -> None:
    async def scenario() -> tuple[int, int, bool]:
        fresh = InFlight([team(1)])
        await asyncio.wait_for(fresh.enter_when_room("billing"), 1)  # room at once: 0 < 1
        unnamed = InFlight([])
        unnamed.enter("new")
        unnamed.enter("new")
        await asyncio.wait_for(unnamed.enter_when_room("new"), 1)
        for _ in range(TeamConfig.max_in_flight - 3):
            unnamed.enter("new")
        waiter = asyncio.create_task(unnamed.enter_when_room("new"))
        await asyncio.sleep(0.01)
        waited = not waiter.done()  # at the default bound: it waits
        unnamed.leave("new")
        await asyncio.wait_for(waiter, 1)
        return fresh.count("billing"), unnamed.count("new"), waited

    assert asyncio.run(scenario()) == (1, TeamConfig.max_in_flight, True)
