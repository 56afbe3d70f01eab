"""`chroma-sync-gateway audit verify`: check audit log files as one tamper-evident hash chain.

The verifier streams the files in the order given (oldest first: ``audit.jsonl.000001``,
``audit.jsonl.000002``, ..., then the live ``audit.jsonl``), one line at a time, so a log of
any size is checked in constant memory. It stops at the first bad line and names it, with the
most specific reason it can give. For each line, in this order:

1. the line itself: it ends with a newline, is not empty, is UTF-8, is a JSON object, and its
   bytes are exactly the canonical encoding of its content (`audit_chain.canonical`);
2. the fields every record carries: `ts`, `event`, `seq`, `prev`, `hash` (and `mac`);
3. `hash` against the hash of the record's content (an edited record);
4. `mac` against the HMAC keys given, if any (a record forged or re-sealed without the key);
5. the chain: `seq` follows the previous record's (gap, repeat, reorder) and `prev` is the
   previous record's `hash`; the first record is seq 1 after the genesis hash unless
   `allow_partial`;
6. an `audit.checkpoint` record's `head_seq` and `head_hash` name the record before it;
7. the checkpoints given (`SEQ:HASH` noted elsewhere earlier): the record with that seq has
   that hash, and the log does not end before it;
8. the chain's Merkle tree and signed notes (`gateway.audit.tree_check`): each checkpoint's
   `tree_size` and `root` recomputed, each `note` verified with the `--public-key`s given, and
   the signed checkpoints given (`--checkpoint NOTE_FILE`) held by the chain, which must not
   end before them.

Hashing and MACs come from `gateway.audit.chain`, the same code the writer seals records with.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

from gateway.audit import chain as audit_chain
from gateway.audit import checkpoint as audit_checkpoint
from gateway.audit import merkle, note, tree_check
from gateway.audit.signing import verifier_from_arg
from gateway.secrets.sources import InvalidSecret, load_hmac_key

MAX_LINE_BYTES = 16 * 1024 * 1024
"""A line longer than this is refused rather than read into memory (records are < 200 KiB)."""

_READ_BUFFER = 1024 * 1024
_RECENT = 1024  # records remembered to name the original of a duplicated record
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHECKPOINT_EVENT = "audit.checkpoint"


@dataclass(frozen=True)
class VerifyOk:
    """The whole chain checked out: `records` records, ending at `head_seq` / `head_hash`."""

    records: int
    head_seq: int
    head_hash: str
    unchecked_checkpoints: tuple[int, ...] = ()
    """Checkpoint seqs before the first record read (only with `allow_partial`)."""
    first_seq: int = 1
    """The seq the files start at: above 1 for a retained suffix (older files deleted)."""
    anchor: int | None = None
    """The checkpoint seq that anchors a suffix (None from seq 1, or with `allow_partial`)."""
    macs_unchecked: bool = False
    """Records carry `mac`, but no key was given to check them with."""
    notes_unchecked: bool = False
    """Checkpoints carry a signed `note`, but no --public-key was given to check them with."""
    roots_unchecked: bool = False
    """The chain starts after seq 1: Merkle roots could not be recomputed."""
    signed: tuple[int, str] | None = None
    """The newest verified signed checkpoint: (tree size, key names)."""


@dataclass(frozen=True)
class VerifyFailure:
    """The first bad line: `line` is 1-based within `path`."""

    path: str
    line: int
    reason: str


@dataclass(frozen=True)
class _Record:
    """A line that passed the per-line checks (steps 1 to 4)."""

    path: str
    line: int
    seq: int
    prev: str
    hash: str
    event: str
    head_seq: int | None
    head_hash: str | None
    file_start: bool
    has_mac: bool
    fields: tree_check.Fields


@dataclass(frozen=True)
class _Seen:
    seq: int
    hash: str
    path: str
    line: int


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _NonFinite(ValueError):
    pass


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise _NonFinite(name)


def _kind(value: object) -> str:
    """The JSON type of a parsed value, for messages (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _shown(text: str, limit: int = 40) -> str:
    """Attacker-chosen text made safe to print: ASCII-escaped and cut."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return ascii(cut)


def _non_canonical_reason(content: bytes, canonical: bytes) -> str:
    if content.endswith(b"\r") and content[:-1] == canonical:
        return "non-canonical encoding: CRLF line ending (the line was rewritten)"
    offset = next(
        (i for i, (a, b) in enumerate(zip(content, canonical, strict=False)) if a != b),
        min(len(content), len(canonical)),
    )
    what = (
        "extra whitespace"
        if content[offset : offset + 1] in (b" ", b"\t", b"\r")
        else "key order, spacing, escapes or number format differ"
    )
    return (
        f"non-canonical encoding: the line differs from the canonical form of its content at "
        f"byte {offset + 1} ({what}; the line was rewritten)"
    )


def field_reason(record: Mapping[str, Any]) -> str | None:
    """Step 2: required fields are present and of the right type."""
    for name in ("ts", "event", "seq", "prev", "hash"):
        if name not in record:
            return f"missing field {name!r}"
    for name in ("ts", "event"):
        if not isinstance(record[name], str):
            return f"wrongly typed field {name!r}: expected a string, got {_kind(record[name])}"
    seq = record["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        got = (
            "an integer below 1"
            if isinstance(seq, int) and not isinstance(seq, bool)
            else _kind(seq)
        )
        return f"wrongly typed field 'seq': expected an integer >= 1, got {got}"
    for name in ("prev", "hash", "mac"):
        if name in record:
            value = record[name]
            if not isinstance(value, str) or not _HEX64.fullmatch(value):
                got = "a string of another form" if isinstance(value, str) else _kind(value)
                return f"wrongly typed field {name!r}: expected 64 lowercase hex digits, got {got}"
    if record["event"] == _CHECKPOINT_EVENT:
        for name in ("head_seq", "head_hash"):
            if name not in record:
                return f"missing field {name!r} in an audit.checkpoint record"
        head_seq = record["head_seq"]
        if not isinstance(head_seq, int) or isinstance(head_seq, bool):
            return (
                f"wrongly typed field 'head_seq' in an audit.checkpoint record: expected an "
                f"integer, got {_kind(head_seq)}"
            )
        head_hash = record["head_hash"]
        if not isinstance(head_hash, str) or not _HEX64.fullmatch(head_hash):
            return (
                "wrongly typed field 'head_hash' in an audit.checkpoint record: expected 64 "
                "lowercase hex digits"
            )
    return None


def is_hex64(text: str) -> bool:
    """Whether `text` is 64 lowercase hex digits (a hash, a MAC)."""
    return bool(_HEX64.fullmatch(text))


def checkpoint_head_reason(seq: int, prev: str, head_seq: object, head_hash: object
                           ) -> str | None:
    """Step 6 for an `audit.checkpoint` record: it names the record right before it."""
    if head_seq != seq - 1:
        return (
            f"checkpoint record disagrees with its position: head_seq is {head_seq}, but "
            f"the record before it is seq {seq - 1}"
        )
    if head_hash != prev:
        return (
            "checkpoint record disagrees with its position: head_hash is not its prev (the "
            f"hash of seq {seq - 1})"
        )
    return None


def _check_line(
    raw: bytes, path: str, lineno: int, file_start: bool, keys: Sequence[bytes]
) -> _Record | str:
    """Steps 1 to 4 for one raw line (with its newline, if any): a record or a reason."""
    if not raw.endswith(b"\n"):
        if len(raw) > MAX_LINE_BYTES:
            return f"line longer than {MAX_LINE_BYTES} bytes: not an audit record"
        return "truncated last line: no newline at the end (a torn write, or the file was cut)"
    content = raw[:-1]
    if not content.strip(b" \t\r"):
        return "empty line" if not content else "empty line (whitespace only)"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"unparsable line: not UTF-8 (invalid byte at byte {exc.start + 1})"
    try:
        parsed: object = json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates,
            parse_constant=_reject_constant,
        )
    except _DuplicateKey as exc:
        return f"non-canonical encoding: duplicate key {_shown(exc.key)} in an object"
    except _NonFinite:
        return "unparsable line: not JSON (NaN and Infinity are not JSON)"
    except RecursionError:
        return "unparsable line: not JSON (nested too deeply)"
    except ValueError as exc:
        return f"unparsable line: not JSON ({exc})"
    if not isinstance(parsed, dict):
        return f"unparsable line: not a JSON object (got {_kind(parsed)})"
    record: dict[str, Any] = parsed
    try:
        encoded = audit_chain.canonical(record)
    except (ValueError, RecursionError):
        # A lone surrogate escape (\ud800) parses, but has no UTF-8 form.
        return "non-canonical encoding: holds a string with no UTF-8 form (a lone surrogate)"
    if encoded != content:
        return _non_canonical_reason(content, encoded)

    reason = field_reason(record) or tree_check.field_reason(record)
    if reason is not None:
        return reason

    encoded_body = audit_chain.canonical(audit_chain.body_of(record))
    computed = audit_chain.record_hash(encoded_body)
    stored: str = record["hash"]
    if computed != stored:
        return (
            f"hash mismatch: the record was edited (its hash field is {stored[:16]}..., "
            f"its content hashes to {computed[:16]}...)"
        )
    if keys:
        if "mac" not in record:
            return (
                "missing mac: an HMAC key was given but the record has no mac (written without "
                "the key, or the mac was stripped)"
            )
        if not any(audit_chain.mac_matches(key, encoded_body, record["mac"]) for key in keys):
            return (
                f"bad mac: matches none of the {len(keys)} HMAC key(s) given (the record was "
                f"forged or re-sealed without the key, or the wrong key was given)"
            )
    is_checkpoint = record["event"] == _CHECKPOINT_EVENT
    return _Record(
        path=path,
        line=lineno,
        seq=record["seq"],
        prev=record["prev"],
        hash=stored,
        event=record["event"],
        head_seq=record["head_seq"] if is_checkpoint else None,
        head_hash=record["head_hash"] if is_checkpoint else None,
        file_start=file_start,
        has_mac="mac" in record,
        fields=tree_check.Fields(
            seq=record["seq"],
            event=record["event"],
            leaf=merkle.leaf_hash(content),
            chain=record.get("chain"),
            origin=record.get("origin"),
            tree_size=record.get("tree_size"),
            root=record.get("root"),
            note=record.get("note"),
        ),
    )


class _Lines:
    """The checked lines of all files in order; remembers where reading stopped."""

    def __init__(self, paths: Sequence[str], keys: Sequence[bytes]) -> None:
        self._paths = paths
        self._keys = keys
        self.path = paths[-1] if paths else ""
        self.lines_in_file = 0
        self._peeked: list[_Record | VerifyFailure] = []
        self._gen = self._read()

    def _read(self) -> Generator[_Record | VerifyFailure, None, None]:
        for path in self._paths:
            self.path = path
            self.lines_in_file = 0
            file_start = True
            with open(path, "rb", buffering=_READ_BUFFER) as handle:
                while raw := handle.readline(MAX_LINE_BYTES + 1):
                    self.lines_in_file += 1
                    checked = _check_line(raw, path, self.lines_in_file, file_start, self._keys)
                    if isinstance(checked, str):
                        yield VerifyFailure(path, self.lines_in_file, checked)
                        return
                    yield checked
                    file_start = False

    def __iter__(self) -> Iterator[_Record | VerifyFailure]:
        return self

    def __next__(self) -> _Record | VerifyFailure:
        if self._peeked:
            return self._peeked.pop()
        return next(self._gen)

    def peek(self) -> _Record | VerifyFailure | None:
        if not self._peeked:
            try:
                self._peeked.append(next(self._gen))
            except StopIteration:
                return None
        return self._peeked[0]

    def close(self) -> None:
        self._gen.close()


def _find_recent(recent: deque[_Seen], seq: int) -> _Seen | None:
    """The remembered record with `seq` (the window is contiguous while the chain is valid)."""
    if not recent:
        return None
    index = seq - recent[0].seq
    if 0 <= index < len(recent) and recent[index].seq == seq:
        return recent[index]
    return None


def _chain_reason(
    cur: _Record,
    last: _Record | None,
    recent: deque[_Seen],
    upcoming: _Lines,
    allow_partial: bool,
    anchored: bool = False,
) -> str | None:
    """Step 5: `cur` continues the chain after `last`."""
    if last is None:
        if cur.seq == 1:
            if cur.prev != audit_chain.GENESIS:
                return (
                    "first record (seq 1) has a prev that is not the genesis hash (64 zeros): "
                    "it does not start a chain"
                )
            return None
        if allow_partial or anchored:
            return None
        return (
            f"first record has seq {cur.seq}, expected seq 1 after the genesis hash: the start "
            f"of the chain is missing (earlier rotated files not given, deleted by "
            f"audit.keep_files, or records removed); give --checkpoint SEQ:HASH of a record at "
            f"or before seq {cur.seq} (an audit.deleted record's last_seq:last_hash, or a "
            f"shipped checkpoint) to verify the retained files, or --allow-partial"
        )

    expected = last.seq + 1
    if cur.seq == expected:
        if cur.prev == last.hash:
            return None
        if cur.file_start:
            return (
                f"prev mismatch at the start of a file: its first record (seq {cur.seq}) does "
                f"not chain to the last record of the previous file (seq {last.seq}): files "
                f"from different chains, or a file was replaced"
            )
        return (
            f"prev mismatch: seq {cur.seq}'s prev is not the hash of seq {last.seq} (a record "
            f"was inserted or replaced, or two chains were spliced together)"
        )

    if cur.seq > expected:
        following = upcoming.peek()
        if isinstance(following, _Record) and following.seq == expected:
            return (
                f"records out of order: found seq {cur.seq} where seq {expected} was expected, "
                f"and seq {expected} comes right after it (records swapped or reordered)"
            )
        missing = cur.seq - expected
        reason = (
            f"seq gap: expected seq {expected}, found seq {cur.seq}: {missing} record(s) "
            f"missing (removed)"
        )
        if cur.file_start:
            reason += (
                "; this is the first record of a file: a rotated file is missing or the files "
                "are out of order"
            )
        return reason

    # cur.seq <= last.seq: the seq went back to one already seen.
    if cur.file_start:
        return (
            f"seq went back from {last.seq} to {cur.seq} at the start of a file: the files are "
            f"given out of order (give them oldest first: audit.jsonl.000001, ..., audit.jsonl) "
            f"or a file is given twice"
        )
    original = _find_recent(recent, cur.seq)
    if original is not None and original.hash == cur.hash:
        return (
            f"seq {cur.seq} repeated: duplicated record (an identical copy of "
            f"{original.path}:{original.line})"
        )
    if cur.seq == last.seq:
        same_head = " chained to the same prev" if cur.prev == last.prev else ""
        return (
            f"seq {cur.seq} repeated: two writers or duplicated record (a different record with "
            f"the same seq{same_head}: two writers appending to one file, or a record inserted "
            f"before it)"
        )
    return (
        f"seq {cur.seq} repeated: two writers or duplicated record (seq went backwards from "
        f"{last.seq} to {cur.seq}: two writers interleaving their chains in one file, or records "
        f"reordered)"
    )


def _checkpoint_record_reason(cur: _Record) -> str | None:
    """Step 6: an `audit.checkpoint` record seals the record right before it."""
    if cur.event != _CHECKPOINT_EVENT:
        return None
    return checkpoint_head_reason(cur.seq, cur.prev, cur.head_seq, cur.head_hash)


def _suffix_anchor(first: _Record, wanted: Mapping[int, str]) -> tuple[int | None, str | None]:
    """For files that start after seq 1: the checkpoint seq that anchors them, or a reason.

    Only a checkpoint for the first record itself, or for the one just before it (its
    `prev`: an `audit.deleted` record's `last_seq:last_hash`), says where the suffix starts. A
    later checkpoint alone does not: records cut from the front would go unnoticed.
    """
    before = wanted.get(first.seq - 1)
    if before is not None:
        if before != first.prev:
            return None, (
                f"checkpoint mismatch: the first record (seq {first.seq}) does not chain to the "
                f"checkpoint for seq {first.seq - 1}: its prev is another hash"
            )
        return first.seq - 1, None
    if first.seq in wanted:
        return first.seq, None  # its hash is compared with the checkpoint's as usual
    return None, None


def checkpoint_map(checkpoints: Sequence[tuple[int, str]]) -> dict[int, str]:
    """`--checkpoint SEQ:HASH` pairs by seq; ValueError for a malformed or contradicting one."""
    wanted: dict[int, str] = {}
    for seq, digest in checkpoints:
        digest = digest.lower()
        if seq < 1 or not _HEX64.fullmatch(digest):
            raise ValueError(f"checkpoint {seq}:{_shown(digest)} is not a seq >= 1 and a hash")
        if wanted.get(seq, digest) != digest:
            raise ValueError(f"two checkpoints for seq {seq} with different hashes")
        wanted[seq] = digest
    return wanted


def verify(
    paths: Sequence[str],
    *,
    hmac_keys: Sequence[bytes] = (),
    checkpoints: Sequence[tuple[int, str]] = (),
    allow_partial: bool = False,
    verifiers: Sequence[note.Verifier] = (),
    anchors: Sequence[tree_check.Anchor] = (),
) -> VerifyOk | VerifyFailure:
    """Check `paths`, oldest first, as one chain; return the head or the first bad line.

    `hmac_keys`: every record must carry a `mac` made with one of them (several keys for key
    rotation). `checkpoints`: `(seq, hash)` pairs noted earlier; the record with that seq must
    have that hash, and the log must reach it. `allow_partial`: the first record may be any
    seq with any prev (verifying only the newest rotated files). `verifiers`: every checkpoint
    `note` must verify with one of them. `anchors`: signed checkpoints kept elsewhere that the
    chain must hold (same size, same root) and reach.

    Raises ValueError for no paths or contradicting checkpoints, OSError for unreadable files.
    """
    if not paths:
        raise ValueError("no audit log paths given")
    wanted = checkpoint_map(checkpoints)
    keys = tuple(hmac_keys)
    lines = _Lines(paths, keys)
    tree = tree_check.TreeCheck(verifiers, anchors)
    recent: deque[_Seen] = deque(maxlen=_RECENT)
    last: _Record | None = None
    first_seq: int | None = None
    anchor: int | None = None
    macs_unchecked = False
    count = 0
    try:
        for item in lines:
            if isinstance(item, VerifyFailure):
                return item
            if last is None and item.seq != 1:
                anchor, problem = _suffix_anchor(item, wanted)
                if problem is not None:
                    return VerifyFailure(item.path, item.line, problem)
            macs_unchecked = macs_unchecked or (item.has_mac and not keys)
            reason = _chain_reason(item, last, recent, lines, allow_partial, anchor is not None)
            if reason is None:
                reason = _checkpoint_record_reason(item)
            if reason is None:
                reason = tree.record(item.fields)
            if reason is None and item.seq in wanted and wanted[item.seq] != item.hash:
                reason = (
                    f"checkpoint mismatch: record seq {item.seq} has hash {item.hash}, but the "
                    f"checkpoint says {wanted[item.seq]}: the log was rewritten at or before "
                    f"seq {item.seq}"
                )
            if reason is not None:
                return VerifyFailure(item.path, item.line, reason)
            if first_seq is None:
                first_seq = item.seq
            count += 1
            last = item
            recent.append(_Seen(item.seq, item.hash, item.path, item.line))
    finally:
        lines.close()

    head_seq = last.seq if last is not None else 0
    head_hash = last.hash if last is not None else audit_chain.GENESIS
    beyond = sorted(seq for seq in wanted if seq > head_seq)
    if beyond:
        return VerifyFailure(
            lines.path,
            lines.lines_in_file,
            f"log ends at seq {head_seq} before checkpoint seq {beyond[0]}: truncated",
        )
    problem = tree.finish(head_seq)
    if problem is not None:
        return VerifyFailure(lines.path, lines.lines_in_file, problem)
    start = first_seq if first_seq is not None else head_seq + 1
    unchecked = tuple(sorted(seq for seq in wanted if seq < start))
    return VerifyOk(count, head_seq, head_hash, unchecked, first_seq or 1, anchor,
                    macs_unchecked, tree.notes_unchecked, tree.roots_unchecked, tree.signed)


def parse_checkpoint(text: str) -> tuple[int, str]:
    """Parse a `--checkpoint` value, `SEQ:HASH`: a record's seq and its 64-hex-digit hash."""
    shown = _shown(text, 100)
    seq_text, colon, hash_text = text.strip().partition(":")
    if not colon:
        raise ValueError(
            f"checkpoint {shown} is not SEQ:HASH (a record's seq, a colon, and that record's "
            f"64-hex-digit hash) nor a signed checkpoint file"
        )
    seq_text = seq_text.strip()
    if not (seq_text.isascii() and seq_text.isdigit()) or len(seq_text) > 19:
        raise ValueError(f"checkpoint {shown}: SEQ must be a decimal integer >= 1")
    seq = int(seq_text)
    if seq < 1:
        raise ValueError(f"checkpoint {shown}: SEQ must be a decimal integer >= 1")
    digest = hash_text.strip().lower()
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"checkpoint {shown}: HASH must be 64 hex digits")
    return seq, digest


_SEQ_HASH = re.compile(r"\s*[0-9]+\s*:\s*[0-9a-fA-F]{64}\s*")


def _anchor(path: str, verifiers: Sequence[note.Verifier]) -> tree_check.Anchor:
    """A `--checkpoint NOTE_FILE`: a signed checkpoint that must verify. ValueError if not."""
    if not verifiers:
        raise ValueError(f"{path} is a signed checkpoint: give --public-key to verify it")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(65537)
    except OSError as exc:
        raise ValueError(f"{path}: can't read ({exc.strerror})") from None
    return anchor_from_note(path, raw[:65536], verifiers)


def anchor_from_note(name: str, raw: bytes, verifiers: Sequence[note.Verifier]
                     ) -> tree_check.Anchor:
    """A signed checkpoint (a file given, an archive's checkpoint object) that must verify
    with one of `verifiers`; ValueError naming `name` if it does not."""
    try:
        opened = note.open_note(raw, verifiers)
        point = audit_checkpoint.parse(opened.text)
    except note.UnverifiedNote:
        raise ValueError(f"{name}: not signed by any --public-key given") from None
    except (note.NoteError, audit_checkpoint.CheckpointError) as exc:
        raise ValueError(f"{name}: not a signed checkpoint that verifies ({exc})") from None
    return tree_check.Anchor(name, point, ", ".join(dict.fromkeys(s.name for s in opened.sigs)))


def is_seq_hash(text: str) -> bool:
    """Whether a `--checkpoint` value is SEQ:HASH (else it names a signed checkpoint file)."""
    return bool(_SEQ_HASH.fullmatch(text)) or not os.path.isfile(text)


def _report(result: VerifyOk, out: TextIO, err: TextIO) -> None:
    signed = (f", signed at tree size {result.signed[0]} by {result.signed[1]}"
              if result.signed is not None else "")
    print(f"ok: {result.records} records, head {result.head_hash}{signed}", file=out)
    if result.first_seq > 1:
        how = (f"anchored by checkpoint seq {result.anchor}" if result.anchor is not None
               else "not anchored by any checkpoint (--allow-partial)")
        print(f"started at seq {result.first_seq}: a retained suffix (records before it are "
              f"not in the files given), {how}", file=out)
    if result.macs_unchecked:
        print("audit verify: warning: the records carry a mac, but no --hmac-key-file was "
              "given: no mac was checked", file=err)
    if result.notes_unchecked:
        print("audit verify: warning: the checkpoints carry signed notes, but no --public-key "
              "was given: no note was checked", file=err)
    if result.roots_unchecked:
        print("audit verify: note: the chain does not start at seq 1 in the files given: Merkle "
              "roots before it could not be recomputed", file=err)
    if result.unchecked_checkpoints:
        listed = ", ".join(str(seq) for seq in result.unchecked_checkpoints)
        print(
            f"audit verify: note: checkpoint seq {listed} precede(s) the first record given "
            f"and could not be checked",
            file=err,
        )


def run(
    argv_paths: Sequence[str],
    hmac_key_files: Sequence[str],
    checkpoint_texts: Sequence[str],
    allow_partial: bool,
    out: TextIO,
    err: TextIO,
    public_keys: Sequence[str] = (),
) -> int:
    """`audit verify`: 0 and `ok: N records, head <hash>` on `out`; 1 and `<path>:<line>:
    <reason>` on `out` for a bad log; 2 and a message on `err` for a usage error."""

    def usage(message: str) -> int:
        print(f"audit verify: {message}", file=err)
        return 2

    if not argv_paths:
        return usage("no audit log path given")
    keys: list[bytes] = []
    for key_file in hmac_key_files:
        try:
            keys.append(load_hmac_key(key_file))
        except InvalidSecret as exc:
            return usage(f"--hmac-key-file {key_file}: {exc}")
    verifiers: list[note.Verifier] = []
    for text in public_keys:
        try:
            verifiers.append(verifier_from_arg(text))
        except ValueError as exc:
            return usage(f"--public-key: {exc}")
    checkpoints: list[tuple[int, str]] = []
    anchors: list[tree_check.Anchor] = []
    for text in checkpoint_texts:
        try:
            if not _SEQ_HASH.fullmatch(text) and os.path.isfile(text):
                anchors.append(_anchor(text, verifiers))
            else:
                checkpoints.append(parse_checkpoint(text))
        except ValueError as exc:
            return usage(f"--checkpoint: {exc}")
    try:
        checkpoint_map(checkpoints)
    except ValueError as exc:
        return usage(f"--checkpoint: {exc}")
    seen: dict[tuple[int, int], str] = {}
    for path in argv_paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return usage(f"{path}: no such file")
        except OSError as exc:
            return usage(f"{path}: can't read ({exc.strerror})")
        if os.path.isdir(path):
            return usage(f"{path}: is a directory, not an audit log file")
        identity = (st.st_dev, st.st_ino)
        if identity in seen:
            return usage(f"{path}: given twice (also as {seen[identity]})")
        seen[identity] = path
    try:
        result = verify(
            argv_paths, hmac_keys=keys, checkpoints=checkpoints, allow_partial=allow_partial,
            verifiers=verifiers, anchors=anchors,
        )
    except OSError as exc:
        return usage(f"{exc.filename}: can't read ({exc.strerror})")
    if isinstance(result, VerifyFailure):
        print(f"{result.path}:{result.line}: {result.reason}", file=out)
        return 1
    _report(result, out, err)
    return 0
