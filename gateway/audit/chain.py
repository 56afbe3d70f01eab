"""The audit log's hash chain: canonical encoding, record hashes and MACs.

This module is the single definition of what the security team verifies. The writer
(`gateway.audit.writer`, through `gateway.audit.head`) and the verifier (`gateway.audit.verify`)
both seal and check records through it, so the two can never disagree about the bytes that are
hashed.

Canonical encoding of a record: the record without its `hash` and `mac` members, as JSON with
keys sorted, separators `,` and `:` with no spaces, non-ASCII characters written as themselves,
encoded as UTF-8. Numbers are integers, except `duration_ms`, which is rounded to 3 decimals.

A line in the log is the canonical encoding of the *whole* record (with `hash` and `mac`), so
what a person reads is exactly what was hashed, and any byte changed in a line is detectable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

GENESIS = "0" * 64
"""`prev` of the first record of a chain."""

SEAL_FIELDS = ("hash", "mac")


# One encoder for every record: `json.dumps` with these options builds a new one per call.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical(body: Mapping[str, Any]) -> bytes:
    """The canonical encoding of `body` (which must not hold `hash` or `mac`)."""
    return _ENCODER.encode(body).encode("utf-8")


def body_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record without its seal fields: what the hash and the MAC cover."""
    return {k: v for k, v in record.items() if k not in SEAL_FIELDS}


def record_hash(encoded_body: bytes) -> str:
    return hashlib.sha256(encoded_body).hexdigest()


def record_mac(key: bytes, encoded_body: bytes) -> str:
    return hmac.new(key, encoded_body, hashlib.sha256).hexdigest()


def seal(
    body: Mapping[str, Any], *, seq: int, prev: str, mac_key: bytes | None
) -> tuple[dict[str, Any], bytes]:
    """Chain `body` after `prev` as record number `seq`.

    Returns the sealed record and its line (canonical encoding plus a newline).
    """
    record = dict(body)
    record["seq"] = seq
    record["prev"] = prev
    encoded = canonical(record)
    record["hash"] = record_hash(encoded)
    if mac_key is not None:
        record["mac"] = record_mac(mac_key, encoded)
    return record, canonical(record) + b"\n"


def mac_matches(key: bytes, encoded_body: bytes, mac: object) -> bool:
    if not isinstance(mac, str):
        return False
    return hmac.compare_digest(record_mac(key, encoded_body), mac)
