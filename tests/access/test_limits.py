"""Per-team rate limits: token buckets driven by a fake clock."""

from __future__ import annotations

import pytest

from gateway.access.limits import TeamLimits, TokenBucket
from gateway.config.model import TeamConfig

KEY = "sha256:" + "0" * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def team(name: str = "billing", rate: float = 1.0, burst: int = 3) -> TeamConfig:
    return TeamConfig(name=name, keys=(KEY,), rate_limit=rate, burst=burst)


def test_bucket_allows_a_burst_then_refuses() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)


def test_bucket_refills_at_the_rate_over_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        bucket.take()
    clock.advance(0.5)
    assert bucket.take() == 0.0
    assert bucket.take() > 0


def test_bucket_never_holds_more_than_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=2, clock=clock)
    clock.advance(3600)
    assert [bucket.take() == 0.0 for _ in range(3)] == [True, True, False]


def test_refused_takes_do_not_consume_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    bucket.take()
    for _ in range(10):
        assert bucket.take() > 0
    clock.advance(1.0)
    assert bucket.take() == 0.0


def test_team_limits_allow_the_burst_then_give_retry_after() -> None:
    clock = FakeClock()
    limits = TeamLimits([team(rate=1.0, burst=3)], clock=clock)
    assert [limits.retry_after("billing") for _ in range(3)] == [0, 0, 0]
    assert limits.retry_after("billing") == 1


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    clock = FakeClock()
    limits = TeamLimits([team(rate=0.25, burst=1)], clock=clock)
    assert limits.retry_after("billing") == 0
    assert limits.retry_after("billing") == 4  # 4.0 s exactly
    clock.advance(0.5)
    assert limits.retry_after("billing") == 4  # 3.5 s, rounded up
    clock.advance(3.4)
    assert limits.retry_after("billing") == 1  # 0.1 s, rounded up


def test_retry_after_is_at_least_one_second_for_a_fast_rate() -> None:
    clock = FakeClock()
    limits = TeamLimits([team(rate=1000.0, burst=1)], clock=clock)
    assert limits.retry_after("billing") == 0
    assert limits.retry_after("billing") == 1  # 1 ms to wait, still said as 1 s


def test_team_limits_allow_again_after_refill() -> None:
    clock = FakeClock()
    limits = TeamLimits([team(rate=2.0, burst=2)], clock=clock)
    limits.retry_after("billing")
    limits.retry_after("billing")
    assert limits.retry_after("billing") >= 1
    clock.advance(1.0)
    assert [limits.retry_after("billing") for _ in range(2)] == [0, 0]
    assert limits.retry_after("billing") >= 1


def test_teams_have_separate_buckets() -> None:
    clock = FakeClock()
    limits = TeamLimits([team("billing", burst=1), team("ops", burst=1)], clock=clock)
    assert limits.retry_after("billing") == 0
    assert limits.retry_after("billing") >= 1
    assert limits.retry_after("ops") == 0
