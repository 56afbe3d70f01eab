"""What the one-pass chain check rests on: orjson re-encodes a canonical line byte for byte as
`chain.canonical` does, except for the numbers `tiny_float` finds; and its HMAC is RFC 2104's."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.audit import chain as audit_chain
from gateway.audit import compiled, fast_chain, note, tree_check, verify
from tests.audit.conftest import BUILT
from tests.audit.signed_logs import MAC_KEY, ChainBuilder


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
@example(b"k" * 65, b"m")
@example(b"k" * 64, b"m")
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


# -- the walk itself: what it answers, and where it must give up -----------------------------

SIGNER = note.generate_key("audit.example/walk")
OTHER_KEY = b"another-auditors-key-0123456789abcdef01"


def walk(builder: ChainBuilder, tmp_path: Path, lines: list[bytes] | None = None,
         **kwargs: Any) -> fast_chain.Passed | None:
    """The walk's answer, the same with the compiled loop and without (checked here), and
    the same records handed to `each`."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(builder.lines if lines is None else lines))
    kwargs.setdefault("keys", [MAC_KEY])
    kwargs.setdefault("verifiers", [SIGNER.verifier])
    kwargs.setdefault("anchors", [])
    kwargs.setdefault("wanted", {})
    each = kwargs.pop("each", None)
    answers, handed = [], []
    for speedups in ([BUILT, None] if BUILT is not None else [None]):
        seen: list[dict[str, Any]] = []
        with patched(speedups):
            answers.append(fast_chain.check(fast_chain.ChainFiles(builder.chain, (str(path),)),
                                            each=seen.append if each else None, **kwargs))
        handed.append(seen)
    assert all(answer == answers[0] for answer in answers), answers
    assert all(seen == handed[0] for seen in handed)
    for record in handed[0]:
        each(record)
    return answers[0]


@contextlib.contextmanager
def patched(speedups: Any) -> Iterator[None]:
    saved = compiled.speedups
    compiled.speedups = speedups
    try:
        yield
    finally:
        compiled.speedups = saved


def chain_of(n: int = 12, every: int = 5, **kwargs: Any) -> ChainBuilder:
    kwargs.setdefault("signer", SIGNER)
    builder = ChainBuilder(**kwargs)
    builder.cancels(n, checkpoint_every=every)
    return builder


def resealed_last(builder: ChainBuilder, edit: Any, *, mac_key: bytes | None = MAC_KEY,
                  encode: Any = audit_chain.canonical, hash_over: Any = None) -> list[bytes]:
    """The chain with its last record edited and sealed again by someone with the HMAC key."""
    body = {k: v for k, v in builder.records[-1].items() if k not in ("hash", "mac")}
    edit(body)
    covered = encode(body) if hash_over is None else hash_over(body)
    sealed = {**body, "hash": hashlib.sha256(covered).hexdigest()}
    if mac_key is not None:
        sealed["mac"] = hmac.new(mac_key, covered, hashlib.sha256).hexdigest()
    return [*builder.lines[:-1], encode(sealed) + b"\n"]


def test_a_good_chain_is_answered_with_its_head_signature_instance_and_origin(
        tmp_path: Path) -> None:
    builder = chain_of(instance="pod-7", origin="audit.example/custom")
    passed = walk(builder, tmp_path)
    assert passed is not None
    records = len(builder.records)
    signed = [r["tree_size"] for r in builder.records if "note" in r][-1]
    assert passed.ok == verify.VerifyOk(records, records, builder.records[-1]["hash"], (), 1,
                                        None, False, False, False,
                                        (signed, "audit.example/walk"))
    assert (passed.instance, passed.origin) == ("pod-7", "audit.example/custom")


def test_without_keys_it_says_macs_and_notes_went_unchecked(tmp_path: Path) -> None:
    passed = walk(chain_of(), tmp_path, keys=[], verifiers=[])
    assert passed is not None and passed.ok.macs_unchecked and passed.ok.notes_unchecked
    unmaced = chain_of(mac_key=None)
    passed = walk(unmaced, tmp_path, keys=[])
    assert passed is not None and not passed.ok.macs_unchecked


