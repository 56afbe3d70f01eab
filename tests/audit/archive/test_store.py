"""The archive's stores: create-only puts on a folder and on S3 (a real S3 API on loopback,
with S3 Object Lock in compliance mode), listing and reading back."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from gateway.audit.archive import location, opening, store
from tests.audit.archive.conftest import S3Server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)


def test_archive_urls_are_parsed_and_bad_ones_named() -> None:
    assert location.parse("file:///var/audit/") == location.ArchiveUrl(
        "file", "", "/var/audit", "file:///var/audit/")
    assert location.parse("s3://audit-bucket/fleet/eu").prefix == "fleet/eu"
    assert location.parse("s3://audit-bucket").prefix == ""
    for bad, why in [("http://x/y", "file:///PATH or s3://"), ("file://host/x", "no host"),
                     ("file:///", "names a folder"), ("s3://B/x", "valid bucket"),
                     ("s3://bucket/a/../b", "'..'"), ("s3://bucket/x?versionId=1", "query")]:
        with pytest.raises(location.BadArchiveUrl, match=why):
            location.parse(bad)


def test_object_names_hold_twenty_digit_seqs_and_parse_back() -> None:
    chain = "0123456789abcdef0123456789abcdef"
    name = location.segment_name(chain, 1, 1001)
    assert name == f"{chain}/00000000000000000001-00000000000000001001.jsonl"
    assert location.parse_segment(name) == location.Segment(chain, 1, 1001)
    assert location.checkpoint_name(chain, 1000) == f"{chain}/checkpoints/{1000:020d}"
    assert location.parse_checkpoint(location.checkpoint_name(chain, 7)) == (chain, 7)
    assert location.parse_segment(f"{chain}/00000000000000000009-00000000000000000001.jsonl") \
        is None


def test_a_folder_store_never_overwrites_and_accepts_the_same_bytes(tmp_path: Path) -> None:
    archive = opening.open_store(f"file://{tmp_path}/archive")
    assert store.put_once(archive, "c/a.jsonl", b"one\n") == "created"
    assert store.put_once(archive, "c/a.jsonl", b"one\n") == "already_there"
    with pytest.raises(store.Conflict, match="other content"):
        store.put_once(archive, "c/a.jsonl", b"two\n")
    assert (tmp_path / "archive/c/a.jsonl").read_bytes() == b"one\n"
    assert os.stat(tmp_path / "archive/c/a.jsonl").st_mode & 0o222 == 0  # read-only
    assert list(archive.names()) == ["c/a.jsonl"]
    assert not [f for f in os.listdir(tmp_path / "archive/c") if f.startswith(".")]


def test_s3_puts_are_accepted_by_an_object_lock_bucket_and_never_overwrite(
        s3_env: None, s3_server: S3Server, bucket: str) -> None:
    archive = opening.open_store(f"s3://{bucket}/fleet")
    assert store.put_once(archive, "c/x.jsonl", b"line\n") == "created"
    assert store.put_once(archive, "c/x.jsonl", b"line\n") == "already_there"
    with pytest.raises(store.Conflict):
        store.put_once(archive, "c/x.jsonl", b"other\n")
    assert s3_server.objects(bucket) == {"fleet/c/x.jsonl": b"line\n"}
    head = s3_server.client().head_object(Bucket=bucket, Key="fleet/c/x.jsonl")
    assert head["ObjectLockMode"] == "COMPLIANCE"  # the bucket's retention applies to it
    assert list(archive.names("c/")) == ["c/x.jsonl"]
    assert archive.read("c/x.jsonl") == b"line\n"


def test_the_locked_bucket_refuses_a_put_without_a_checksum(
        s3_server: S3Server, bucket: str) -> None:
    """What the checksum headers are for: the same bucket refuses a bare PUT."""
    # An unsigned raw PUT: moto checks the Object Lock headers before anything else.
    refused = httpx.put(f"{s3_server.endpoint}/{bucket}/bare", content=b"x", timeout=10)
    assert refused.status_code == 400
    assert "MissingUploadObjectWithObjectLockHeaders" in refused.text


def test_a_put_the_store_refuses_is_a_store_error_naming_the_code(s3_env: None) -> None:
    archive = opening.open_store("s3://no-such-bucket-here/fleet")
    with pytest.raises(store.StoreError, match="NoSuchBucket"):
        archive.create("c/x.jsonl", b"x\n")
