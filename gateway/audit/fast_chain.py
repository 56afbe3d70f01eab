"""One chain's files checked in one pass, for the case that matters: every record is good.

An auditor's time goes to chains that verify. For them this module makes every check of
`gateway.audit.verify` (and the fleet's order checks) several times faster; on anything else
it gives up, returning None, and the caller runs the general verifier, which names the
problem. It must never pass what the general verifier refuses. How it stays exact:

- Canonical form: the line is parsed (orjson) and re-encoded with sorted keys, and the bytes
  must be equal. orjson and `chain.canonical` write strings and integers alike (a test holds
  them to it over every code point); they write floats below 1e-4 differently, so a line that
  may hold one (`_TINY_FLOAT`) is left to the general verifier. Duplicate keys, lone
  surrogates, NaN and integers past 64 bits fail to parse or to re-encode equal.
- The seal: the hash and MAC cover the line without its `hash` and `mac` members, so those
  are cut out of the line's bytes (`,"hash":"<64 hex>"`) instead of encoding the record again.
  In a canonical line `"hash":` can't occur inside a string (every `"` there is escaped), and
  in a line with one object level (one `{`: counted a chunk at a time) each key occurs once,
  so the cut is the record's own member. A line with nested objects (an `audit.chain`
  record's `previous`) is encoded as the general verifier encodes it, and its chain and seq
  read as the fleet reads them (`grouping.chain_of`, `seq_of`).
- Types: a field compared equal to a value already checked (`hash` to the digest computed,
  `prev` to the last hash, `chain` to the chain's first) has that value's form. Records other
  than plain ones (`audit.chain`, `audit.checkpoint`) go through the general verifier's own
  functions (`verify.field_reason`, `tree_check.TreeCheck.record`), as do the chain's first.
- Order: each record must have the next seq and chain to the last hash; a repeat, a gap or a
  record of another chain gives up (the fleet's `ordered` drops exact duplicates and sorts:
  the general path does that).

Where this install built `gateway.audit.speedups` (`compiled`), its `plain_lines` checks the
plain records of a chunk in C, about three times as fast, and stops at any line it is not
sure of (an `audit.*` record, non-ASCII text, a nested object, a seal that does not hold, a
record `wanted` names), which `check_lines` checks here. It holds a line to the same checks,
reading the canonical form strictly on its own (speedups.c says how); the tests run every
walk both ways and hold the compiled loop to the general verifier.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.audit import chain as audit_chain
from gateway.audit import compiled, grouping, merkle, tree_check, verify
from gateway.audit.chain_tree import CHAIN_ID, default_origin

CHUNK_BYTES = 4 * 1024 * 1024
_FIXED = re.compile(rb"\.0000[1-9]")
_SHORT_EXPONENT = re.compile(rb"-[1-9][,}\]]")  # after an "e": an exponent of one digit
_DIGITS = frozenset(b"0123456789.")
_BEFORE_NUMBER = frozenset(b":,[")
_SPECIAL, _IDENTITY = "special", "identity"
_KINDS = {tree_check.CHAIN_EVENT: _SPECIAL, tree_check.CHECKPOINT_EVENT: _SPECIAL,
          "audit.opened": _IDENTITY}
"""Events checked by the general verifier's own functions, or read for the chain's identity."""
_IDENTITY_EVENTS = frozenset((tree_check.CHAIN_EVENT, "audit.opened"))
_IDENTITY_MARKERS = (b'"event":"audit.chain"', b'"event":"audit.opened"')
_HASH_KEY = b'"hash":"'
_ABSENT = object()
_MAC_KEY = b'"mac":"'
_BLOCK = 64  # SHA-256's block size, for the HMAC pads


class GiveUp(Exception):
    """Not the common case: the general verifier decides (never shown to anyone)."""


@dataclass(frozen=True)
class ChainFiles:
    """One chain's files, oldest first, each starting with the record after the last one's."""

    chain: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Passed:
    """What the general verifier would have said of a chain that verifies."""

    ok: verify.VerifyOk
    instance: str | None
    origin: str


def mac_pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) with `key`, its two padded key blocks hashed once: the MAC of a
    message is ``outer.copy() <- inner.copy() <- message``."""
    block = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
    block = block.ljust(_BLOCK, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)))


