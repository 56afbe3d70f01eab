"""gateway.audit.chain: the canonical encoding, record hashes, MACs and the chain's links."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import chain as audit_chain
from gateway.audit.chain import GENESIS, body_of, canonical, mac_matches, record_hash, seal

MAC_KEY = b"unit-audit-hmac-key-0123456789abcdef"

# A fixed record body. Its hash below was computed once and is hardcoded on purpose: any change
# to the canonical encoding (key order, separators, escaping, number form) breaks every
# existing chain, and must break this test first.
VECTOR_BODY: dict[str, Any] = {
    "ts": "2026-01-02T03:04:05.678Z",
    "event": "cancel.result",
    "request_id": "req-1",
    "invocation_id": "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b",
    "team": "billing",
    "key_id": "0123456789ab",
    "client": "127.0.0.1",
    "outcome": "cancelled",
    "status": 202,
    "upstream_status": 202,
    "error": None,
    "duration_ms": 1.25,
    "note": "caf\u00e9 \u2603",
}
VECTOR_HASH = "36c7b83752807dcbbf5d7b3499a32e55626cf9110c29572fedef3cd63c92ce0d"
VECTOR_MAC = "5e7542216df632199a8ec78c25a41cd1cb329056614a0d80b0778b48c6232f7a"  # key b"k" * 32
VECTOR_LINE = (
    '{"client":"127.0.0.1","duration_ms":1.25,"error":null,"event":"cancel.result",'
    '"hash":"36c7b83752807dcbbf5d7b3499a32e55626cf9110c29572fedef3cd63c92ce0d",'
    '"invocation_id":"3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b","key_id":"0123456789ab",'
    '"note":"caf\u00e9 \u2603","outcome":"cancelled",'
    '"prev":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"request_id":"req-1","seq":1,"status":202,"team":"billing",'
    '"ts":"2026-01-02T03:04:05.678Z","upstream_status":202}\n'
).encode("utf-8")


def spec_encoding(body: dict[str, Any]) -> bytes:
    """SPEC.md's definition, written out independently of the module."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8")


# -- canonical ------------------------------------------------------------------------------


def test_canonical_matches_the_spec_definition() -> None:
    assert canonical(VECTOR_BODY) == spec_encoding(VECTOR_BODY)


def test_canonical_sorts_keys_and_uses_no_spaces() -> None:
    assert canonical({"b": 1, "a": [1, 2], "c": {"z": None, "y": True}}) == (
        b'{"a":[1,2],"b":1,"c":{"y":true,"z":null}}')


def test_canonical_writes_non_ascii_as_itself_in_utf8() -> None:
    assert canonical({"k": "\u00e9\u65e5\U0001f600"}) == '{"k":"\u00e9\u65e5\U0001f600"}'.encode()


def test_canonical_escapes_quotes_backslashes_and_control_characters() -> None:
    encoded = canonical({"k": 'a"b\\c\nd\x00\x1f'})
    assert encoded == b'{"k":"a\\"b\\\\c\\nd\\u0000\\u001f"}'
    assert b"\n" not in encoded


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_canonical_refuses_nan_and_infinity(value: float) -> None:
    with pytest.raises(ValueError):
        canonical({"duration_ms": value})


@settings(max_examples=100, deadline=None, database=None)
@given(st.dictionaries(
    st.text(),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text()
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=10,
    ),
    max_size=6,
))
def test_canonical_matches_the_spec_definition_for_any_json_body(body: dict[str, Any]) -> None:
    expected = spec_encoding(body)
    assert canonical(body) == expected
    assert b"\n" not in expected


# -- body_of, hashes and MACs ---------------------------------------------------------------


def test_body_of_drops_only_hash_and_mac() -> None:
    record = {"seq": 1, "prev": GENESIS, "hash": "h", "mac": "m", "event": "e"}
    assert body_of(record) == {"seq": 1, "prev": GENESIS, "event": "e"}
    assert "hash" in record  # the record itself is left alone


def test_record_hash_is_the_hex_sha256_of_the_bytes() -> None:
    assert record_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()


# -- seal -----------------------------------------------------------------------------------


def test_seal_of_the_test_vector_gives_its_known_hash_and_line() -> None:
    record, line = seal(VECTOR_BODY, seq=1, prev=GENESIS, mac_key=None)
    assert record["hash"] == VECTOR_HASH
    assert line == VECTOR_LINE
    assert "mac" not in record


