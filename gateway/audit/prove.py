"""`audit prove`: inclusion and consistency proofs for one chain, from its record files.

The files are read once, in any order, keeping only what a proof needs: the chain's leaf
hashes (32 bytes a record, packed), the line of the record to prove, and the chain's signed
checkpoints. Exact duplicates (a file given twice, at-least-once shipping) are harmless; two
different records with one seq are not. A proof is only produced against a signed checkpoint
whose root the records reproduce, so a proof never vouches for records the checkpoint does not.

The output is JSON (see `gateway.audit.proof_check` for what a checker does with it)::

    {"chain", "seq", "record", "tree_size", "proof", "checkpoint"}   (inclusion)
    {"chain", "old", "new", "proof"}                                  (consistency)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from gateway.audit import checkpoint as cp
from gateway.audit import merkle, note
from gateway.audit.chain_tree import CHAIN_ID, default_origin


class ProveUsage(ValueError):
    """Bad input: the arguments, files or notes given (exit 2)."""


class CannotProve(Exception):
    """The records given do not support the proof asked for (exit 1)."""


class SignedCheckpoint(NamedTuple):
    """A checkpoint note: from a chain's `audit.checkpoint` record, or given in a file."""

    text: str
    """The whole signed note, ending in a newline."""
    checkpoint: cp.Checkpoint


class ChainRecords:
    """What the files hold of one chain."""

    def __init__(self, chain: str) -> None:
        self.chain = chain
        # From the chain's `audit.chain` record, else from its first signed checkpoint.
        self.origin: str | None = None
        self.leaves = merkle.LeafHashes()
        self.signed: list[SignedCheckpoint] = []
        self.wanted_line: str | None = None

    @property
    def tree_origin(self) -> str:
        return self.origin or default_origin(self.chain)


def parse_signed_checkpoint(text: str, where: str) -> SignedCheckpoint:
    """A signed checkpoint note, well formed (its signatures are not checked here)."""
    try:
        parsed = note.parse_note(text)
        if not parsed.unverified_sigs:
            raise note.NoteError("no signature line")
        return SignedCheckpoint(text, cp.parse(parsed.text))
    except (note.NoteError, cp.CheckpointError) as exc:
        raise ProveUsage(f"{where}: not a signed checkpoint note ({exc})") from None


