"""One cancel as the audit trail sees it, from its first check to its result, and the
`cancel.attempt` / `cancel.result` records built from it."""

from __future__ import annotations

import time
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

from gateway.access.auth import Principal
from gateway.audit.timestamps import utc_timestamp
from gateway.jobs import JobContext


@dataclass
class Cancellation:
    """One cancel: a single route's, or one of a bulk cancel's."""

    request_id: str
    invocation_id: str  # canonical, or the raw value cut to 128 characters
    client: str | None  # the socket's peer address
    started: float
    principal: Principal | None = None
    context: JobContext | None = None  # what the job touches, once looked up
    batch_id: str | None = None  # set for the cancels of a bulk cancel
    upstream_status: int | None = None
    forwarded: bool = False  # a PUT may have left
    tries: int = 0  # attempt records written; the last one's `attempt`
    attempts: int = 0  # PUTs sent (or that may have been): the result's `attempts`
    reconciled: bool = False  # the answer was settled by a lookup (`gateway.upstream.retry`)
    in_progress: Sized | None = None  # the requests in progress (`asgi.IN_PROGRESS`), if known

    @property
    def alone(self) -> bool:
        """Whether no other request is in progress: none could share this one's fsync."""
        return self.in_progress is not None and len(self.in_progress) <= 1


def cancel_record(
    event: str, cancel: Cancellation, *, outcome: str, status: int | None, error: str | None,
) -> dict[str, Any]:
    """A `cancel.attempt` or `cancel.result` record of `cancel` as it stands now."""
    principal, context = cancel.principal, cancel.context
    record: dict[str, Any] = {
        "ts": utc_timestamp(),
        "event": event,
        "request_id": cancel.request_id,
        "invocation_id": cancel.invocation_id,
        "team": principal.team if principal else None,
        "key_id": principal.key_id if principal else None,
        "client": cancel.client,
        "outcome": outcome,
        "status": status,
        # An attempt is written before its PUT: it has no upstream answer yet.
        "upstream_status": None if event == "cancel.attempt" else cancel.upstream_status,
        "error": error,
        "duration_ms": round((time.perf_counter() - cancel.started) * 1000, 3),
        "database": context.database if context else None,
        "collection": context.collection if context else None,
        "source_id": context.source_id if context else None,
    }
    if event == "cancel.attempt":
        record["attempt"] = cancel.tries
    else:
        record["attempts"] = cancel.attempts
        record["reconciled"] = cancel.reconciled
    if cancel.batch_id is not None:
        record["batch_id"] = cancel.batch_id
    return record
