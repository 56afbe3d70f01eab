"""The retry loop in process (`gateway.upstream.retry.Sender`): which tries are retried, the
backoff,
the deadline, reconciliation, and what the audit trail is told. Clock and sleep are fakes, so
the waits are exact and the tests take no time; the real sockets are in test_retry_e2e."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import httpx
import pytest

from gateway.config import load as config
from gateway.errors import (
    ConfigError,
    GatewayError,
    ServiceUnavailable,
    UpstreamFailure,
    UpstreamRefused,
)
from gateway.jobs import Job, JobContext
from gateway.upstream.client import _never_sent
from gateway.upstream.mapping import Reply
from gateway.upstream.retry import RetryPolicy, Sender, retry_after_seconds

ACCEPTED = Reply(202, b"{}", "cancelled", None, 202)
GONE = Reply(412, b"{}", "not_cancelable", "not_cancelable", 412)


def too_many(retry_after: str) -> Reply:
    return Reply(429, b"{}", "rejected_by_upstream", "upstream_rate_limited", 429,
                 {"retry-after": retry_after})


def answered(status: int) -> UpstreamFailure:
    failure = UpstreamFailure(f"Chroma Sync answered {status}", code="upstream_error")
    failure.upstream_status = status
    return failure


def no_answer(*, sent: bool, timeout: bool = False) -> UpstreamFailure:
    failure = (UpstreamFailure("no answer", status=504, code="upstream_timeout") if timeout
               else UpstreamFailure("reset"))
    failure.sent = sent
    return failure


def job(status: str) -> Job:
    return Job("3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b", status, JobContext("docs", "h", None))


@dataclass
class Trail:
    request_id: str = "r"
    tries: int = 0
    attempts: int = 0
    reconciled: bool = False
    forwarded: bool = False
    upstream_status: int | None = None


@dataclass
class Script:
    """Fake upstream and time: `puts` and `lookups` are answered in order."""

    puts: list[Reply | GatewayError]
    lookups: list[Job | GatewayError] = field(default_factory=list)
    now: float = 0.0
    slept: list[float] = field(default_factory=list)
    put_timeouts: list[float] = field(default_factory=list)
    lookup_timeouts: list[float] = field(default_factory=list)
    records: list[int] = field(default_factory=list)  # `tries` when each record was written
    put_seconds: float = 0.0  # how long each PUT takes
    record_fails_from: int | None = None
    trail: Trail = field(default_factory=Trail)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def record(self) -> None:
        if self.record_fails_from is not None and self.trail.tries >= self.record_fails_from:
            raise ServiceUnavailable("audit", code="audit_unavailable")
        self.records.append(self.trail.tries)

    async def put(self, timeout: float) -> Reply:
        assert self.records and self.records[-1] == self.trail.tries, "PUT before its record"
        self.put_timeouts.append(timeout)
        self.now += self.put_seconds
        answer = self.puts.pop(0)
        if isinstance(answer, GatewayError):
            raise answer
        return answer

    async def look_up(self, timeout: float) -> Job:
        self.lookup_timeouts.append(timeout)
        answer = self.lookups.pop(0)
        if isinstance(answer, GatewayError):
            raise answer
        return answer

    def run(self, *, retries: int = 2, deadline: float = 15.0, rng: float = 0.5,
            blocked: Callable[[], bool] = lambda: False) -> Awaitable[Reply]:
        sender = Sender(
            self.trail, RetryPolicy(retries, deadline), started=0.0, record_attempt=self.record,
            put=self.put, look_up=self.look_up, blocked=blocked, clock=self.clock,
            sleep=self.sleep, rng=lambda: rng,
        )
        return sender.send()


def run(script: Script, **kwargs: object) -> Reply:
    return asyncio.run(script.run(**kwargs))  # type: ignore[arg-type]


def test_first_try_202_sends_once_and_never_sleeps() -> None:
    script = Script([ACCEPTED])
    assert run(script) == ACCEPTED
    assert (script.records, script.slept, script.trail.attempts) == ([1], [], 1)
    assert script.trail.reconciled is False


@pytest.mark.parametrize("status", [502, 503, 504])
def test_502_503_504_are_retried_with_a_record_before_each_put(status: int) -> None:
    script = Script([answered(status), ACCEPTED])
    assert run(script) == ACCEPTED
    assert script.records == [1, 2]
    assert (script.trail.tries, script.trail.attempts) == (2, 2)


def test_500_is_final_and_sent_once() -> None:
    script = Script([answered(500), ACCEPTED])
    with pytest.raises(UpstreamFailure):
        run(script)
    assert (script.records, script.trail.attempts, len(script.puts)) == ([1], 1, 1)


def test_retries_stop_after_the_configured_number_and_the_last_error_stands() -> None:
    script = Script([answered(503), answered(503), answered(502), ACCEPTED])
    with pytest.raises(UpstreamFailure) as caught:
        run(script, retries=2)
    assert caught.value.upstream_status == 502
    assert script.records == [1, 2, 3]


def test_no_retries_configured_means_one_try() -> None:
    script = Script([answered(503), ACCEPTED])
    with pytest.raises(UpstreamFailure):
        run(script, retries=0)
    assert script.records == [1]


def test_backoff_is_exponential_from_a_tenth_of_a_second_with_full_jitter() -> None:
    policy = RetryPolicy(retries=5, deadline=15)
    assert [policy.backoff(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert policy.backoff(3, lambda: 0.0) == 0.0
    assert policy.backoff(3, lambda: 0.25) == pytest.approx(0.1)
    script = Script([answered(503), answered(503), ACCEPTED])
    run(script, rng=0.5)
    assert script.slept == pytest.approx([0.05, 0.1])


def test_never_sent_is_retried_and_not_counted_as_a_put() -> None:
    script = Script([no_answer(sent=False), no_answer(sent=False), ACCEPTED])
    assert run(script) == ACCEPTED
    assert (script.records, script.trail.attempts, script.lookup_timeouts) == ([1, 2, 3], 1, [])


def test_never_sent_every_time_ends_with_zero_attempts() -> None:
    script = Script([no_answer(sent=False)] * 3)
    with pytest.raises(UpstreamFailure):
        run(script)
    assert (script.trail.tries, script.trail.attempts) == (3, 0)


def test_429_with_a_retry_after_that_fits_waits_that_long_then_retries() -> None:
    script = Script([too_many("3"), ACCEPTED])
    assert run(script) == ACCEPTED
    assert script.slept == [3.0]


def test_429_with_a_retry_after_past_the_deadline_is_returned_at_once() -> None:
    script = Script([too_many("20"), ACCEPTED])
    assert run(script).status == 429
    assert (script.slept, script.records) == ([], [1])


def test_429_without_retry_after_is_returned() -> None:
    script = Script([Reply(429, b"{}", "rejected_by_upstream", "upstream_rate_limited", 429),
                     ACCEPTED])
    assert run(script).status == 429
    assert script.records == [1]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    date = email.utils.formatdate(1_000_010.0, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_each_try_timeout_is_the_deadline_remaining() -> None:
    script = Script([answered(503), ACCEPTED], put_seconds=4.0)
    run(script, deadline=6.0, rng=0.0)
    assert script.put_timeouts == [6.0, 2.0]


def test_a_retry_whose_backoff_would_pass_the_deadline_is_not_sent() -> None:
    script = Script([answered(503), ACCEPTED], put_seconds=5.95)
    with pytest.raises(UpstreamFailure):
        run(script, deadline=6.0, rng=1.0)  # 0.1 s backoff; 0.05 s left
    assert script.records == [1]


def test_ambiguous_try_reconciled_cancelled_is_202() -> None:
    script = Script([no_answer(sent=True, timeout=True)], [job("cancelled")])
    reply = run(script)
    assert (reply.status, reply.body, reply.outcome) == (202, b"{}", "cancelled")
    assert (script.trail.reconciled, script.trail.attempts) == (True, 1)


@pytest.mark.parametrize("state", ["processing", "complete", "failed"])
def test_ambiguous_try_reconciled_other_state_is_412(state: str) -> None:
    script = Script([no_answer(sent=True)], [job(state)])
    reply = run(script)
    assert (reply.status, reply.error, script.trail.reconciled) == (412, "not_cancelable", True)
    assert state.encode() in reply.body


def test_ambiguous_try_still_pending_is_retried() -> None:
    script = Script([no_answer(sent=True), ACCEPTED], [job("pending")])
    assert run(script) == ACCEPTED
    assert (script.records, script.trail.reconciled) == ([1, 2], False)


def test_ambiguous_try_still_pending_without_retries_keeps_the_original_error() -> None:
    original = no_answer(sent=True, timeout=True)
    script = Script([original], [job("pending")])
    with pytest.raises(UpstreamFailure) as caught:
        run(script, retries=0)
    assert caught.value is original


@pytest.mark.parametrize("lookup_error", [
    UpstreamRefused("gone", status=404, code="not_found"), no_answer(sent=True, timeout=True),
])
def test_failed_reconciliation_keeps_the_original_error(lookup_error: GatewayError) -> None:
    original = no_answer(sent=True)
    script = Script([original], [lookup_error])
    with pytest.raises(UpstreamFailure) as caught:
        run(script)
    assert caught.value is original and script.trail.reconciled is False


def test_reconciliation_gets_at_least_a_second_when_the_deadline_is_spent() -> None:
    script = Script([no_answer(sent=True, timeout=True)], [job("cancelled")], put_seconds=15.0)
    run(script)
    assert script.lookup_timeouts == [1.0]


def test_412_after_an_ambiguous_try_is_reconciled() -> None:
    script = Script([no_answer(sent=True), GONE], [job("pending"), job("cancelled")])
    reply = run(script)
    assert (reply.status, script.trail.reconciled, script.trail.attempts) == (202, True, 2)


def test_412_after_a_502_is_reconciled_but_after_a_503_it_is_not() -> None:
    script = Script([answered(502), GONE], [job("cancelled")])
    assert run(script).status == 202
    script = Script([answered(503), GONE], [job("cancelled")])
    assert run(script) == GONE
    assert script.lookup_timeouts == []


def test_412_on_the_first_try_is_the_answer_without_a_lookup() -> None:
    script = Script([GONE], [job("cancelled")])
    assert run(script) == GONE
    assert script.lookup_timeouts == []


def test_no_retry_once_the_breaker_is_open() -> None:
    script = Script([answered(503), ACCEPTED])
    with pytest.raises(UpstreamFailure):
        run(script, blocked=lambda: True)
    assert script.records == [1]


def test_a_retry_that_cannot_be_audited_is_not_sent() -> None:
    script = Script([answered(503), ACCEPTED], record_fails_from=2)
    with pytest.raises(UpstreamFailure) as caught:
        run(script)
    assert caught.value.upstream_status == 503 and len(script.puts) == 1


def test_deadline_passed_before_the_first_put_sends_nothing() -> None:
    script = Script([ACCEPTED], now=20.0)
    with pytest.raises(UpstreamFailure) as caught:
        run(script)
    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
    assert script.records == []


def test_config_defaults_and_bounds_of_the_new_keys() -> None:
    base = {"upstream": {"token_env": "T"}, "audit": {"path": "a"},
            "teams": [{"name": "t", "keys": ["sha256:" + "0" * 64], "scope": ["*"]}]}
    parsed = config.parse(base)
    up = parsed.upstream
    assert (up.retries, up.deadline, up.breaker_failures, up.breaker_seconds) == (2, 15.0, 5, 10.0)
    assert parsed.teams[0].max_in_flight == 32
    for key, value in [("retries", -1), ("retries", 11), ("deadline", 0),
                       ("breaker_failures", 0), ("breaker_seconds", "ten")]:
        with pytest.raises(ConfigError, match=f"upstream.{key} "):
            config.parse({**base, "upstream": {"token_env": "T", key: value}})
    with pytest.raises(ConfigError, match=r"teams\[0\].max_in_flight "):
        config.parse({**base, "teams": [{**base["teams"][0], "max_in_flight": 0}]})  # type: ignore[dict-item]


def test_upstream_boundary_marks_a_refused_connection_as_never_sent() -> None:
    # aiohttp's errors arise only with its transport configured, which loads this module.
    import gateway.upstream.aiohttp_transport  # noqa: F401

    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
        ConnectionRefusedError(111, "refused"))
    wrapped = httpx.ConnectError("refused")
    wrapped.__cause__ = refused
    assert _never_sent(wrapped)
    dropped = httpx.ConnectTimeout("disconnected")  # how httpx-aiohttp maps a dropped connection
    dropped.__cause__ = aiohttp.ServerDisconnectedError()
    assert not _never_sent(dropped)
    assert _never_sent(httpx.ConnectTimeout("connect"))  # httpcore's own, no aiohttp cause
    assert not _never_sent(httpx.ReadTimeout("read"))
