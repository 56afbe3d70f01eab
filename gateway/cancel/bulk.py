"""Bulk cancel: `POST /gateway/v1/bulk-cancel` cancels every pending invocation of a source or
a database.

Checks run in the single cancel's order: authentication (401), authorization (403), the body
(400 `invalid_request`, naming the field), the team's rate limit (429, taken once for the
whole batch), the upstream token (503). Then a `batch.started` record, then *all* matching
pending invocations are listed (`list_jobs`, pages of 100 by offset, oldest first) and only
then cancelled: cancelling while paging by offset would shift the pages and skip invocations.

Each listed invocation is an ordinary cancel (`Gateway._forward_cancel`, `Gateway._finish`):
scope checked from the list's own metadata, attempt record before its PUT, result after, with
the batch's `batch_id`; at most `bulk.concurrency` at once. A `batch.result` record closes the
batch, whatever its end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from gateway.access.auth import Principal
from gateway.access.scopes import ScopeAuthorizer
from gateway.audit.log import AuditUnavailable, utc_timestamp
from gateway.errors import GatewayError, RequestRejected, UpstreamFailure, method_not_allowed
from gateway.jobs import Job, NotAJob, parse_job_list
from gateway.server.app import (
    BULK_PATH,
    Cancellation,
    ClientGone,
    Exchange,
    Receive,
    Scope,
    Send,
    _send,
)
from gateway.upstream import mapping
from gateway.upstream.client import UpstreamClient

if TYPE_CHECKING:
    from gateway.server.app import Gateway

log = structlog.get_logger("gateway")

ROUTE = BULK_PATH.decode("ascii")
MAX_BODY_BYTES = 4096
PAGE_SIZE = 100
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_DATABASE_NAME = 512
FIELDS = frozenset({"source_id", "database_name", "dry_run", "limit"})
WOULD_CANCEL = "would_cancel"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def invalid(message: str) -> RequestRejected:
    return RequestRejected(message, status=400, code="invalid_request",
                           outcome="invalid_request")


@dataclass(frozen=True)
class BulkRequest:
    """A bulk cancel's body, validated: exactly one of `source_id`, `database_name`."""

    source_id: str | None = None  # canonical lowercase
    database_name: str | None = None
    dry_run: bool = False
    limit: int = DEFAULT_LIMIT

    @property
    def selector(self) -> dict[str, str]:
        """The `list_jobs` filter, which is also what the `batch.started` record names."""
        if self.source_id is not None:
            return {"source_id": self.source_id}
        assert self.database_name is not None
        return {"database_name": self.database_name}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            # Two readers of the same body must not see different filters.
            raise invalid(f"{_shown(key)} appears twice in the body")
        found[key] = value
    return found


def _refuse_constant(name: str) -> NoReturn:
    raise invalid(f"the body is not JSON ({name} is not a JSON value)")


def _shown(name: str) -> str:
    """A caller's field name, safe to quote in a message: ASCII-escaped and cut."""
    return ascii(name if len(name) <= 40 else name[:40] + "...")


