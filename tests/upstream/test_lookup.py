"""gateway.upstream.lookup: get_job through the real client against the stand-in, and the LRU
cache."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.config.model import UpstreamConfig
from gateway.demo.standin import StandIn, json_response
from gateway.errors import GatewayError, UpstreamFailure, UpstreamRefused
from gateway.jobs import JobContext
from gateway.upstream.client import UpstreamClient
from gateway.upstream.lookup import JobLookup

TOKEN = "lookup-test-token-0123456789"


def run(test: Callable[[StandIn, JobLookup], Awaitable[Any]], cache_size: int = 10) -> Any:
    async def main() -> Any:
        async with StandIn(TOKEN) as standin:
            client = UpstreamClient(UpstreamConfig(base_url=standin.base_url, token_env="X",
                                                   timeout=1.0))
            try:
                return await test(standin, JobLookup(client, cache_size=cache_size))
            finally:
                await client.aclose()

    return asyncio.run(main())


def test_job_is_asked_every_time_and_the_context_is_cached() -> None:
    async def test(standin: StandIn, lookup: JobLookup) -> None:
        invocation = standin.add_pending(database="docs", collection="c")
        job = await lookup.job(invocation, token=TOKEN, request_id="r")
        assert (job.status, job.context) == ("pending", JobContext("docs", "c", None))
        standin.set_state(invocation, "processing")
        assert (await lookup.job(invocation, token=TOKEN, request_id="r")).status == "processing"
        context, hit = await lookup.context(invocation, token=TOKEN, request_id="r")
        assert (context.database, hit) == ("docs", True)
        assert len(standin.requests) == 2

    run(test)


def test_the_cache_is_bounded_least_recently_used_out() -> None:
    async def test(standin: StandIn, lookup: JobLookup) -> None:
        a, b, c = (standin.add_pending(database=name) for name in "abc")
        for invocation in (a, b):
            await lookup.context(invocation, token=TOKEN, request_id="r")
        await lookup.context(a, token=TOKEN, request_id="r")  # a is now the most recent
        await lookup.context(c, token=TOKEN, request_id="r")  # b goes out
        assert lookup.cached(a) is not None and lookup.cached(c) is not None
        assert lookup.cached(b) is None

    run(test, cache_size=2)


def test_a_zero_sized_cache_keeps_nothing() -> None:
    async def test(standin: StandIn, lookup: JobLookup) -> None:
        invocation = standin.add_pending()
        await lookup.context(invocation, token=TOKEN, request_id="r")
        _, hit = await lookup.context(invocation, token=TOKEN, request_id="r")
        assert not hit and len(standin.requests) == 2

    run(test, cache_size=0)


@pytest.mark.parametrize(("answer", "error", "status", "code"), [
    (None, UpstreamRefused, 404, "not_found"),
    (json_response(500, {"error": "E", "message": "m"}), UpstreamFailure, 502, "upstream_error"),
    (json_response(202, {}), UpstreamFailure, 502, "upstream_unexpected_status"),
    (json_response(200, {"hello": "world"}), UpstreamFailure, 502, "upstream_unavailable"),
])
def test_lookup_failures_are_mapped_gateway_errors(
    answer: Any, error: type[GatewayError], status: int, code: str
) -> None:
    async def test(standin: StandIn, lookup: JobLookup) -> None:
        invocation = "11111111-2222-4333-8444-555555555555"
        if answer is not None:
            standin.add_pending(invocation)
            standin.behaviour = lambda request: answer
        with pytest.raises(error) as info:
            await lookup.job(invocation, token=TOKEN, request_id="r")
        assert (info.value.status, info.value.code) == (status, code)
        assert lookup.cached(invocation) is None

    run(test)


def test_a_job_that_is_another_invocations_is_a_broken_response() -> None:
    async def test(standin: StandIn, lookup: JobLookup) -> None:
        asked, other = standin.add_pending(), standin.add_pending()
        standin.behaviour = lambda request: json_response(200, standin.job_of(other))
        with pytest.raises(UpstreamFailure):
            await lookup.job(asked, token=TOKEN, request_id="r")

    run(test)
