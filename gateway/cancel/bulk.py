"""Bulk cancel: `POST /gateway/v1/bulk-cancel` cancels every pending invocation of a source or
a database.

Checks run in the single cancel's order: authentication (401), authorization (403), the body
(400 `invalid_request`, naming the field), whether the selector can match anything in the
team's scope (403 `out_of_scope`), the team's rate limit (429, taken once for the whole
batch), its running batches (`bulk.max_batches`, 429), the upstream token (503). Then a
`batch.started` record, then *all* matching pending invocations are listed (`list_jobs`, pages
of 100 by offset, oldest first) and only then cancelled: cancelling while paging by offset
would shift the pages and skip invocations.

Each listed invocation is an ordinary cancel (`CancelPipeline.forward`, `CancelPipeline.finish`)
under the live policy: before each one the batch re-reads the current teams (a removed key or
a disabled team stops the rest, a narrowed scope skips what it no longer covers), waits for
room under the team's `max_in_flight`, then sends it: attempt record before its PUT, result
after, with the batch's `batch_id`; at most `bulk.concurrency` at once. Jobs outside the scope
are counted and recorded but not listed in the answer. A `batch.result` record closes the
batch, whatever its end, with the status the caller was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import structlog

from gateway.access.auth import Principal
from gateway.access.scopes import ScopeAuthorizer
from gateway.asgi import (
    TIMED_OUT,
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    send_error,
    send_response,
)
from gateway.audit.writer import AuditUnavailable
from gateway.cancel.batch import WOULD_CANCEL, Batch, ItemResult, counts_of, item_request_id
from gateway.cancel.bulk_request import BulkRequest, check_content_type, parse_request, read_body
from gateway.cancel.cancellation import Cancellation
from gateway.cancel.listing import Listing, list_pending
from gateway.cancel.pipeline import CancelPipeline
from gateway.errors import GatewayError, RequestRejected, method_not_allowed
from gateway.jobs import Job

log = structlog.get_logger("gateway")

PATH = b"/gateway/v1/bulk-cancel"
ROUTE = PATH.decode("ascii")


async def handle(
    pipeline: CancelPipeline, scope: Scope, receive: Receive, send: Send, exchange: Exchange,
    started: float,
) -> None:
    """The bulk-cancel route, checks in the single cancel's order, then the batch."""
    if scope["method"] != "POST":
        exchange.error = "method_not_allowed"
        await send_error(send, method_not_allowed("POST"))
        return
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    client = scope.get("client")
    batch = Batch(batch_id=str(uuid.uuid4()), request_id=exchange.request_id,
                  client=client[0] if client else None, started=started)
    results: list[ItemResult | None] = []
    status = 500
    error: str | None = "internal_error"
    failure: GatewayError | None = None
    close = False
    slot: str | None = None  # the team whose running batches this one counts in
    policy = pipeline.policy  # its checks; each cancel re-reads the live one (`_run`)
    try:
        principal = pipeline.identify(policy, headers, exchange, batch)
        check_content_type(headers)
        try:
            request = batch.request = parse_request(await read_body(headers, receive))
        except RequestRejected:
            close = True  # the body may be left unread: don't read the rest of it
            raise
        policy.scopes.authorize_selector(principal.team, source_id=request.source_id,
                                         database_name=request.database_name)
        pipeline.check_rate(policy, principal.team)
        pipeline.batches.take(principal.team)
        slot = principal.team
        token = pipeline.upstream_token()
        probe = pipeline.breaker.admit()  # open: 503 `upstream_unavailable`, nothing listed
        try:
            await pipeline.audit.write(batch.started_record(request), durable=False)
            listing = await _listing(pipeline, request, token, batch.request_id)
        finally:
            if probe:
                pipeline.breaker.end_probe()
        batch.matched, batch.truncated = len(listing.jobs), listing.truncated
        results = [None] * len(listing.jobs)
        await _run(pipeline, batch, principal, request, listing.jobs, token, results)
        status, error = 200, None
        body = json.dumps({
            "batch_id": batch.batch_id, "dry_run": request.dry_run, "matched": batch.matched,
            "truncated": batch.truncated, "counts": counts_of(results),
            "results": [r.as_json() for r in results if r is not None and r.listed],
        }).encode("utf-8")
        await _write_result(pipeline, batch, status=status, error=error, results=results)
        await send_response(send, 200, body, [])
        return
    except ClientGone:
        status, error = 499, "client_disconnected"
        if scope.get(TIMED_OUT):  # the protocol answered 408 and closed: so is it recorded
            status, error = 408, "request_timeout"
    except GatewayError as exc:
        status, error, failure = exc.status, exc.code, exc
    except asyncio.CancelledError:
        # Shutdown ran out of grace: the batch's result is still recorded, at close.
        pipeline.audit.write_later(batch.result_record(
            status=None, error="shutdown", counts=counts_of(results)))
        raise
    except Exception:
        log.exception("bulk.internal_error", request_id=batch.request_id)
        failure = GatewayError("internal error")
    finally:
        if slot is not None:
            pipeline.batches.give_back(slot)
    if failure is not None:
        try:
            await send_error(send, failure, close=close)
        except Exception:
            log.exception("bulk.answer_failed", request_id=batch.request_id)
    exchange.error = error
    await _write_result(pipeline, batch, status=status, error=error, results=results)