def parse_request(body: bytes) -> BulkRequest:
    """The body as a `BulkRequest`, or `RequestRejected` (400 `invalid_request`) naming the
    field that is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("the body is not UTF-8 JSON") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # deeply nested JSON raises RecursionError
        raise invalid("the body is not JSON") from None
    if not isinstance(value, dict):
        raise invalid("the body must be a JSON object")
    unknown = sorted(set(value) - FIELDS)
    if unknown:
        # Refused rather than ignored: a misspelt "dry_run" must not cancel for real.
        raise invalid(f"{_shown(unknown[0])} is not a known field "
                      "(source_id, database_name, dry_run, limit)")
    if ("source_id" in value) == ("database_name" in value):
        raise invalid("exactly one of source_id and database_name is required")
    source_id = database_name = None
    if "source_id" in value:
        raw = value["source_id"]
        if not isinstance(raw, str) or not _UUID.fullmatch(raw):
            raise invalid("source_id must be a UUID (8-4-4-4-12 hex digits)")
        source_id = raw.lower()
    else:
        raw = value["database_name"]
        if (not isinstance(raw, str) or not raw or len(raw) > MAX_DATABASE_NAME
                or _CONTROL.search(raw)):
            raise invalid(f"database_name must be a string of 1 to {MAX_DATABASE_NAME} "
                          "characters, without control characters")
        database_name = raw
    dry_run = value.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise invalid("dry_run must be true or false")
    limit = value.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return BulkRequest(source_id, database_name, dry_run, limit)


def check_content_type(headers: list[tuple[bytes, bytes]]) -> None:
    """`application/json`, optionally with `charset=utf-8`; sent once."""
    values = [v for k, v in headers if k == b"content-type"]
    problem = "the content type must be application/json"
    if len(values) != 1:
        raise invalid(problem)
    media, _, params = values[0].decode("latin-1").partition(";")
    if media.strip().lower() != "application/json":
        raise invalid(problem)
    for param in filter(None, (p.strip() for p in params.split(";"))):
        name, _, setting = param.partition("=")
        if name.strip().lower() != "charset" or setting.strip().strip('"').lower() != "utf-8":
            raise invalid(problem + " (with no parameter but charset=utf-8)")


async def read_body(headers: list[tuple[bytes, bytes]], receive: Receive) -> bytes:
    """The whole body, at most `MAX_BODY_BYTES`; a disconnect is `ClientGone`."""
    too_large = invalid(f"the body must be at most {MAX_BODY_BYTES} bytes")
    for name, value in headers:
        if name == b"content-length":
            # Digits only (framing was checked); length first, as int() refuses 4300+ digits.
            digits = value.strip().lstrip(b"0")
            if len(digits) > 9 or int(digits or b"0") > MAX_BODY_BYTES:
                raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


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


@dataclass(frozen=True)
class ItemResult:
    invocation_id: str
    status: int | None  # what a single cancel would have answered; None: nothing was asked
    outcome: str
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return {"invocation_id": self.invocation_id, "status": self.status,
                "outcome": self.outcome, "error": self.error}


def item_request_id(request_id: str, number: int) -> str:
    """The request id of a batch's `number`th cancel (1-based, in listing order): the batch's
    own, cut so that the whole stays within 128 characters, then `.number`."""
    suffix = f".{number}"
    return request_id[: 128 - len(suffix)] + suffix


@dataclass
class Batch:
    """One bulk cancel as the audit trail sees it."""

    batch_id: str
    request_id: str
    client: str | None
    started: float
    principal: Principal | None = None
    request: BulkRequest | None = None
    matched: int = 0
    truncated: bool = False

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        principal = self.principal
        return {
            "ts": utc_timestamp(),
            "event": event,
            "batch_id": self.batch_id,
            "request_id": self.request_id,
            "team": principal.team if principal else None,
            "key_id": principal.key_id if principal else None,
            "client": self.client,
            **fields,
        }

    def started_record(self, request: BulkRequest) -> dict[str, Any]:
        return self.record("batch.started", **request.selector, dry_run=request.dry_run,
                           limit=request.limit)

    def result_record(
        self, *, status: int | None, error: str | None, counts: Mapping[str, int]
    ) -> dict[str, Any]:
        return self.record(
            "batch.result", dry_run=self.request.dry_run if self.request else None,
            matched=self.matched, truncated=self.truncated, counts=dict(counts),
            status=status, error=error,
            duration_ms=round((time.perf_counter() - self.started) * 1000, 3),
        )


def counts_of(results: list[ItemResult | None]) -> dict[str, int]:
    counter = collections.Counter(r.outcome for r in results if r is not None)
    return dict(sorted(counter.items()))


async def handle(
    gateway: Gateway, scope: Scope, receive: Receive, send: Send, exchange: Exchange,
    started: float,
) -> None:
    """The bulk-cancel route, checks in the single cancel's order, then the batch."""
    if scope["method"] != "POST":
        await gateway._send_error(send, method_not_allowed("POST"))
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
    policy = gateway.policy  # once: a reload mid-batch does not change its rules
    try:
        principal = batch.principal = policy.authenticator.authenticate(headers)
        exchange.team = principal.team
        policy.key_used(principal)
        policy.authorizer.authorize(principal)
        check_content_type(headers)
        try:
            request = batch.request = parse_request(await read_body(headers, receive))
        except RequestRejected:
            close = True  # the body may be left unread: don't read the rest of it
            raise
        gateway._check_rate(policy, principal.team)
        token = gateway._upstream_token()
        probe = gateway.breaker.admit()  # open: 503 `upstream_unavailable`, nothing listed
        try:
            await gateway.audit.write(batch.started_record(request), durable=False)
            listing = await _listing(gateway, request, token, batch.request_id)
        finally:
            if probe:
                gateway.breaker.end_probe()
        batch.matched, batch.truncated = len(listing.jobs), listing.truncated
        results = [None] * len(listing.jobs)
        await _run(gateway, policy.scopes, batch, principal, request, listing.jobs, token,
                   results)
        status, error = 200, None
        body = json.dumps({
            "batch_id": batch.batch_id, "dry_run": request.dry_run, "matched": batch.matched,
            "truncated": batch.truncated, "counts": counts_of(results),
            "results": [r.as_json() for r in results if r is not None],
        }).encode("utf-8")
        await _write_result(gateway, batch, status=status, error=error, results=results)
        await _send(send, 200, body, [])
        return
    except ClientGone:
        status, error = 499, "client_disconnected"
    except GatewayError as exc:
        status, error, failure = exc.status, exc.code, exc
    except asyncio.CancelledError:
        # Shutdown ran out of grace: the batch's result is still recorded, at close.
        gateway.audit.write_later(batch.result_record(
            status=None, error="shutdown", counts=counts_of(results)))
        raise
    except Exception:
        log.exception("bulk.internal_error", request_id=batch.request_id)
        failure = GatewayError("internal error")
    if failure is not None:
        try:
            await gateway._send_error(send, failure, close=close)
        except Exception:
            log.exception("bulk.answer_failed", request_id=batch.request_id)
    await _write_result(gateway, batch, status=status, error=error, results=results)


