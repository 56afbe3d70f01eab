"""Listing a bulk cancel's pending invocations (`list_jobs`): every match up to the limit,
before anything is cancelled, since cancelling while paging by offset would shift the pages
and skip invocations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.cancel.bulk_request import BulkRequest
from gateway.errors import UpstreamFailure
from gateway.jobs import Job, NotAJob, parse_job_list
from gateway.upstream import mapping
from gateway.upstream.client import UpstreamClient

PAGE_SIZE = 100


@dataclass(frozen=True)
class Listing:
    jobs: tuple[Job, ...]  # at most the request's limit, oldest first
    truncated: bool  # more than the limit matched


async def list_pending(
    upstream: UpstreamClient, request: BulkRequest, *, token: str, request_id: str
) -> Listing:
    """Every matching pending invocation up to `limit` (one more is fetched to know whether
    there are more); raises the mapped `GatewayError` if any page fails."""
    wanted = request.limit + 1
    found: dict[str, Job] = {}  # by id: a job listed twice (the list moved) is cancelled once
    # Bounded: an upstream answering full pages forever can't keep the batch listing.
    for page_number in range(-(-wanted // PAGE_SIZE)):
        params: Mapping[str, str | int] = {
            **request.selector, "status": "pending", "order_by": "ASC",
            "limit": PAGE_SIZE, "offset": page_number * PAGE_SIZE,
        }
        answer = await upstream.list_jobs(params, token=token, request_id=request_id)
        if answer.status != 200:
            raise mapping.refusal(answer, secrets=(token,))
        try:
            page = parse_job_list(answer.body)
        except NotAJob as exc:
            failure = UpstreamFailure(f"Chroma Sync answered list_jobs with broken Jobs ({exc})")
            failure.upstream_status = 200
            raise failure from exc
        for job in page:
            found.setdefault(job.id, job)
        if len(page) < PAGE_SIZE or len(found) >= wanted:
            break
    jobs = tuple(found.values())
    return Listing(jobs[: request.limit], len(jobs) > request.limit)