async def _write_result(
    pipeline: CancelPipeline, batch: Batch, *, status: int, error: str | None,
    results: list[ItemResult | None],
) -> None:
    record = batch.result_record(status=status, error=error, counts=counts_of(results))
    # Unauthenticated refusals share the single cancel's per-client budget
    # (`audit.denied_per_second`).
    if not pipeline.denied.admit(record, authenticated=batch.principal is not None):
        return
    with contextlib.suppress(AuditUnavailable):
        await pipeline.audit.write(record, retain=True, durable=False)


async def _listing(pipeline: CancelPipeline, request: BulkRequest, token: str, request_id: str
                   ) -> Listing:
    try:
        listing = await list_pending(pipeline.upstream, request, token=token,
                                     request_id=request_id)
    except GatewayError as exc:
        pipeline.count_failure("list_jobs", exc)
        log.warning("upstream.list_failed", request_id=request_id, error=exc.code,
                    upstream_status=exc.upstream_status)
        raise
    for job in listing.jobs:
        pipeline.lookup.remember(job)  # a later single cancel of it needs no lookup
    return listing


async def _run(
    pipeline: CancelPipeline, batch: Batch, principal: Principal, request: BulkRequest,
    jobs: tuple[Job, ...], token: str, results: list[ItemResult | None],
) -> None:
    """Every listed job, at most `bulk.concurrency` at once, `results` filled in place (so
    that what finished is known if the batch is cut off)."""
    queue = iter(enumerate(jobs))
    stopped = False  # the key went or the team was disabled: nothing more is sent

    async def worker() -> None:
        nonlocal stopped
        for index, job in queue:  # one shared iterator: each job is taken once
            if request.dry_run:
                results[index] = (_out_of_scope(pipeline.policy.scopes, principal, job)
                                  or ItemResult(job.id, None, WOULD_CANCEL, None))
                continue
            if stopped:
                forbidden = results[index] = ItemResult(job.id, 403, "forbidden", "forbidden")
                await _refused(pipeline, batch, principal, index, job, forbidden)
                continue
            # Room first, then the live policy: a batch that waited for room obeys the rules
            # in force when its cancel leaves, not those of when it started waiting.
            in_flight = pipeline.policy.in_flight
            await in_flight.enter_when_room(principal.team)
            try:
                live = pipeline.policy
                refusal: ItemResult | None = None
                if not live.still_admits(principal):
                    stopped = True
                    refusal = ItemResult(job.id, 403, "forbidden", "forbidden")
                else:
                    refusal = _out_of_scope(live.scopes, principal, job)
                if refusal is None and pipeline.draining:
                    # SIGTERM: what is in flight finishes, nothing new starts.
                    refusal = ItemResult(job.id, 503, "unavailable", "shutdown")
                if refusal is None:
                    results[index] = await _cancel_one(pipeline, batch, principal, index, job,
                                                       token)
            finally:
                in_flight.leave(principal.team)
            if refusal is not None:
                results[index] = refusal
                await _refused(pipeline, batch, principal, index, job, refusal)

    workers = min(pipeline.config.bulk.concurrency, len(jobs))
    await asyncio.gather(*(worker() for _ in range(workers)))


def _out_of_scope(scopes: ScopeAuthorizer, principal: Principal, job: Job) -> ItemResult | None:
    """The scope check of a single cancel, from the listed metadata (no lookup); a job
    outside it is counted but not listed."""
    if not scopes.needs_lookup(principal.team):
        return None
    try:
        scopes.authorize_job(principal.team, job.context)
    except RequestRejected as exc:
        return ItemResult(job.id, exc.status, exc.outcome, exc.code, listed=False)
    return None


def _cancellation(batch: Batch, principal: Principal, index: int, job: Job) -> Cancellation:
    return Cancellation(
        request_id=item_request_id(batch.request_id, index + 1), invocation_id=job.id,
        client=batch.client, started=time.perf_counter(), principal=principal,
        context=job.context, batch_id=batch.batch_id,
    )


async def _refused(
    pipeline: CancelPipeline, batch: Batch, principal: Principal, index: int, job: Job,
    result: ItemResult,
) -> None:
    """A listed job that is not cancelled gets one `cancel.result` record, as a single cancel
    refused before its forward does."""
    assert result.status is not None
    await pipeline.finish(_cancellation(batch, principal, index, job), status=result.status,
                          outcome=result.outcome, error=result.error)


async def _cancel_one(
    pipeline: CancelPipeline, batch: Batch, principal: Principal, index: int, job: Job, token: str
) -> ItemResult:
    """One ordinary cancel; whatever happens to it is its own result, never the batch's."""
    cancel = _cancellation(batch, principal, index, job)
    status, outcome = 500, "upstream_error"
    error: str | None = "internal_error"
    probe = False
    try:
        # As for a single cancel: while the circuit is open, 503 and nothing is sent.
        probe = pipeline.breaker.admit()
        reply = await pipeline.forward(cancel, token)
        status, outcome, error = reply.status, reply.outcome, reply.error
    except GatewayError as exc:  # 503 audit_unavailable included: then nothing was sent
        cancel.upstream_status = exc.upstream_status
        status, outcome, error = exc.status, exc.outcome, exc.code
    except asyncio.CancelledError:
        pipeline.record_shutdown(cancel)
        raise
    except Exception:
        log.exception("cancel.internal_error", request_id=cancel.request_id)
    finally:
        if probe:
            pipeline.breaker.end_probe()
    await pipeline.finish(cancel, status=status, outcome=outcome, error=error)
    return ItemResult(job.id, status, outcome, error)
