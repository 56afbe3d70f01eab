"""gateway.access.inflight: per-team concurrent cancels, counted across a reload of [[teams]]."""

from __future__ import annotations

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
    assert (info.value.status, info.value.code, info.value.headers) == (
        429, "rate_limited", {"retry-after": "1"})
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