def test_records_without_macs_need_no_key_but_a_key_needs_every_mac(tmp_path: Path) -> None:
    builder = chain_of(mac_key=None)
    assert walk(builder, tmp_path, keys=[]) is not None
    assert walk(builder, tmp_path) is None
    assert walk(chain_of(), tmp_path, lines=resealed_last(chain_of(), lambda b: None,
                                                          mac_key=None)) is None


def test_a_mac_by_the_second_key_given_passes_and_a_mac_by_none_does_not(
        tmp_path: Path) -> None:
    builder = chain_of()
    assert walk(builder, tmp_path, keys=[OTHER_KEY, MAC_KEY]) is not None
    assert walk(builder, tmp_path, keys=[OTHER_KEY]) is None
    forged = resealed_last(builder, lambda b: None, mac_key=OTHER_KEY)
    assert walk(builder, tmp_path, lines=forged, keys=[MAC_KEY, b"x" * 100]) is None


def test_a_long_hmac_key_is_hashed_first_as_rfc_2104_says(tmp_path: Path) -> None:
    inner, outer = fast_chain.mac_pads(b"k" * 64)
    assert inner.digest() != fast_chain.mac_pads(hashlib.sha256(b"k" * 64).digest())[0].digest()
    for key in (b"k" * 64, b"k" * 65, b"k" * 200):
        inner, outer = fast_chain.mac_pads(key)
        digest = inner.copy()
        digest.update(b"body")
        final = outer.copy()
        final.update(digest.digest())
        assert final.hexdigest() == hmac.new(key, b"body", hashlib.sha256).hexdigest()


def test_a_mac_without_a_key_must_still_be_64_lowercase_hex_digits(tmp_path: Path) -> None:
    builder = chain_of()
    for mac in ("A" * 64, "a" * 63, None, 7):
        lines = resealed_last(builder, lambda b: None, mac_key=None,
                              encode=lambda b, mac=mac: audit_chain.canonical(
                                  {**b, "mac": mac} if "hash" in b else b))
        assert walk(builder, tmp_path, lines=lines, keys=[]) is None, mac


def test_a_mac_member_left_in_what_the_hash_covers_is_not_passed(tmp_path: Path) -> None:
    # "mac":null must be cut like any mac: the hash never covers it.
    builder = chain_of(mac_key=None)
    lines = resealed_last(builder, lambda b: b.update(mac=None), mac_key=None)
    assert b'"mac":null' in lines[-1]
    assert walk(builder, tmp_path, lines=lines, keys=[]) is None


def test_fields_of_the_wrong_type_are_not_passed(tmp_path: Path) -> None:
    builder = chain_of()
    for field, value in (("ts", 5), ("event", 5), ("seq", float(len(builder.records))),
                         ("chain", "F" * 32)):
        lines = resealed_last(builder, lambda b, f=field, v=value: b.update({f: v}))
        assert walk(builder, tmp_path, lines=lines) is None, field


def test_keys_out_of_order_are_not_canonical_even_when_the_seal_covers_them(
        tmp_path: Path) -> None:
    def ts_first(body: dict[str, Any]) -> bytes:
        return json.dumps({"ts": body["ts"], **body}, separators=(",", ":"),
                          ensure_ascii=False).encode()

    builder = chain_of()
    lines = resealed_last(builder, lambda b: None, encode=ts_first,
                          hash_over=lambda b: ts_first(b))
    assert lines[-1].startswith(b'{"ts":')
    assert walk(builder, tmp_path, lines=lines) is None


def test_a_line_that_is_not_an_object_is_not_passed_and_raises_nothing(tmp_path: Path) -> None:
    builder = chain_of()
    for line in (b"[1,2]\n", b'"x"\n', b"\n", b" {}\n", b"{}\n"):
        assert walk(builder, tmp_path, lines=[*builder.lines, line]) is None, line


def test_a_checkpoint_that_names_another_head_is_not_passed(tmp_path: Path) -> None:
    builder = chain_of(10, 5)  # ends with a checkpoint
    assert builder.records[-1]["event"] == "audit.checkpoint"
    for edit in (lambda b: b.update(head_seq=b["head_seq"] - 1),
                 lambda b: b.update(head_hash="0" * 64)):
        assert walk(builder, tmp_path, lines=resealed_last(builder, edit)) is None


