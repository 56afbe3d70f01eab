"""Chroma Sync `Job` objects, parsed strictly: what the gateway needs to know of a job.

A 200 from `get_job` or `list_jobs` that is not a `Job` (or a list of them) is a broken
response, never a pass: a missing `metadata.database_name` must not read as "no database".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
# JobStatus: a bare string, or an object with exactly one of these keys.
_PLAIN_STATES = frozenset({"pending", "processing", "cancelled"})
_OBJECT_STATES = frozenset({"complete", "failed"})


class NotAJob(ValueError):
    """The body is not a `Job` as Chroma Sync's OpenAPI document defines it."""


@dataclass(frozen=True)
class JobContext:
    """What a job touches; it never changes, so it may be cached by invocation id."""

    database: str
    collection: str
    source_id: str | None


@dataclass(frozen=True)
class Job:
    id: str  # canonical lowercase UUID
    status: str  # pending, processing, complete, failed or cancelled
    context: JobContext


def parse_job(value: object) -> Job:
    if not isinstance(value, dict):
        raise NotAJob("a Job must be a JSON object")
    job_id = value.get("id")
    if not isinstance(job_id, str) or not _UUID.fullmatch(job_id):
        raise NotAJob("a Job needs an `id` UUID")
    metadata = value.get("metadata")
    if not isinstance(metadata, dict):
        raise NotAJob("a Job needs a `metadata` object")
    database = metadata.get("database_name")
    collection = metadata.get("collection_name")
    if not isinstance(database, str) or not isinstance(collection, str):
        raise NotAJob("a Job's metadata needs `database_name` and `collection_name` strings")
    source = value.get("source_id")
    if source is not None and (not isinstance(source, str) or not _UUID.fullmatch(source)):
        raise NotAJob("a Job's `source_id` must be a UUID or null")
    if not isinstance(value.get("created_at"), str):
        raise NotAJob("a Job needs `created_at`")
    return Job(
        id=job_id.lower(),
        status=_status(value.get("status")),
        context=JobContext(database, collection, source.lower() if source else None),
    )


def parse_job_body(body: bytes) -> Job:
    return parse_job(_json(body))


def parse_job_list(body: bytes) -> list[Job]:
    value = _json(body)
    if not isinstance(value, list):
        raise NotAJob("list_jobs must answer a JSON array of Jobs")
    return [parse_job(item) for item in value]


def _status(value: object) -> str:
    if isinstance(value, str) and value in _PLAIN_STATES:
        return value
    if isinstance(value, dict) and len(value) == 1:
        (name,) = value
        if name in _OBJECT_STATES and isinstance(value[name], dict):
            return str(name)
    raise NotAJob("a Job needs a known `status`")


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # deeply nested JSON raises RecursionError
        raise NotAJob("not JSON") from None
