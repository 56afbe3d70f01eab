"""What the one-pass chain check rests on: orjson re-encodes a canonical line byte for byte as
`chain.canonical` does, except for the numbers `tiny_float` finds; and its HMAC is RFC 2104's."""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit import chain as audit_chain
from gateway.audit import fast_chain


def orjson_canonical(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_every_code_point_in_a_string_is_written_as_the_canonical_encoder_writes_it() -> None:
    for start in range(0, 0x110000, 4096):
        text = "".join(chr(c) for c in range(start, min(start + 4096, 0x110000))
                       if not 0xD800 <= c <= 0xDFFF)
        for piece in (text[i:i + 64] for i in range(0, len(text), 64)):
            record = {"v": piece, piece: 1}
            assert orjson_canonical(record) == audit_chain.canonical(record), ascii(piece[:4])


@given(st.dictionaries(st.text(), st.one_of(st.none(), st.booleans(), st.text(),
                                            st.integers(-(2**63), 2**64 - 1)), max_size=8))
def test_keys_sort_and_integers_strings_and_literals_are_written_alike(
        record: dict[str, object]) -> None:
    try:
        expected = audit_chain.canonical(record)
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, no canonical line
        return
    assert orjson_canonical(record) == expected


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_float_either_is_written_alike_or_is_found_by_tiny_float(value: float) -> None:
    written = orjson_canonical({"a": [value], "b": value})
    if written != audit_chain.canonical({"a": [value], "b": value}):
        assert fast_chain.tiny_float(written), written


def test_floats_near_the_thresholds_either_agree_or_are_found() -> None:
    edges = [1e-4, 9.999999999999999e-05, 1e-5, 9.99e-6, 1e-6, 1e-7, 1e-9, 1e-10, 5e-324,
             1e16, 9999999999999998.0, 1e21, 1.5, 0.0, -0.0, 123.456]
    for bits in range(0, 2**64, 2**64 // 20000 + 7):
        value = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
        if math.isfinite(value):
            edges.append(value)
    for value in edges + [-v for v in edges]:
        written = orjson_canonical({"v": value})
        if written != audit_chain.canonical({"v": value}):
            assert fast_chain.tiny_float(written), written


def test_tiny_float_looks_at_number_tokens_not_at_strings() -> None:
    assert fast_chain.tiny_float(b'{"a":0.00001}')
    assert fast_chain.tiny_float(b'{"a":[1,-0.00009]}')
    assert fast_chain.tiny_float(b'{"a":1e-7,"b":1}')
    assert fast_chain.tiny_float(b'{"a":[2.5e-9]}')
    assert not fast_chain.tiny_float(b'{"a":"0000003e-4000-8000"}')
    assert not fast_chain.tiny_float(b'{"a":"x3e-4,"}')
    assert not fast_chain.tiny_float(b'{"a":1e-10,"b":0.0001,"c":1e+16}')


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_the_mac_from_hashed_pads_is_hmac_sha256(key: bytes, message: bytes) -> None:
    inner, outer = fast_chain.mac_pads(key)
    digest = inner.copy()
    digest.update(message)
    final = outer.copy()
    final.update(digest.digest())
    assert final.hexdigest() == hmac.new(key, message, hashlib.sha256).hexdigest()
    checker = fast_chain.mac_checker([b"other", key])
    assert checker(message, final.hexdigest())
    assert not checker(message + b"x", final.hexdigest())