def test_an_audit_chain_record_of_the_wrong_shape_is_not_passed(tmp_path: Path) -> None:
    builder = ChainBuilder(signer=SIGNER)
    body = {k: v for k, v in builder.records[0].items() if k not in ("hash", "mac")}
    for origin in (5, ""):
        sealed = ChainBuilder(signer=None, chain=builder.chain)
        sealed.records, sealed.lines = [], []
        sealed.add({**{k: v for k, v in body.items() if k not in ("seq", "prev", "chain")},
                    "origin": origin})
        assert walk(sealed, tmp_path) is None, origin


def test_notes_signed_for_another_origin_than_the_chain_says_are_not_passed(
        tmp_path: Path) -> None:
    builder = ChainBuilder(signer=SIGNER, origin="audit.example/b")
    builder.tree.origin = "audit.example/a"  # the notes name another origin than audit.chain
    builder.cancels(12, checkpoint_every=5)
    assert walk(builder, tmp_path, verifiers=[]) is not None  # (notes unchecked: no key)
    assert walk(builder, tmp_path) is None


def test_signed_checkpoints_given_are_held_only_by_the_chain_of_their_origin(
        tmp_path: Path) -> None:
    builder = chain_of(20, 5)
    mine = anchor(builder.notes()[-1], "mine")
    other = chain_of(30, 5)
    beyond = anchor(other.notes()[-1], "other chain's")
    assert walk(builder, tmp_path, anchors=[mine, beyond]) is not None
    longer = chain_of(20, 5)
    short = ChainBuilder(signer=SIGNER, chain=longer.chain)
    short.records, short.lines = longer.records[:8], longer.lines[:8]
    assert walk(short, tmp_path, anchors=[anchor(longer.notes()[-1], "cut")]) is None


def test_seq_hash_checkpoints_hold_at_the_head_and_fail_past_it(tmp_path: Path) -> None:
    builder = chain_of()
    head = len(builder.records)
    assert walk(builder, tmp_path, wanted={head: builder.records[-1]["hash"]}) is not None
    assert walk(builder, tmp_path, wanted={head: "0" * 64}) is None
    assert walk(builder, tmp_path, wanted={head + 1: "0" * 64}) is None


def test_a_one_record_chain_is_answered(tmp_path: Path) -> None:
    builder = ChainBuilder(signer=SIGNER)
    builder.records, builder.lines = builder.records[:1], builder.lines[:1]
    passed = walk(builder, tmp_path)
    assert passed is not None and passed.ok.records == 1


def test_each_record_whose_line_holds_the_needles_is_handed_over_and_no_other(
        tmp_path: Path) -> None:
    builder = chain_of(12, 5)
    seen: list[int] = []
    passed = walk(builder, tmp_path, each=lambda record: seen.append(record["seq"]),
                  needles=(b'"team":"search"',))
    assert passed is not None
    assert seen == [r["seq"] for r in builder.records if r.get("team") == "search"] and seen


def test_a_previous_chain_named_in_the_first_record_is_checked_in_one_pass(
        tmp_path: Path) -> None:
    previous = {"chain": "a" * 32, "seq": 77, "hash": "b" * 64}
    builder = chain_of(previous=previous)
    passed = walk(builder, tmp_path)
    assert passed is not None and passed.ok.records == len(builder.records)


def test_first_record_reads_the_chain_and_seq_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "f"
    builder = chain_of()
    path.write_bytes(builder.lines[3])
    assert fast_chain.first_record(str(path)) == (builder.chain, 4)
    for line in (b'{"event":"cancel.result","seq":1}\n', b"2026-11-28T00:00:00Z stdout F {}\n",
                 b""):
        path.write_bytes(line)
        assert fast_chain.first_record(str(path)) is None


def anchor(text: str, name: str) -> tree_check.Anchor:
    return verify.anchor_from_note(name, text.encode(), [SIGNER.verifier])


