"""gateway.access.batches: at most `bulk.max_batches` bulk cancels of a team at once
(issue 17, finding 1)."""

from __future__ import annotations

import pytest

from gateway.access.batches import BatchSlots
from gateway.errors import RequestRejected


def test_beyond_the_bound_a_batch_gets_429_with_retry_after_1() -> None:
    slots = BatchSlots(2)
    slots.take("billing")
    slots.take("billing")
    with pytest.raises(RequestRejected) as caught:
        slots.take("billing")
    error = caught.value
    assert (error.status, error.code, error.outcome, error.headers) == (
        429, "rate_limited", "rate_limited", {"retry-after": "1"})
    slots.take("ops")  # another team's batches are its own
    assert (slots.running("billing"), slots.running("ops")) == (2, 1)


def test_a_batch_that_ends_gives_its_place_back() -> None:
    slots = BatchSlots(1)
    slots.take("billing")
    slots.give_back("billing")
    assert slots.running("billing") == 0
    slots.take("billing")
    with pytest.raises(RequestRejected):
        slots.take("billing")
    slots.give_back("billing")
    slots.give_back("billing")  # one too many never goes below zero
    assert slots.running("billing") == 0