def mac_checker(keys: Sequence[bytes]) -> Callable[[bytes, object], bool]:
    """Whether a MAC is HMAC-SHA256(key, body) for one of `keys`."""
    pads = [mac_pads(key) for key in keys]

    def matches(body: bytes, mac: object) -> bool:
        for inner, outer in pads:
            digest = inner.copy()
            digest.update(body)
            final = outer.copy()
            final.update(digest.digest())
            if final.hexdigest() == mac:
                return True
        return False

    return matches


def tiny_float(text: bytes) -> bool:
    """Whether canonical JSON text may hold a number that orjson writes otherwise than
    `chain.canonical`: with 1e-5 <= |x| < 1e-4, `0.0000d...` (Python: `de-05`), and below
    1e-5 with a one-digit exponent, `de-7` (Python: `de-07`). Either is a number token, which
    follows `:`, `,` or `[` (and maybe a minus sign); inside strings the patterns are harmless
    but still counted when they look like a token's start (then the general verifier decides)."""
    for found in _FIXED.finditer(text):
        start = found.start() - 1  # the "0" of "0.0000"
        if start > 0 and text[start - 1] == 45:  # "-"
            start -= 1
        if start > 0 and text[start - 1] in _BEFORE_NUMBER:
            return True
    for found in _SHORT_EXPONENT.finditer(text):
        start = found.start()  # the "-" after "e"
        if start < 2 or text[start - 1] != 101:  # "e"
            continue
        start -= 1
        while start > 0 and text[start - 1] in _DIGITS:
            start -= 1
        if start < found.start() - 1:  # a mantissa before the "e"
            if start > 0 and text[start - 1] == 45:
                start -= 1
            if start > 0 and text[start - 1] in _BEFORE_NUMBER:
                return True
    return False


def chunks(paths: Sequence[str]) -> Iterator[tuple[bytearray, int]]:
    """Each file's bytes a chunk at a time, read into one buffer, reused (no 4 MiB object made,
    copied and freed per chunk): its whole lines are those before `end`, until the next chunk
    is asked for; the rest begins the next. GiveUp on a last line with no newline (the
    general verifier names a torn or cut file)."""
    buffer = bytearray(CHUNK_BYTES)
    for path in paths:
        kept = 0  # bytes of a line begun in the last chunk, at the buffer's start
        with open(path, "rb", buffering=0) as handle:
            while True:
                if kept == len(buffer):  # a line longer than the buffer
                    buffer.extend(bytes(len(buffer)))
                with memoryview(buffer) as view:
                    got = handle.readinto(view[kept:])
                if not got:
                    break
                valid = kept + got
                end = buffer.rfind(b"\n", 0, valid) + 1
                yield buffer, end
                buffer[:valid - end] = buffer[end:valid]
                kept = valid - end
        if kept:
            raise GiveUp


def lines(paths: Sequence[str]) -> Iterator[tuple[bool, list[bytes]]]:
    """Each file's lines, without newlines, a chunk at a time, and whether each of them holds
    one `{` (flat objects: every key is the record's own). GiveUp as `chunks` does, and on a
    chunk that may hold a number below 1e-4 (`tiny_float`)."""
    for buffer, end in chunks(paths):
        with memoryview(buffer) as view:
            chunk = bytes(view[:end])
        parts = chunk.split(b"\n")
        parts.pop()  # (empty: the chunk ends with its last newline)
        if tiny_float(chunk):
            raise GiveUp
        yield chunk.count(b"{") == len(parts), parts


def check(files: ChainFiles, *, keys: Sequence[bytes], verifiers: Sequence[Any],
          anchors: Sequence[tree_check.Anchor], wanted: Mapping[int, str],
          each: Callable[[dict[str, Any]], None] | None = None,
          needles: Sequence[bytes] = ()) -> Passed | None:
    """The chain's verdict if it verifies, else None. `each`: called with each record that
    verified and whose line holds every one of `needles` (for `audit query`; what it made of
    a chain that did not verify in the end must be dropped). `anchors`: every signed checkpoint
    given; the chain is held to those of its origin, as the general path chooses them."""
    collecting = gc.isenabled()
    # A walk makes no reference cycles, and `each` may keep thousands of rows in memory,
    # which every full collection would walk again.
    gc.disable()
    try:
        return _Walk(files, keys, verifiers, anchors, wanted, each, tuple(needles)).run()
    except GiveUp:
        return None
    finally:
        if collecting:
            gc.enable()


