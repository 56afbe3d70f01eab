"""The compiled loops (`gateway.audit.speedups`) against what they stand in for.

`plain_lines` may only take a line that the general verifier would pass: every test here that
crafts a line seals it over exactly the bytes the fast paths hash (the line without its `hash`
and `mac` members), as someone holding the HMAC key could, so the only question left is the
one the loop must answer: is this line canonical, and is its record a plain one that follows?
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.audit import chain as audit_chain
from gateway.audit import merkle, note, verify
from tests.audit.conftest import BUILT
from tests.audit.signed_logs import MAC_KEY, ChainBuilder

pytestmark = pytest.mark.skipif(BUILT is None, reason="gateway.audit.speedups is not built")
speedups: Any = BUILT

SIGNER = note.generate_key("audit.example/speedups")
HASH_HOLDER, MAC_HOLDER = b"H" * 64, b"M" * 64


def chain(n: int = 8) -> ChainBuilder:
    builder = ChainBuilder(signer=SIGNER)
    builder.cancels(n)
    assert builder.records[-1]["event"] == "cancel.result"
    return builder


def sealed(builder: ChainBuilder, edit: Callable[[bytes], bytes],
           body: dict[str, Any] | None = None, *, key: bytes = MAC_KEY) -> bytes:
    """The chain's last record (or `body` in its place) as a line edited by `edit`, then
    sealed over the edited bytes without their `hash` and `mac` members."""
    if body is None:
        body = {k: v for k, v in builder.records[-1].items() if k not in ("hash", "mac")}
    line = edit(audit_chain.canonical({**body, "hash": HASH_HOLDER.decode(),
                                       "mac": MAC_HOLDER.decode()}))
    covered = (line.replace(b',"hash":"' + HASH_HOLDER + b'"', b"")
               .replace(b',"mac":"' + MAC_HOLDER + b'"', b""))
    return (line.replace(HASH_HOLDER, hashlib.sha256(covered).hexdigest().encode())
            .replace(MAC_HOLDER, hmac.new(key, covered, hashlib.sha256).hexdigest().encode()))


def takes(builder: ChainBuilder, line: bytes, *, key: bytes | None = MAC_KEY,
          stop_seq: int = 0, needles: tuple[bytes, ...] = ()) -> bool:
    """Whether plain_lines takes `line` as the record after the chain's last but one."""
    seq, head = len(builder.records) - 1, builder.records[-2]["hash"]
    chunk = line + b"\n"
    leaves: list[bytes] = []
    pos, after, new_head, _ = speedups.plain_lines(
        chunk, 0, len(chunk), builder.chain.encode(), seq, head.encode(), stop_seq, key,
        needles, leaves, None)
    if pos == 0:
        assert (after, new_head, leaves) == (seq, head.encode(), [])
        return False
    assert pos == len(chunk) and after == seq + 1 and leaves == [merkle.leaf_hash(line)]
    return True