def test_seal_of_the_test_vector_with_a_key_gives_its_known_mac() -> None:
    record, _ = seal(VECTOR_BODY, seq=1, prev=GENESIS, mac_key=b"k" * 32)
    assert record["hash"] == VECTOR_HASH  # the MAC does not change the hash
    assert record["mac"] == VECTOR_MAC


def test_genesis_is_64_zeros() -> None:
    assert GENESIS == "0" * 64


def test_seal_sets_seq_and_prev_and_hashes_the_body_of_the_record() -> None:
    record, _ = seal({"event": "cancel.attempt"}, seq=7, prev="ab" * 32, mac_key=None)
    assert (record["seq"], record["prev"]) == (7, "ab" * 32)
    assert record["hash"] == hashlib.sha256(spec_encoding(body_of(record))).hexdigest()


def test_seal_does_not_modify_the_body_it_is_given() -> None:
    body = {"event": "cancel.attempt"}
    seal(body, seq=1, prev=GENESIS, mac_key=MAC_KEY)
    assert body == {"event": "cancel.attempt"}


def test_seal_chains_each_record_to_the_previous_hash() -> None:
    prev, records = GENESIS, []
    for seq in range(1, 5):
        record, _ = seal({"event": "cancel.result", "n": seq}, seq=seq, prev=prev, mac_key=None)
        records.append(record)
        prev = record["hash"]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[0]["prev"] == GENESIS
    for earlier, later in itertools.pairwise(records):
        assert later["prev"] == earlier["hash"]
    assert len({r["hash"] for r in records}) == 4


def test_the_hash_covers_seq_and_prev() -> None:
    body = {"event": "cancel.result"}
    base = seal(body, seq=1, prev=GENESIS, mac_key=None)[0]["hash"]
    assert seal(body, seq=2, prev=GENESIS, mac_key=None)[0]["hash"] != base
    assert seal(body, seq=1, prev="f" * 64, mac_key=None)[0]["hash"] != base


def test_seal_adds_a_mac_only_with_a_key_and_it_verifies() -> None:
    without, _ = seal({"event": "e"}, seq=1, prev=GENESIS, mac_key=None)
    assert "mac" not in without
    record, _ = seal({"event": "e"}, seq=1, prev=GENESIS, mac_key=MAC_KEY)
    encoded = canonical(body_of(record))
    assert record["mac"] == hmac.new(MAC_KEY, encoded, hashlib.sha256).hexdigest()
    assert mac_matches(MAC_KEY, encoded, record["mac"])


def test_mac_matches_refuses_another_key_other_bytes_and_non_strings() -> None:
    record, _ = seal({"event": "e"}, seq=1, prev=GENESIS, mac_key=MAC_KEY)
    encoded = canonical(body_of(record))
    assert not mac_matches(b"another-key-0123456789abcdef0123", encoded, record["mac"])
    assert not mac_matches(MAC_KEY, encoded + b" ", record["mac"])
    assert not mac_matches(MAC_KEY, encoded, record["mac"].upper())
    assert not mac_matches(MAC_KEY, encoded, None)
    assert not mac_matches(MAC_KEY, encoded, 123)
    assert not mac_matches(MAC_KEY, encoded, record["mac"].encode())


def test_the_line_is_the_canonical_whole_record_and_ends_with_one_newline() -> None:
    record, line = seal(VECTOR_BODY, seq=3, prev="e" * 64, mac_key=MAC_KEY)
    assert line.endswith(b"\n") and not line.endswith(b"\n\n")
    assert line.count(b"\n") == 1
    assert line[:-1] == canonical(record)
    assert json.loads(line) == record


def test_the_line_writes_non_ascii_as_itself() -> None:
    _, line = seal({"invocation_id": "\u00e9\u2603\U0001f600"}, seq=1, prev=GENESIS,
                   mac_key=None)
    assert "\u00e9\u2603\U0001f600".encode() in line
    assert b"\\u" not in line


def test_a_newline_in_a_field_stays_inside_the_one_line() -> None:
    _, line = seal({"request_id": 'x\n{"event":"forged"}'}, seq=1, prev=GENESIS, mac_key=None)
    assert line.count(b"\n") == 1


def test_seal_refuses_nan_rather_than_writing_an_unverifiable_line() -> None:
    with pytest.raises(ValueError):
        seal({"duration_ms": math.nan}, seq=1, prev=GENESIS, mac_key=None)


def test_seal_fields_are_hash_and_mac() -> None:
    assert audit_chain.SEAL_FIELDS == ("hash", "mac")
