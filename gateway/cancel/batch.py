"""One bulk cancel as the audit trail sees it (`batch.started`, `batch.result`), and what
each of its cancels ended as."""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.access.auth import Principal
from gateway.audit.timestamps import utc_timestamp
from gateway.cancel.bulk_request import BulkRequest

WOULD_CANCEL = "would_cancel"  # a dry run's outcome for a job it would cancel


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