def read_note_file(path: str) -> SignedCheckpoint:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(65537)
    except OSError as exc:
        raise ProveUsage(f"{path}: can't read ({exc.strerror})") from None
    if len(raw) > 65536:
        raise ProveUsage(f"{path}: not a signed checkpoint note (over 64 KiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProveUsage(f"{path}: not a signed checkpoint note (not UTF-8)") from None
    return parse_signed_checkpoint(text, path)


def _lines(paths: Sequence[str]) -> Iterator[tuple[str, int, bytes]]:
    """The record lines of the inputs: files, folders, `-`, archive URLs, CRI logs."""
    from gateway.audit import inputs  # here: a proof from an index reads no input this way

    try:
        items = inputs.expand(paths, stdin=sys.stdin.buffer)
    except inputs.InputError as exc:
        raise ProveUsage(str(exc)) from None
    for item in items:
        if item.note:
            continue  # an archive's checkpoint object: the chain's records carry the same
        try:
            with item.open() as handle:
                for lineno, raw in inputs.records(handle):
                    if raw.endswith(b"\n"):  # a torn last line is no record
                        yield item.name, lineno, raw[:-1]
        except OSError as exc:
            raise ProveUsage(f"{item.name}: can't read ({exc.strerror or exc})") from None


def collect(
    paths: Sequence[str], *, chain: str | None = None, origin: str | None = None,
    want_seq: int | None = None,
) -> ChainRecords:
    """The records of one chain: named by `chain`, or by the checkpoint `origin` it signs."""
    found: dict[str, ChainRecords] = {}
    needle = chain.encode() if chain else b'"chain"'  # a cheap filter before parsing
    for path, lineno, line in _lines(paths):
        if needle not in line:
            continue  # another chain, or a record of an earlier version
        try:
            record: Any = json.loads(line)
        except ValueError:
            continue  # not a record: `audit verify` names such lines
        if not isinstance(record, dict):
            continue
        rec_chain, seq = record.get("chain"), record.get("seq")
        if not isinstance(rec_chain, str) or not isinstance(seq, int) or seq < 1:
            continue
        if chain is not None and rec_chain != chain:
            continue
        data = found.get(rec_chain)
        if data is None:
            data = found[rec_chain] = ChainRecords(rec_chain)
        leaf = merkle.leaf_hash(line)
        before = data.leaves.put(seq - 1, leaf)
        if before is not None:
            if before != leaf:
                raise CannotProve(
                    f"{path}:{lineno}: conflicting records at seq {seq} of chain {rec_chain}"
                )
            continue
        _note_record(data, record, seq, line, want_seq, f"{path}:{lineno}")
    if chain is not None:
        if chain not in found:
            raise ProveUsage(f"no record of chain {chain} in the files given")
        return found[chain]
    for data in found.values():
        if data.tree_origin == origin:
            return data
    raise ProveUsage(f"no chain with origin {origin!a} in the files given")


def _note_record(
    data: ChainRecords, record: dict[str, Any], seq: int, line: bytes, want_seq: int | None,
    where: str,
) -> None:
    if seq == want_seq:
        data.wanted_line = line.decode("utf-8", "surrogateescape")
    event = record.get("event")
    if event == "audit.chain" and isinstance(record.get("origin"), str):
        data.origin = record["origin"]
    elif event == "audit.checkpoint" and isinstance(record.get("note"), str):
        signed = parse_signed_checkpoint(record["note"], f"{where}: note")
        data.signed.append(signed)
        if data.origin is None:
            data.origin = signed.checkpoint.origin


def _check_against(data: ChainRecords, signed: SignedCheckpoint, what: str) -> None:
    """The records reproduce `signed`'s tree: same origin, all leaves there, same root."""
    point = signed.checkpoint
    if point.origin != data.tree_origin:
        raise ProveUsage(f"{what} is for origin {point.origin!a}, but chain {data.chain} "
                         f"has origin {data.tree_origin!a}")
    missing = data.leaves.first_missing(point.tree_size)
    if missing is not None:
        raise CannotProve(f"{what} is at tree size {point.tree_size}, but the files given "
                          f"lack seq {missing + 1} of chain {data.chain}")
    root = merkle.subtree_root(data.leaves, point.tree_size)
    if root != point.root:
        raise CannotProve(f"{what} does not match the records: the root of the first "
                          f"{point.tree_size} records of chain {data.chain} is another "
                          f"(records rewritten, or a checkpoint of another log)")


def _newest(data: ChainRecords, at_least: int) -> SignedCheckpoint:
    covering = [s for s in data.signed if s.checkpoint.tree_size >= at_least]
    if not covering:
        newest = max((s.checkpoint.tree_size for s in data.signed), default=None)
        have = (f"the newest is at tree size {newest}" if newest is not None
                else "the chain has none in the files given")
        raise CannotProve(f"no signed checkpoint of chain {data.chain} covers tree size "
                          f"{at_least} yet ({have})")
    return max(covering, key=lambda s: s.checkpoint.tree_size)


def prove_inclusion(
    paths: Sequence[str], chain: str, seq: int, note_file: str | None = None
) -> dict[str, Any]:
    if not CHAIN_ID.fullmatch(chain):
        raise ProveUsage(f"--chain must be 32 lowercase hex digits, got {chain[:80]!a}")
    if seq < 1:
        raise ProveUsage("--seq must be 1 or more")
    given = read_note_file(note_file) if note_file else None
    data = collect(paths, chain=chain, want_seq=seq)
    if data.wanted_line is None:
        raise ProveUsage(f"seq {seq} of chain {chain} is not in the files given")
    if given is not None:
        signed, what = given, f"checkpoint {note_file}"
        if signed.checkpoint.tree_size < seq:
            raise CannotProve(f"{what} is at tree size {signed.checkpoint.tree_size}: it "
                              f"does not cover seq {seq}")
    else:
        signed = _newest(data, seq)
        what = f"the signed checkpoint at tree size {signed.checkpoint.tree_size}"
    _check_against(data, signed, what)
    size = signed.checkpoint.tree_size
    proof = merkle.inclusion_proof(data.leaves, seq - 1, size)
    return {
        "chain": chain,
        "seq": seq,
        "record": data.wanted_line,
        "tree_size": size,
        "proof": [p.hex() for p in proof],
        "checkpoint": signed.text,
    }


def prove_consistency(
    paths: Sequence[str], old_file: str, new_file: str | None = None
) -> dict[str, Any]:
    old = read_note_file(old_file)
    new = read_note_file(new_file) if new_file else None
    data = collect(paths, origin=old.checkpoint.origin)
    if new is None:
        new = _newest(data, old.checkpoint.tree_size)
        new_what = f"the signed checkpoint at tree size {new.checkpoint.tree_size}"
    else:
        new_what = f"checkpoint {new_file}"
        if new.checkpoint.tree_size < old.checkpoint.tree_size:
            raise ProveUsage(f"{new_what} (tree size {new.checkpoint.tree_size}) is older than "
                             f"{old_file} (tree size {old.checkpoint.tree_size})")
    _check_against(data, old, f"checkpoint {old_file}")
    _check_against(data, new, new_what)
    proof = merkle.consistency_proof(
        data.leaves, old.checkpoint.tree_size, new.checkpoint.tree_size
    )
    return {"chain": data.chain, "old": old.text, "new": new.text,
            "proof": [p.hex() for p in proof]}