def general(builder: ChainBuilder, line: bytes, tmp_path: Path) -> bool:
    """Whether the general verifier passes the chain ending in `line`."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(builder.lines[:-1]) + line + b"\n")
    return isinstance(verify.verify([str(path)], hmac_keys=[MAC_KEY],
                                    verifiers=[SIGNER.verifier]), verify.VerifyOk)


def with_member(name: str, value: str) -> Callable[[bytes], bytes]:
    """An edit adding the member `"name":value` (value: JSON text) after `"error"` (so `name`
    must sort between "error" and "event")."""
    return lambda line: line.replace(b'"error":null,', b'"error":null,"' + name.encode()
                                     + b'":' + value.encode() + b",", 1)


def test_a_plain_record_is_taken_with_its_leaf(tmp_path: Path) -> None:
    builder = chain()
    assert takes(builder, builder.lines[-1].rstrip(b"\n"))
    assert general(builder, builder.lines[-1].rstrip(b"\n"), tmp_path)


@pytest.mark.parametrize("value", [
    '"a\\nb\\r\\t\\b\\f"', '"\\u0000\\u001f\\u007f"'.replace("\\u007f", "\x7f"), '"q\\"\\\\"',
    "1e+16", "0.1", "-0.0", "5e-324", "1e-05", "123.456", "-999999999999999999",
    "999999999999999999", "0", '[1,[2,[]],"x",null,true,false,-1.5]', "[]", "true", "null",
    '"~ !#$%&()*+,-./:;<=>?@[]^_`{|}"',
])
def test_canonical_values_of_every_kind_are_taken(value: str, tmp_path: Path) -> None:
    builder = chain()
    line = sealed(builder, with_member("errors", value))
    assert general(builder, line, tmp_path), line
    assert takes(builder, line), line


@pytest.mark.parametrize("value", [
    '"caf\u00e9"',  # non-ASCII: left to Python, which checks its UTF-8
    '{"a":1}', "[{}]",  # nested objects
    "1000000000000000000",  # 19 digits
    "[" * 17 + "]" * 17,  # arrays deeper than it goes
])
def test_canonical_lines_it_is_not_sure_of_are_left_to_python(
        value: str, tmp_path: Path) -> None:
    builder = chain()
    line = sealed(builder, with_member("errors", value))
    assert general(builder, line, tmp_path), line
    assert not takes(builder, line), line


@pytest.mark.parametrize("value", [
    "1.50", "1E+16", "1e16", "1.0e1", "-0", "01", "1.", ".5", "+1", "1e400", "NaN", "Infinity",
    '"\\/"', '"\\u0041"', '"\\u00e9"', '"\\u001F"', '"\\u000a"', '"\\x"', '"\x01"', '"\x1f"',
    "tru", "nul", "trux", "nulx", "falsx", "True", "[1,]", "[,1]", "[1 ]", '"unterminated',
])
def test_non_canonical_values_sealed_as_they_are_are_refused_by_both(
        value: str, tmp_path: Path) -> None:
    builder = chain()
    line = sealed(builder, with_member("errors", value))
    assert not takes(builder, line), line
    assert not general(builder, line, tmp_path), line


@pytest.mark.parametrize("edit", [
    lambda line: line.replace(b'"error":null', b'"error": null'),  # whitespace
    lambda line: line.replace(b"{", b"{ ", 1),
    lambda line: line + b" ",
    lambda line: line.replace(b'"client"', b'"zclient"'),  # keys out of order
    lambda line: line.replace(b'"error":null,', b'"error":null,"error":null,'),  # a repeat
    lambda line: line.replace(b'"client"', b'"\\u0063lient"'),  # an escaped key
    lambda line: line.replace(b'"team"', b'"te\\am"'),
    lambda line: line.replace(b'"team":', b'"team"::'),
    lambda line: line[:-1],  # no closing brace
    lambda line: line + b"}",
    lambda line: line.replace(b',"client"', b',,"client"'),
    lambda line: line.replace(b'"duration_ms":', b'"duration_ms":--'),
], ids=["space", "space-after-brace", "trailing-space", "order", "repeat", "escaped-key",
        "bad-escape-in-key", "double-colon", "no-brace", "extra-brace", "double-comma",
        "double-minus"])
def test_non_canonical_lines_sealed_as_they_are_are_refused_by_both(
        edit: Callable[[bytes], bytes], tmp_path: Path) -> None:
    builder = chain()
    line = sealed(builder, edit)
    assert not takes(builder, line), line
    assert not general(builder, line, tmp_path), line


def test_records_that_are_not_plain_or_do_not_follow_are_left_to_python() -> None:
    builder = chain()
    body = {k: v for k, v in builder.records[-1].items() if k not in ("hash", "mac")}
    same = sealed(builder, lambda line: line)
    assert takes(builder, same)
    for change in ({"event": "audit.chain"}, {"event": "audit.opened"},
                   {"event": "audit.checkpoint"}, {"seq": body["seq"] + 1},
                   {"seq": str(body["seq"])}, {"seq": True}, {"seq": float(body["seq"])},
                   {"prev": "0" * 64}, {"prev": None}, {"chain": "f" * 32}, {"chain": None},
                   {"ts": 5}, {"event": 5}):
        line = sealed(builder, lambda line: line, {**body, **change})
        assert not takes(builder, line), change
    for missing in ("seq", "prev", "chain", "ts", "event"):
        line = sealed(builder, lambda line: line,
                      {k: v for k, v in body.items() if k != missing})
        assert not takes(builder, line), missing
    assert not takes(builder, same, stop_seq=body["seq"])
    assert takes(builder, same, stop_seq=body["seq"] + 1)


def test_a_seal_that_does_not_hold_is_left_to_python() -> None:
    builder = chain()
    good = builder.lines[-1].rstrip(b"\n")
    record = builder.records[-1]
    assert not takes(builder, good.replace(record["hash"].encode(), b"0" * 64))
    assert not takes(builder, good.replace(record["mac"].encode(), b"0" * 64))
    assert not takes(builder, good.replace(record["mac"].encode(), record["mac"].upper().encode()))
    assert not takes(builder, good, key=b"another key")  # maybe another key's: Python tries all
    assert not takes(builder, sealed(builder, lambda line: line, key=b"another key"))
    # With no key a mac must still be 64 lowercase hex digits, and its hash must hold.
    assert takes(builder, good, key=None)
    assert not takes(builder, good.replace(record["mac"].encode(), b"A" * 64), key=None)
    assert not takes(builder, good.replace(record["mac"].encode(), b"a" * 63), key=None)
    # A key given and no mac at all.
    unmaced = ChainBuilder(signer=None, mac_key=None)
    unmaced.cancels(4)
    last = unmaced.lines[-1].rstrip(b"\n")
    assert not takes(unmaced, last)
    assert takes(unmaced, last, key=None)


def test_a_hash_or_mac_first_or_in_another_place_is_left_to_python() -> None:
    builder = chain()
    body = {"chain": builder.chain, "event": "cancel.result", "prev": builder.records[-2]["hash"],
            "seq": len(builder.records), "ts": "2025-03-01T12:00:00.000Z"}
    first = {"a": 1, **body}  # keys before "hash" exist: sealed normally
    assert takes(builder, sealed(builder, lambda line: line, first))
    only = {k: v for k, v in body.items() if k != "chain"}
    only["event"] = "x"
    line = sealed(builder, lambda line: line, only)  # "event" before "hash": fine
    assert not takes(builder, line)  # (chain missing)
    line = audit_chain.canonical({**body, "hash": "0" * 64})
    assert not takes(builder, line, key=None)  # a hash that does not hold


def test_lines_holding_every_needle_are_handed_back_after_they_verify() -> None:
    builder = chain(12)
    start = 2  # the first plain record's seq, after audit.chain
    chunk = b"".join(builder.lines[start:])
    matched: list[bytes] = []
    pos, seq, head, has_mac = speedups.plain_lines(
        chunk, 0, len(chunk), builder.chain.encode(), start, builder.records[start - 1]["hash"]
        .encode(), 0, MAC_KEY, (b'"team":"search"', b'"event":"cancel.result"'), [], matched)
    assert (pos, seq, head, has_mac) == (len(chunk), len(builder.records),
                                         builder.records[-1]["hash"].encode(), True)
    assert matched == [line.rstrip(b"\n") for line, record in
                       zip(builder.lines[start:], builder.records[start:], strict=True)
                       if record["team"] == "search"]
    every: list[bytes] = []
    speedups.plain_lines(chunk, 0, len(chunk), builder.chain.encode(), start,
                         builder.records[start - 1]["hash"].encode(), 0, MAC_KEY, (), [], every)
    assert every == [line.rstrip(b"\n") for line in builder.lines[start:]]


def test_it_stops_at_the_end_given_and_at_a_line_without_a_newline() -> None:
    builder = chain(6)
    start = 2
    chunk = b"".join(builder.lines[start:])
    head = builder.records[start - 1]["hash"].encode()
    first = len(builder.lines[start])
    pos, seq, *_ = speedups.plain_lines(chunk, 0, first, builder.chain.encode(), start, head,
                                        0, MAC_KEY, (), [], None)
    assert (pos, seq) == (first, start + 1)
    cut = chunk[:-1]
    pos, seq, *_ = speedups.plain_lines(cut, 0, len(cut), builder.chain.encode(), start, head,
                                        0, MAC_KEY, (), [], None)
    assert (pos, seq) == (len(cut) - len(builder.lines[-1]) + 1, len(builder.records) - 1)
    # The chain's first record is never taken: it is checked in Python.
    assert speedups.plain_lines(chunk, 0, len(chunk), builder.chain.encode(), 0, head, 0,
                                MAC_KEY, (), [], None)[0] == 0


def test_bad_arguments_are_errors_not_crashes() -> None:
    builder = chain(3)
    chunk = builder.lines[-1]
    args: list[Any] = [chunk, 0, len(chunk), builder.chain.encode(), 3, b"0" * 64, 0, MAC_KEY,
                       (), [], None]
    for index, bad in ((5, b"0" * 63), (1, -1), (2, len(chunk) + 1), (1, len(chunk) + 1),
                       (10, "not a list"), (8, (b"ok", "not bytes")), (9, None)):
        wrong = list(args)
        wrong[index] = bad
        with pytest.raises((ValueError, TypeError)):
            speedups.plain_lines(*wrong)


# Mutations of a good line: whatever bytes land where, a line the loop takes is one the general
# verifier passes.
PIECES = [b" ", b"\\", b"\\u0041", b"\\u00e9", b"\\/", b'"', b"\xc3\xa9", b"\x7f", b"\x00", b"1",
          b"0", b"-", b".", b"e", b"E", b"+", b"{", b"}", b"[", b"]", b",", b":", b"null", b"true",
          b"\\n", b'"a":1,', b"00", b"1e5", b"\t", b"\xff"]


@settings(max_examples=400)
@given(st.data())
def test_any_edit_of_a_line_it_takes_is_one_the_general_verifier_passes(
        tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    builder = chain(4)
    piece = data.draw(st.sampled_from(PIECES) | st.binary(min_size=1, max_size=4))
    mode = data.draw(st.sampled_from(["insert", "replace", "delete"]))

    def edit(line: bytes) -> bytes:
        # Anywhere but inside the placeholders, which `sealed` fills in.
        allowed = [i for i in range(1, len(line)) if not any(
            start <= i <= start + 64 for start in
            (line.find(HASH_HOLDER), line.find(MAC_HOLDER)))]
        at = data.draw(st.sampled_from(allowed))
        if mode == "insert":
            return line[:at] + piece + line[at:]
        if mode == "replace":
            return line[:at] + piece + line[at + len(piece):]
        return line[:at] + line[at + len(piece):]

    line = sealed(builder, edit)
    if b"\n" in line:
        return  # two lines: not one edit of one record
    if takes(builder, line):
        assert general(builder, line, tmp_path_factory.mktemp("edit")), line


# -- extend_peaks is merkle.Tree.extend_hashes ----------------------------------------------------

@given(st.integers(0, 300), st.integers(0, 300))
def test_peaks_extended_are_the_pythons_peaks(before: int, added: int) -> None:
    rng = random.Random(before * 1000 + added)
    leaves = [rng.randbytes(32) for _ in range(before + added)]
    expected = merkle.Tree()
    for leaf in leaves:
        expected.append_hash(leaf)
    python = merkle.Tree()
    for leaf in leaves[:before]:
        python.append_hash(leaf)
    peaks = [bytes.fromhex(p) for p in python.state()["peaks"]]  # type: ignore[attr-defined]
    size = speedups.extend_peaks(peaks, before, leaves[before:])
    assert size == before + added
    assert [p.hex() for p in peaks] == expected.state()["peaks"]


def test_peaks_that_do_not_fit_the_size_are_refused() -> None:
    leaf = b"x" * 32
    for peaks, size, leaves in (([], 1, []), ([leaf], 3, []), ([b"short"], 1, []),
                                ([leaf], 1, [b"short"]), ([leaf], 1, ["text"]),
                                ([], -1, []), ([], 2**63 - 1, [leaf])):
        with pytest.raises(ValueError):
            speedups.extend_peaks(list(peaks), size, list(leaves))


# -- csv_rows is the csv module's writerows ------------------------------------------------------

FIELDS = (st.none() | st.integers(-(2**70), 2**70) | st.booleans()
          | st.floats(allow_nan=False) | st.text(max_size=12)
          | st.text(alphabet=',"\r\n ab', max_size=6))


def by_the_csv_module(rows: list[tuple[Any, ...]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


@given(st.lists(st.tuples(FIELDS, FIELDS, FIELDS) | st.tuples(FIELDS, FIELDS), max_size=8))
@example([(None, 2**63)])
@example([(2**63 - 1, -(2**63)), ("", ""), ('"', "a\r\nb")])
def test_rows_are_written_as_the_csv_module_writes_them_or_left_to_it(
        rows: list[tuple[Any, ...]]) -> None:
    written = speedups.csv_rows(rows)
    simple = all(value is None or (type(value) is int and -(2**63) <= value < 2**63)
                 or (type(value) is str and value.isascii()) for row in rows for value in row)
    assert written == (by_the_csv_module(rows) if simple else None)


def test_rows_it_does_not_write_are_left_to_the_csv_module() -> None:
    for rows in ([("a",)], [("a", "b"), ("c",)], [("a", 1.5)], [("a", True)], [("a", 2**64)],
                 [("a", "\u00e9")], [["a", "b"]]):
        assert speedups.csv_rows(rows) is None, rows
    assert speedups.csv_rows([]) == ""
    with pytest.raises(TypeError):
        speedups.csv_rows(("a", "b"))