class _Walk:
    def __init__(self, files: ChainFiles, keys: Sequence[bytes], verifiers: Sequence[Any],
                 anchors: Sequence[tree_check.Anchor], wanted: Mapping[int, str],
                 each: Callable[[dict[str, Any]], None] | None,
                 needles: tuple[bytes, ...]) -> None:
        self.files = files
        self.keys = tuple(keys)
        self.tree = tree_check.TreeCheck(verifiers, anchors)
        self.anchors = anchors
        self.wanted = wanted
        self.each = each
        self.needles = needles
        self.instance: str | None = None
        self.origin: str | None = None
        self.stops = sorted(wanted)  # records speedups.plain_lines leaves to check_lines
        self.mac_ok = mac_checker(self.keys) if self.keys else None
        # The first key's pads, inline: with one key (the usual) no call per record.
        pads: tuple[Any, Any] = mac_pads(self.keys[0]) if self.keys else (None, None)
        self.inner, self.outer = pads
        # The chain's state after the records checked so far.
        self.seq, self.head, self.has_mac = 0, audit_chain.GENESIS, False
        self.leaves: list[bytes] = []

    def special(self, record: dict[str, Any], content: bytes) -> None:
        """A record the general verifier's functions check: the first, `audit.chain`,
        `audit.checkpoint`."""
        reason = verify.field_reason(record) or tree_check.field_reason(record)
        if reason is None and record["event"] == tree_check.CHECKPOINT_EVENT:
            reason = verify.checkpoint_head_reason(record["seq"], record["prev"],
                                                   record["head_seq"], record["head_hash"])
        if reason is None:
            reason = self.tree.record(tree_check.Fields(
                seq=record["seq"], event=record["event"], leaf=merkle.leaf_hash(content),
                chain=record.get("chain"), origin=record.get("origin"),
                tree_size=record.get("tree_size"), root=record.get("root"),
                note=record.get("note")))
        if reason is not None:
            raise GiveUp

    def identity(self, record: dict[str, Any]) -> None:
        """`instance` and `origin` as the fleet takes them from identity records."""
        instance, origin = record.get("instance"), record.get("origin")
        if isinstance(instance, str) and instance:
            self.instance = instance
        if isinstance(origin, str) and origin:
            self.origin = origin

    def run(self) -> Passed:
        if compiled.speedups is None:
            for flat, chunk in lines(self.files.paths):
                self.check_lines(flat, chunk)
                self.flush()
        else:
            for data, end in chunks(self.files.paths):
                self.check_chunk(data, end)
        return self.finish(self.seq, self.head, self.has_mac)

    def check_chunk(self, chunk: bytearray, end: int) -> None:
        """A chunk's whole lines: as many at a time as `speedups.plain_lines` takes, each it
        stops at by `check_lines` (which gives up if it should)."""
        speedups = compiled.speedups
        assert speedups is not None
        walk, stops, key = speedups.plain_lines, self.stops, self.keys[0] if self.keys else None
        chain, needles, pos = self.files.chain.encode(), self.needles, 0
        head = self.head.encode()
        each, loads = self.each, orjson.loads
        matched: list[bytes] | None = None if each is None else []
        while True:
            later = bisect.bisect_right(stops, self.seq)
            stop = stops[later] if later < len(stops) else 0
            pos, self.seq, head, has_mac = walk(chunk, pos, end, chain, self.seq, head, stop,
                                                key, needles, self.leaves, matched)
            self.has_mac = self.has_mac or has_mac
            if matched:  # verified lines holding every needle, in order
                assert each is not None
                for line in matched:
                    each(loads(line))
                matched.clear()
            if pos >= end:
                break
            newline = chunk.index(b"\n", pos, end)
            content = bytes(chunk[pos:newline])
            if tiny_float(content):  # orjson would not write it as the general verifier does
                raise GiveUp
            self.head = head.decode()
            self.check_lines(False, [content])
            head = self.head.encode()
            pos = newline + 1
        self.head = head.decode()
        self.flush()

    def check_lines(self, flat: bool, contents: list[bytes]) -> None:
        """Records in order, the chain's state (seq, head, leaves) carried from the last.
        `flat`: every line holds one `{`."""
        # One loop on purpose: a call per record would cost as much as a check does.
        loads, dumps, sort_keys = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
        sha256, leaf_prefix = hashlib.sha256, b"\x00"
        mac_ok, inner, outer = self.mac_ok, self.inner, self.outer
        chain = self.files.chain
        tree, wanted, each = self.tree, self.wanted, self.each
        leaves = self.leaves
        seq, head, has_mac = self.seq, self.head, self.has_mac
        needles = self.needles
        for content in contents:
            try:
                record = loads(content)
            except orjson.JSONDecodeError:
                raise GiveUp from None  # (an empty or CRI line too: the general reader's)
            if type(record) is not dict or dumps(record, option=sort_keys) != content:
                raise GiveUp
            stored = record.get("hash")
            event = record.get("event")
            number = record.get("seq")
            if (type(number) is not int or number != seq + 1 or record.get("prev") != head
                    or type(stored) is not str or type(event) is not str
                    or type(record.get("ts")) is not str or record.get("chain") != chain):
                raise GiveUp
            mac = record.get("mac", _ABSENT)
            if not flat and content.find(b"{", 1) >= 0:
                # Nested objects (an audit.chain's `previous`): the body is encoded as the
                # general verifier does, and chain and seq read as the fleet reads them.
                if grouping.chain_of(content) != chain or grouping.seq_of(content) != number:
                    raise GiveUp
                body = audit_chain.canonical(audit_chain.body_of(record))
                if any(marker in content for marker in _IDENTITY_MARKERS):
                    self.identity(record)
            else:
                at = content.find(_HASH_KEY)
                if at < 1 or content[at - 1] != 44:  # the "," before it
                    raise GiveUp
                if mac is _ABSENT:
                    body = content[:at - 1] + content[at + 73:]
                else:
                    cut = content.find(_MAC_KEY)
                    if cut <= at or content[cut - 1] != 44:
                        raise GiveUp
                    body = (content[:at - 1] + content[at + 73:cut - 1]
                            + content[cut + 72:])
                if event in _IDENTITY_EVENTS:
                    self.identity(record)
            if mac is _ABSENT:
                if mac_ok is not None:
                    raise GiveUp
            else:
                has_mac = True
                if inner is None or outer is None or mac_ok is None:
                    if type(mac) is not str or not verify.is_hex64(mac):
                        raise GiveUp
                else:
                    digest = inner.copy()
                    digest.update(body)
                    final = outer.copy()
                    final.update(digest.digest())
                    if final.hexdigest() != mac and not mac_ok(body, mac):
                        raise GiveUp
            if sha256(body).hexdigest() != stored:
                raise GiveUp
            seq += 1
            kind = _KINDS.get(event)
            if kind is None and seq != 1:
                leaves.append(sha256(leaf_prefix + content).digest())
            else:
                if kind is not _IDENTITY or seq == 1:
                    if leaves:
                        tree.plain(leaves)
                        leaves = []
                    self.special(record, content)
                else:
                    leaves.append(sha256(leaf_prefix + content).digest())
            if wanted and seq in wanted and wanted[seq] != stored:
                raise GiveUp
            if each is not None:
                for needle in needles:
                    if needle not in content:
                        break
                else:
                    each(record)
            head = stored
        self.seq, self.head, self.has_mac, self.leaves = seq, head, has_mac, leaves

    def flush(self) -> None:
        """The leaves so far to the tree: after each chunk, so memory stays bounded between
        checkpoints too."""
        if self.leaves:
            self.tree.plain(self.leaves)
            self.leaves = []

    def finish(self, seq: int, head: str, has_mac: bool) -> Passed:
        if seq == 0 or any(s > seq for s in self.wanted):
            raise GiveUp
        origin = self.origin or default_origin(self.files.chain)
        mine = [a for a in self.anchors if a.checkpoint.origin == origin]
        if self.tree.finish(seq, mine) is not None:
            raise GiveUp
        tree = self.tree
        ok = verify.VerifyOk(seq, seq, head, (), 1, None, has_mac and not self.keys,
                             tree.notes_unchecked, tree.roots_unchecked, tree.signed)
        return Passed(ok, self.instance, origin)


def first_record(path: str) -> tuple[str, int] | None:
    """The chain and seq of a file's first line, or None when it is not a record with a
    chain."""
    with open(path, "rb") as handle:
        line = handle.readline(verify.MAX_LINE_BYTES)
    chain = grouping.chain_of(line) if line.startswith(b"{") else None
    if chain is None or not CHAIN_ID.fullmatch(chain):
        return None
    return chain, grouping.seq_of(line)