def test_tiny_float_reads_the_character_before_a_token_and_nothing_outside_the_text() -> None:
    assert fast_chain.tiny_float(b":0.00001")
    assert fast_chain.tiny_float(b":-0.00001")
    assert fast_chain.tiny_float(b":1e-5,")
    assert not fast_chain.tiny_float(b"0.00001,")
    assert not fast_chain.tiny_float(b"1e-5,")
    assert not fast_chain.tiny_float(b'{"a":"x0.00001"}')
    assert not fast_chain.tiny_float(b'{"a":[3,-5,1]}')
    assert fast_chain.tiny_float(b'{"a":[3,-5],"b":1e-7}')
    assert not fast_chain.tiny_float(b'[":xe-5,"]')
    assert not fast_chain.tiny_float(b'[":e-5,"]')


def test_a_chain_without_an_instance_or_an_origin_gets_none_and_the_default(
        tmp_path: Path) -> None:
    builder = chain_of(instance="")
    passed = walk(builder, tmp_path)
    assert passed is not None and passed.instance is None
    bare = ChainBuilder(signer=None)
    bare.records, bare.lines = [], []
    for n in range(3):
        bare.add({"ts": "2025-03-01T12:00:00.000Z", "event": "cancel.result", "n": n})
    passed = walk(bare, tmp_path)
    assert passed is not None
    assert passed.origin == f"chroma-sync-gateway/{bare.chain}" and passed.instance is None


def test_a_nested_chain_key_that_the_fleet_would_read_first_is_not_passed(
        tmp_path: Path) -> None:
    builder = chain_of()
    lines = resealed_last(builder, lambda b: b.update(batch={"chain": "f" * 32}))
    assert walk(builder, tmp_path, lines=lines) is None


def test_only_identity_records_name_the_instance(tmp_path: Path) -> None:
    builder = chain_of(instance="pod-a")
    lines = resealed_last(builder, lambda b: b.update(instance="mallory", details={"x": 1}))
    passed = walk(builder, tmp_path, lines=lines)
    assert passed is not None and passed.instance == "pod-a"


@pytest.mark.parametrize("chunk_bytes", [100, 1000, 4096])
def test_a_chain_read_in_chunks_of_any_size_is_answered_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int) -> None:
    builder = chain_of(30, 7, previous={"chain": "a" * 32, "seq": 5, "hash": "b" * 64})
    whole = walk(builder, tmp_path)
    assert whole is not None
    monkeypatch.setattr(fast_chain, "CHUNK_BYTES", chunk_bytes)  # lines span chunks, or outgrow one
    assert walk(builder, tmp_path) == whole
    assert walk(builder, tmp_path, lines=[*builder.lines, b'{"cut":']) is None


def test_the_read_buffer_grows_only_for_a_line_longer_than_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_chain, "CHUNK_BYTES", 64)
    path = tmp_path / "lines"
    text = b"".join(b"%02d" % n + b"x" * 40 + b"\n" for n in range(10)) + b"y" * 150 + b"\n"
    path.write_bytes(text)
    seen, sizes = [], []
    for buffer, end in fast_chain.chunks([str(path)]):
        seen.append(bytes(buffer[:end]))
        sizes.append(len(buffer))
    assert b"".join(seen) == text
    assert sizes[:7] == [64] * 7 and max(sizes) == 256  # doubled twice for the long line
    path.write_bytes(text[:-1])
    with pytest.raises(fast_chain.GiveUp):
        list(fast_chain.chunks([str(path)]))


def test_lines_say_whether_every_line_of_a_chunk_is_a_flat_object(tmp_path: Path) -> None:
    flat, nested = tmp_path / "flat", tmp_path / "nested"
    flat.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')
    nested.write_bytes(b'{"a":{"b":1}}\n{"c":2}\n')
    with pytest.raises(fast_chain.GiveUp):  # (the cut last line)
        for is_flat, parts in fast_chain.lines([str(flat)]):
            assert is_flat and parts == [b'{"a":1}', b'{"b":2}']
    assert [flag for flag, _ in fast_chain.lines([str(nested)])] == [False]
