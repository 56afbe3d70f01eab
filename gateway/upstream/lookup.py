"""Looking jobs up upstream (`get_job`), with a bounded cache of what never changes.

A job's database, collection and source are fixed when it is created, so its `JobContext` is
cached by invocation id (least recently used out, `upstream.lookup_cache` entries). Its status
changes, so `job()` always asks upstream; that is what reconciliation needs.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.errors import UpstreamFailure
from gateway.jobs import Job, JobContext, NotAJob, parse_job_body
from gateway.upstream import mapping
from gateway.upstream.client import UpstreamClient


class JobLookup:
    def __init__(self, upstream: UpstreamClient, *, cache_size: int) -> None:
        self._upstream = upstream
        self._cache_size = cache_size
        self._contexts: OrderedDict[str, JobContext] = OrderedDict()

    def cached(self, invocation_id: str) -> JobContext | None:
        context = self._contexts.get(invocation_id)
        if context is not None:
            self._contexts.move_to_end(invocation_id)
        return context

    def remember(self, job: Job) -> None:
        if self._cache_size == 0:
            return
        self._contexts[job.id] = job.context
        self._contexts.move_to_end(job.id)
        if len(self._contexts) > self._cache_size:
            self._contexts.popitem(last=False)

    async def job(
        self, invocation_id: str, *, token: str, request_id: str, timeout: float | None = None
    ) -> Job:
        """The job as upstream says it is now; raises the mapped `GatewayError` otherwise."""
        answer = await self._upstream.get_job(invocation_id, token=token, request_id=request_id,
                                              timeout=timeout)
        if answer.status != 200:
            raise mapping.refusal(answer, secrets=(token,))
        try:
            job = parse_job_body(answer.body)
            if job.id != invocation_id:
                raise NotAJob("the Job is another invocation's")
        except NotAJob as exc:
            failure = UpstreamFailure(f"Chroma Sync answered get_job with a broken Job ({exc})")
            failure.upstream_status = 200
            raise failure from exc
        self.remember(job)
        return job

    async def context(
        self, invocation_id: str, *, token: str, request_id: str
    ) -> tuple[JobContext, bool]:
        """The job's context and whether it came from the cache."""
        context = self.cached(invocation_id)
        if context is not None:
            return context, True
        job = await self.job(invocation_id, token=token, request_id=request_id)
        return job.context, False
