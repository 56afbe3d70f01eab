"""A bulk cancel's request: its content type and its JSON body, validated into a `BulkRequest`
(exactly one of `source_id`, `database_name`; `dry_run`; `limit`), or 400 `invalid_request`
naming the field that is wrong."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from gateway import asgi
from gateway.errors import RequestRejected

MAX_BODY_BYTES = 4096
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_DATABASE_NAME = 512
FIELDS = frozenset({"source_id", "database_name", "dry_run", "limit"})

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


async def read_body(headers: list[tuple[bytes, bytes]], receive: asgi.Receive) -> bytes:
    """The whole body, at most `MAX_BODY_BYTES` (else 400 `invalid_request`)."""
    return await asgi.read_body(
        headers, receive, limit=MAX_BODY_BYTES,
        too_large=invalid(f"the body must be at most {MAX_BODY_BYTES} bytes"))
