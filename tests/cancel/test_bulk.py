"""gateway.cancel.bulk in process: the body's value object, the content type, request ids, counts,
the `[bulk]` config table, and the listing against a real stand-in on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cancel import batch, bulk_request
from gateway.cancel.batch import ItemResult
from gateway.cancel.bulk_request import BulkRequest
from gateway.cancel.listing import Listing, list_pending
from gateway.config import load as config
from gateway.config import model
from gateway.demo.standin import ReceivedRequest, Respond, StandIn, json_response
from gateway.errors import ConfigError, GatewayError, RequestRejected, UpstreamRefused
from gateway.upstream.client import UpstreamClient
from tests.harness import render_toml

TOKEN = "unit-bulk-upstream-token-0123456789abcdef"
SOURCE = "0B8E1D2C-3A4F-4B5C-8D6E-7F8091A2B3C4"


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def refusal(raw: bytes) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        bulk_request.parse_request(raw)
    assert (info.value.status, info.value.code) == (400, "invalid_request")
    return info.value


# -- the body --------------------------------------------------------------------------------


def test_a_source_id_is_canonicalized_and_the_defaults_apply() -> None:
    request = bulk_request.parse_request(body({"source_id": SOURCE}))
    assert request == BulkRequest(source_id=SOURCE.lower(), dry_run=False, limit=1000)
    assert request.selector == {"source_id": SOURCE.lower()}


def test_a_database_name_with_dry_run_and_limit_is_kept_as_given() -> None:
    request = bulk_request.parse_request(body({"database_name": "Docs é", "dry_run": True,
                                       "limit": 10000}))
    assert request == BulkRequest(database_name="Docs é", dry_run=True, limit=10000)
    assert request.selector == {"database_name": "Docs é"}


@pytest.mark.parametrize("limit", [1, 10000])
def test_limit_bounds_are_accepted(limit: int) -> None:
    assert bulk_request.parse_request(body({"source_id": SOURCE, "limit": limit})).limit == limit


@pytest.mark.parametrize(("value", "field"), [
    ({"source_id": SOURCE, "database_name": "d"}, "exactly one of source_id and database_name"),
    ({"limit": 3}, "exactly one of source_id and database_name"),
    ({"source_id": SOURCE[:-1]}, "source_id must be a UUID"),
    ({"source_id": SOURCE.replace("-", "")}, "source_id must be a UUID"),
    ({"source_id": None}, "source_id must be a UUID"),
    ({"database_name": "a\nb"}, "database_name must be"),
    ({"database_name": "x" * 513}, "database_name must be"),
    ({"source_id": SOURCE, "limit": -1}, "limit must be a whole number from 1 to 10000"),
    ({"source_id": SOURCE, "limit": 10**30}, "limit must be"),
    ({"source_id": SOURCE, "dry_run": 1}, "dry_run must be true or false"),
    ({"source_id": SOURCE, "Limit": 3}, "'Limit' is not a known field"),
    ({"source_id": SOURCE, "x" * 100: 3}, "is not a known field"),
])
def test_each_bad_field_is_named(value: dict[str, Any], field: str) -> None:
    assert field in refusal(body(value)).message


def test_an_unknown_field_with_control_characters_is_quoted_safely() -> None:
    message = refusal(body({"source_id": SOURCE, "a\r\nb": 1})).message
    assert "\r" not in message and "\n" not in message and "'a\\r\\nb'" in message


@pytest.mark.parametrize("raw", [b"", b"{", b"null", b"3", b'"x"', b"[]", b"\xc3", b"[" * 10**5,
                                 b'{"source_id": Infinity}'])
def test_anything_but_a_json_object_is_refused(raw: bytes) -> None:
    assert "JSON" in refusal(raw).message or "UTF-8" in refusal(raw).message


def test_a_repeated_field_is_refused_rather_than_the_last_one_winning() -> None:
    raw = b'{"database_name": "mine", "database_name": "theirs"}'
    assert "'database_name' appears twice" in refusal(raw).message


# -- the content type ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"application/json", b"APPLICATION/JSON",
                                   b"application/json; charset=utf-8",
                                   b'application/json;charset="UTF-8"'])
def test_json_content_types_are_accepted(value: bytes) -> None:
    bulk_request.check_content_type([(b"content-type", value)])


@pytest.mark.parametrize("headers", [
    [], [(b"content-type", b"text/json")], [(b"content-type", b"application/jsonx")],
    [(b"content-type", b"application/json; charset=utf-16")],
    [(b"content-type", b"application/json; boundary=x")],
    [(b"content-type", b"application/json"), (b"content-type", b"application/json")],
])
def test_other_content_types_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(RequestRejected, match="content type"):
        bulk_request.check_content_type(headers)


# -- reading the body ------------------------------------------------------------------------


def receiving(*chunks: bytes) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": n < len(chunks) - 1}
                for n, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def test_a_chunked_body_is_joined_up_to_4_kib() -> None:
    got = asyncio.run(bulk_request.read_body([], receiving(b"a" * 4000, b"b" * 96)))
    assert got == b"a" * 4000 + b"b" * 96


def test_a_chunked_body_over_4_kib_is_refused_without_reading_on() -> None:
    with pytest.raises(RequestRejected, match="at most 4096 bytes"):
        asyncio.run(bulk_request.read_body([], receiving(b"a" * 4000, b"b" * 97, b"c")))


@pytest.mark.parametrize("length", [b"4097", b"0" * 5000 + b"5000", b"9" * 5000])
def test_a_declared_length_over_4_kib_is_refused_before_reading(length: bytes) -> None:
    with pytest.raises(RequestRejected, match="at most 4096 bytes"):
        asyncio.run(bulk_request.read_body([(b"content-length", length)], receiving()))


# -- request ids and counts ------------------------------------------------------------------


def test_each_cancel_gets_the_batch_request_id_and_its_number() -> None:
    assert batch.item_request_id("bulk-7", 1) == "bulk-7.1"
    long = "r" * 128
    derived = batch.item_request_id(long, 10000)
    assert len(derived) == 128 and derived.endswith(".10000")


def test_counts_are_by_outcome_and_skip_what_has_no_result_yet() -> None:
    results: list[ItemResult | None] = [
        ItemResult("a", 202, "cancelled", None), None, ItemResult("b", 412, "not_cancelable",
                                                                  "not_cancelable"),
        ItemResult("c", 202, "cancelled", None),
    ]
    assert batch.counts_of(results) == {"cancelled": 2, "not_cancelable": 1}


# -- the [bulk] table ------------------------------------------------------------------------


def load(tmp_path: Path, extra: str) -> model.Config:
    data = {
        "upstream": {"base_url": "https://sync.example.test", "token_file": "token"},
        "audit": {"path": "audit.jsonl"},
        "teams": [{"name": "a", "keys": ["sha256:" + "0" * 64], "scope": ["*"]}],
    }
    path = tmp_path / "config.toml"
    path.write_text(extra + "\n" + render_toml(data))
    return config.load(str(path))


def test_bulk_concurrency_defaults_to_4_and_takes_1_to_64(tmp_path: Path) -> None:
    assert load(tmp_path, "").bulk.concurrency == 4
    assert load(tmp_path, "[bulk]\nconcurrency = 1").bulk.concurrency == 1
    assert load(tmp_path, "[bulk]\nconcurrency = 64").bulk.concurrency == 64


@pytest.mark.parametrize(("extra", "message"), [
    ("[bulk]\nconcurrency = 0", "bulk.concurrency must be a whole number from 1 to 64, got 0"),
    ("[bulk]\nconcurrency = 65", "bulk.concurrency must be a whole number from 1 to 64, got 65"),
    ('[bulk]\nconcurrency = "4"', 'bulk.concurrency must be a whole number from 1 to 64, got "4"'),
    ("[bulk]\nparallel = 2", "bulk.parallel is not a known key"),
    ("bulk = 3", "bulk must be a table, got 3"),
])
def test_bad_bulk_settings_are_refused_naming_the_key(
    tmp_path: Path, extra: str, message: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra)
    assert str(info.value).endswith(message)


# -- listing against a real stand-in ---------------------------------------------------------


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn(token=TOKEN)
    with server.run_in_thread():
        yield server


def listing(standin: StandIn, request: BulkRequest) -> Listing:
    async def run() -> Listing:
        client = UpstreamClient(model.UpstreamConfig(base_url=standin.base_url,
                                                      token_file="unused", timeout=2.0))
        try:
            return await list_pending(client, request, token=TOKEN, request_id="unit")
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_listing_pages_by_100_until_a_short_page(standin: StandIn) -> None:
    source = str(uuid.uuid4())
    ids = [standin.add_invocation(state="pending", source_id=source) for _ in range(205)]
    got = listing(standin, BulkRequest(source_id=source))
    assert [job.id for job in got.jobs] == ids and got.truncated is False
    assert got.jobs[0].context.source_id == source
    assert [r.target.count("offset=") for r in standin.requests] == [1, 1, 1]


def test_listing_stops_at_limit_plus_one(standin: StandIn) -> None:
    for _ in range(350):
        standin.add_invocation(state="pending", database="big")
    got = listing(standin, BulkRequest(database_name="big", limit=150))
    assert len(got.jobs) == 150 and got.truncated is True
    assert len(standin.requests) == 2  # 151 needed: two pages, not four


def test_an_upstream_repeating_full_pages_is_listed_once_and_bounded(standin: StandIn) -> None:
    [job_id] = [standin.add_invocation(state="pending", database="loop")]
    page = [standin.job_of(job_id)] * 100

    def same_page(request: ReceivedRequest) -> Respond:
        return json_response(200, page)

    standin.behaviour = same_page
    got = listing(standin, BulkRequest(database_name="loop", limit=250))
    assert [job.id for job in got.jobs] == [job_id]  # once, though listed 300 times
    assert len(standin.requests) == 3  # ceil(251 / 100) pages at most


def test_a_listing_refusal_is_the_mapped_answer(standin: StandIn) -> None:
    with pytest.raises(UpstreamRefused) as info:
        listing(standin, BulkRequest(source_id=str(uuid.uuid4())))
    assert (info.value.status, info.value.code) == (404, "not_found")


def test_a_listing_with_the_token_in_its_body_is_not_passed_through(standin: StandIn) -> None:
    standin.behaviour = lambda r: json_response(400, {"error": TOKEN, "message": "x"})
    with pytest.raises(GatewayError) as info:
        listing(standin, BulkRequest(database_name="docs"))
    assert info.value.status == 400 and TOKEN.encode() not in (info.value.body or b"")