async def _write_result(
    gateway: Gateway, batch: Batch, *, status: int, error: str | None,
    results: list[ItemResult | None],
) -> None:
    record = batch.result_record(status=status, error=error, counts=counts_of(results))
    # Unauthenticated refusals share the single cancel's per-client budget (issue 9).
    if not gateway.denied.admit(record, authenticated=batch.principal is not None):
        return
    with contextlib.suppress(AuditUnavailable):
        await gateway.audit.write(record, retain=True, durable=False)


async def _listing(gateway: Gateway, request: BulkRequest, token: str, request_id: str
                   ) -> Listing:
    try:
        listing = await list_pending(gateway.upstream, request, token=token,
                                     request_id=request_id)
    except GatewayError as exc:
        log.warning("upstream.list_failed", request_id=request_id, error=exc.code,
                    upstream_status=exc.upstream_status)
        raise
    for job in listing.jobs:
        gateway.lookup.remember(job)  # a later single cancel of it needs no lookup
    return listing


async def _run(
    gateway: Gateway, scopes: ScopeAuthorizer, batch: Batch, principal: Principal,
    request: BulkRequest, jobs: tuple[Job, ...], token: str, results: list[ItemResult | None],
) -> None:
    """Every listed job, at most `bulk.concurrency` at once, `results` filled in place (so
    that what finished is known if the batch is cut off)."""
    queue = iter(enumerate(jobs))
    restricted = scopes.needs_lookup(principal.team)

    async def worker() -> None:
        for index, job in queue:  # one shared iterator: each job is taken once
            refusal = _out_of_scope(scopes, principal, job) if restricted else None
            if refusal is None and not request.dry_run and gateway.draining:
                # SIGTERM: what is in flight finishes, nothing new starts.
                refusal = ItemResult(job.id, 503, "unavailable", "shutdown")
            if refusal is not None:
                results[index] = refusal
                if not request.dry_run:
                    await _refused(gateway, batch, principal, index, job, refusal)
            elif request.dry_run:
                results[index] = ItemResult(job.id, None, WOULD_CANCEL, None)
            else:
                results[index] = await _cancel_one(gateway, batch, principal, index, job,
                                                   token)

    workers = min(gateway.config.bulk.concurrency, len(jobs))
    await asyncio.gather(*(worker() for _ in range(workers)))


def _out_of_scope(scopes: ScopeAuthorizer, principal: Principal, job: Job) -> ItemResult | None:
    """The scope check of a single cancel, from the listed metadata (no lookup)."""
    try:
        scopes.authorize_job(principal.team, job.context)
    except RequestRejected as exc:
        return ItemResult(job.id, exc.status, exc.outcome, exc.code)
    return None


def _cancellation(batch: Batch, principal: Principal, index: int, job: Job) -> Cancellation:
    return Cancellation(
        request_id=item_request_id(batch.request_id, index + 1), invocation_id=job.id,
        client=batch.client, started=time.perf_counter(), principal=principal,
        context=job.context, batch_id=batch.batch_id,
    )


async def _refused(
    gateway: Gateway, batch: Batch, principal: Principal, index: int, job: Job,
    result: ItemResult,
) -> None:
    """A listed job that is not cancelled gets one `cancel.result` record, as a single cancel
    refused before its forward does."""
    assert result.status is not None
    await gateway._finish(_cancellation(batch, principal, index, job), status=result.status,
                          outcome=result.outcome, error=result.error)


async def _cancel_one(
    gateway: Gateway, batch: Batch, principal: Principal, index: int, job: Job, token: str
) -> ItemResult:
    """One ordinary cancel; whatever happens to it is its own result, never the batch's."""
    cancel = _cancellation(batch, principal, index, job)
    status, outcome = 500, "upstream_error"
    error: str | None = "internal_error"
    probe = False
    try:
        # As for a single cancel: while the circuit is open, 503 and nothing is sent.
        probe = gateway.breaker.admit()
        reply = await gateway._forward_cancel(cancel, token)
        status, outcome, error = reply.status, reply.outcome, reply.error
    except GatewayError as exc:  # 503 audit_unavailable included: then nothing was sent
        cancel.upstream_status = exc.upstream_status
        status, outcome, error = exc.status, exc.outcome, exc.code
    except asyncio.CancelledError:
        gateway._record_shutdown(cancel)
        raise
    except Exception:
        log.exception("cancel.internal_error", request_id=cancel.request_id)
    finally:
        if probe:
            gateway.breaker.end_probe()
    await gateway._finish(cancel, status=status, outcome=outcome, error=error)
    return ItemResult(job.id, status, outcome, error)
