"""gateway.jobs: a Job is parsed strictly; anything else is a broken response."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gateway.jobs import JobContext, NotAJob, parse_job, parse_job_body, parse_job_list

JOB: dict[str, Any] = {
    "id": "3F2A1C9E-8B7D-4E6F-9A1B-2C3D4E5F6A7B",
    "source_id": "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4",
    "status": "pending",
    "created_at": "2026-11-20T09:14:03Z",
    "metadata": {"database_name": "docs", "collection_name": "handbook",
                 "github": {"git_ref_identifier": {"branch": "main"}}},
}


def test_the_spec_example_parses_into_a_canonical_job() -> None:
    job = parse_job(JOB)
    assert job.id == "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"
    assert job.status == "pending"
    assert job.context == JobContext("docs", "handbook", "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4")


@pytest.mark.parametrize(("status", "name"), [
    ("processing", "processing"), ("cancelled", "cancelled"),
    ({"complete": {"finished_at": "2026-11-20T09:20:00Z", "duration_ms": 5}}, "complete"),
    ({"failed": {"error": "boom"}}, "failed"),
])
def test_every_job_status_is_read(status: object, name: str) -> None:
    assert parse_job({**JOB, "status": status}).status == name


def test_a_null_or_missing_source_is_none() -> None:
    assert parse_job({**JOB, "source_id": None}).context.source_id is None
    job = dict(JOB)
    del job["source_id"]
    assert parse_job(job).context.source_id is None


def broken(path: tuple[str, ...], value: object = ...) -> dict[str, Any]:
    job = copy.deepcopy(JOB)
    target = job
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return job


@pytest.mark.parametrize("job", [
    broken(("metadata", "database_name")),
    broken(("metadata", "collection_name")),
    broken(("metadata", "database_name"), 7),
    broken(("metadata",), "docs"),
    broken(("id",)),
    broken(("id",), "not-a-uuid"),
    broken(("source_id",), "nope"),
    broken(("status",)),
    broken(("status",), "exploded"),
    broken(("status",), {"complete": {}, "failed": {}}),
    broken(("status",), {"pending": {}}),
    broken(("status",), {"complete": "done"}),
    broken(("status",), {"failed": None}),
    broken(("created_at",)),
    [JOB],
    "job",
], ids=["no-database", "no-collection", "database-not-string", "metadata-not-object", "no-id",
        "bad-id", "bad-source", "no-status", "unknown-status", "two-states",
        "plain-state-as-object", "complete-not-object", "failed-null", "no-created-at",
        "a-list", "a-string"])
def test_anything_but_a_job_is_refused(job: object) -> None:
    with pytest.raises(NotAJob):
        parse_job(job)


def test_bodies_that_are_not_json_are_refused_without_recursion_errors() -> None:
    for body in (b"<html>", b"", b"[" * 100_000, b"\xff\xfe"):
        with pytest.raises(NotAJob):
            parse_job_body(body)


def test_a_job_list_is_an_array_of_jobs() -> None:
    assert [j.id for j in parse_job_list(json.dumps([JOB, JOB]).encode())] == [
        "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"] * 2
    assert parse_job_list(b"[]") == []
    with pytest.raises(NotAJob):
        parse_job_list(json.dumps(JOB).encode())
    with pytest.raises(NotAJob):
        parse_job_list(json.dumps([JOB, {"id": 1}]).encode())
