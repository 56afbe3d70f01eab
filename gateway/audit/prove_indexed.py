"""`audit prove --index FILE`: the same proofs as `gateway.audit.prove`, through a proof index.

The index (`gateway.audit.proof_index`) is made when missing, brought up to date when the files
grew, and made anew when they changed otherwise or it is damaged; a file that is not an index is
never overwritten, nor an index of another chain. With a fresh index a proof reads the index's
header, O(log n) hashes, the record's line and the checkpoint's record line.

The index is a cache, never a source of trust. Before a proof is printed:

- the record is read from its file at the place the index names: it must be the record of that
  chain and seq, and its line must hash to the index's leaf;
- the checkpoint is read from its record in the files (or from the given note file) and parsed
  as `audit prove` does without an index;
- the root the index gives for the checkpoint's tree size must be the checkpoint's root, and the
  proof must lead from the record's leaf (or from the old tree) to that root
  (`merkle.verify_inclusion`, `merkle.verify_consistency`).

When a check fails on an index that was not just made, the index is made anew from the files and
the proof computed again: a damaged index costs time, never a wrong proof. Only checks that fail
on an index made from the files just now are reported, with the messages of `audit prove`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from gateway.audit import cri, merkle
from gateway.audit import index_sources as sources
from gateway.audit.chain_tree import CHAIN_ID, default_origin
from gateway.audit.proof_index import IndexDamaged, NotAnIndex, ProofIndex
from gateway.audit.prove import (
    CannotProve,
    ProveUsage,
    SignedCheckpoint,
    parse_signed_checkpoint,
    read_note_file,
)

Warn = Callable[[str], None]
_MAX_LINE = 16 * 1024 * 1024 + 1  # as gateway.audit.inputs reads lines


class _Doubt(Exception):
    """The index disagrees with the files: make it anew (or, if just made, the files moved)."""


def prove_inclusion(paths: Sequence[str], chain: str, seq: int, note_file: str | None,
                    index_path: str, warn: Warn) -> dict[str, Any]:
    if not CHAIN_ID.fullmatch(chain):
        raise ProveUsage(f"--chain must be 32 lowercase hex digits, got {chain[:80]!a}")
    if seq < 1:
        raise ProveUsage("--seq must be 1 or more")
    given = read_note_file(note_file) if note_file else None
    files = index_inputs(paths, index_path)
    index, fresh = ready(index_path, files, chain, None, warn)
    try:
        return _inclusion(index, chain, seq, given, note_file, fresh)
    except _Doubt as doubt:
        index.close()
        warn(f"--index {index_path}: {doubt}: made it anew")
        index = rebuild(index_path, files, chain, None)
        return _inclusion(index, chain, seq, given, note_file, True)
    finally:
        index.close()


def prove_consistency(paths: Sequence[str], old_file: str, new_file: str | None,
                      index_path: str, warn: Warn) -> dict[str, Any]:
    old = read_note_file(old_file)
    new = read_note_file(new_file) if new_file else None
    files = index_inputs(paths, index_path)
    origin = old.checkpoint.origin
    index, fresh = ready(index_path, files, None, origin, warn)
    try:
        return _consistency(index, old, old_file, new, new_file, fresh)
    except _Doubt as doubt:
        index.close()
        warn(f"--index {index_path}: {doubt}: made it anew")
        index = rebuild(index_path, files, None, origin)
        return _consistency(index, old, old_file, new, new_file, True)
    finally:
        index.close()


# --- the index: found fresh, brought up to date, or made --------------------------------------


def index_inputs(paths: Sequence[str], index_path: str) -> list[str]:
    """The record files the arguments name (not the index itself, if it is among them)."""
    from gateway.audit import inputs
    from gateway.audit.archive import location

    if any(p == "-" or location.is_archive_url(p) for p in paths):
        raise ProveUsage("--index works on files and folders, not on - or archive URLs")
    try:
        items = inputs.expand(paths)
    except inputs.InputError as exc:
        raise ProveUsage(str(exc)) from None
    try:
        index_inode = os.stat(index_path)
        skip = (index_inode.st_dev, index_inode.st_ino)
    except OSError:
        skip = None
    found = []
    for item in items:
        if item.note:
            continue  # an archive's checkpoint object: the chain's records carry the same
        try:
            st = os.stat(item.name)
        except OSError as exc:
            raise ProveUsage(f"{item.name}: can't read ({exc.strerror})") from None
        if (st.st_dev, st.st_ino) != skip:
            found.append(item.name)
    return found


def ready(path: str, files: list[str], chain: str | None, origin: str | None,
          warn: Warn) -> tuple[ProofIndex, bool]:
    """The index at `path`, up to date with `files`; True when it was made just now."""
    try:
        index = ProofIndex(path)
    except FileNotFoundError:
        return rebuild(path, files, chain, origin), True
    except NotAnIndex:
        raise ProveUsage(f"--index {path}: not a proof index (such a file is never "
                         f"overwritten: give another path)") from None
    except IndexDamaged as exc:
        warn(f"--index {path}: damaged ({exc}): made it anew")
        return rebuild(path, files, chain, origin), True
    except OSError as exc:
        raise ProveUsage(f"--index {path}: can't read ({exc.strerror})") from None
    try:
        _same_chain(index, path, chain, origin)
        if _fresh(index, files):
            return index, False
    except BaseException:
        index.close()
        raise
    from gateway.audit import index_build

    try:
        content = index_build.update(index.content(), files)
    except (index_build.Rebuild, IndexDamaged):
        return rebuild(path, files, index.chain, None), True
    finally:
        index.close()
    _write(path, content)
    return _open_written(path), False


def _same_chain(index: ProofIndex, path: str, chain: str | None, origin: str | None) -> None:
    mine = index.origin or default_origin(index.chain)
    if chain is not None and index.chain != chain:
        raise ProveUsage(f"--index {path} is the index of chain {index.chain}, not of "
                         f"{chain}: give another --index")
    if origin is not None and mine != origin:
        raise ProveUsage(f"--index {path} is the index of chain {index.chain} (origin "
                         f"{mine!a}), not of origin {origin!a}: give another --index")


def _fresh(index: ProofIndex, files: list[str]) -> bool:
    if len(files) != len(index.files):
        return False
    return all(sources.compare(known, path)[0] == sources.SAME and known.path == path
               for known, path in zip(index.files, files, strict=True))


def rebuild(path: str, files: list[str], chain: str | None, origin: str | None) -> ProofIndex:
    from gateway.audit import index_build

    _write(path, index_build.build(files, chain, origin))
    return _open_written(path)


def _write(path: str, content: Any) -> None:
    from gateway.audit import proof_index

    try:
        proof_index.write(path, content)
    except OSError as exc:
        raise ProveUsage(f"--index {path}: can't write ({exc.strerror})") from None


def _open_written(path: str) -> ProofIndex:
    try:
        return ProofIndex(path)
    except (OSError, NotAnIndex, IndexDamaged) as exc:
        raise CannotProve(f"--index {path}: changed while it was written ({exc})") from None


# --- proofs, checked ----------------------------------------------------------------------------


def _line_at(source: sources.SourceFile, offset: int, what: str) -> bytes:
    """The record line that starts at `offset` of `source` (the index says `what` is there)."""
    try:
        with sources.open_records(source) as stream:
            stream.seek(offset)
            raw = iter(lambda: stream.readline(_MAX_LINE), b"")
            _, line = next(cri.unwrap(raw), (0, b""))
    except (OSError, EOFError, ValueError) as exc:
        raise _Doubt(f"can't read {what} where it says ({exc})") from None
    if not line.endswith(b"\n"):
        raise _Doubt(f"no record line where it places {what}")
    return line[:-1]


def _record_at(index: ProofIndex, source: sources.SourceFile, offset: int,
               what: str) -> tuple[bytes, dict[str, Any]]:
    """The record of this chain at that place, if its line is the index's leaf for its seq."""
    line = _line_at(source, offset, what)
    try:
        record: Any = json.loads(line)
    except ValueError:
        record = None
    seq = record.get("seq") if isinstance(record, dict) else None
    if (not isinstance(record, dict) or record.get("chain") != index.chain
            or not isinstance(seq, int) or not 1 <= seq <= index.leaves
            or merkle.leaf_hash(line) != index.node(0, seq - 1)):
        raise _Doubt(f"what it places as {what} is not that record")
    return line, record


def _record(index: ProofIndex, seq: int) -> bytes:
    place = index.where(seq)
    if place is None:
        raise ProveUsage(f"seq {seq} of chain {index.chain} is not in the files given")
    line, record = _record_at(index, *place, f"seq {seq}")
    if record["seq"] != seq:
        raise _Doubt(f"what it places as seq {seq} is seq {record['seq']}")
    return line


def _newest(index: ProofIndex, at_least: int) -> SignedCheckpoint:
    entry = index.newest_checkpoint()
    if entry is None or entry[0] < at_least:
        have = (f"the newest is at tree size {entry[0]}" if entry is not None
                else "the chain has none in the files given")
        raise CannotProve(f"no signed checkpoint of chain {index.chain} covers tree size "
                          f"{at_least} yet ({have})")
    size, file_id, offset = entry
    what = f"the checkpoint at tree size {size}"
    _, record = _record_at(index, index.file(file_id), offset, what)
    text = record.get("note")
    if record.get("event") != "audit.checkpoint" or not isinstance(text, str):
        raise _Doubt(f"{what} is not a signed checkpoint record")
    signed = parse_signed_checkpoint(text, f"seq {record['seq']}: note")
    if signed.checkpoint.tree_size != size:
        raise _Doubt(f"{what} is at another tree size")
    return signed


def _check_against(index: ProofIndex, signed: SignedCheckpoint, what: str, fresh: bool) -> None:
    """As `prove` checks a checkpoint against the records, with the index's tree."""
    point = signed.checkpoint
    origin = index.origin or default_origin(index.chain)
    if point.origin != origin:
        raise ProveUsage(f"{what} is for origin {point.origin!a}, but chain {index.chain} "
                         f"has origin {origin!a}")
    if index.prefix < point.tree_size:
        raise CannotProve(f"{what} is at tree size {point.tree_size}, but the files given "
                          f"lack seq {index.prefix + 1} of chain {index.chain}")
    if index.root(point.tree_size) != point.root:
        if not fresh:
            raise _Doubt(f"its tree does not give the root of {what}")
        raise CannotProve(f"{what} does not match the records: the root of the first "
                          f"{point.tree_size} records of chain {index.chain} is another "
                          f"(records rewritten, or a checkpoint of another log)")


def _inclusion(index: ProofIndex, chain: str, seq: int, given: SignedCheckpoint | None,
               note_file: str | None, fresh: bool) -> dict[str, Any]:
    try:
        line = _record(index, seq)
        if given is not None:
            signed, what = given, f"checkpoint {note_file}"
            if signed.checkpoint.tree_size < seq:
                raise CannotProve(f"{what} is at tree size {signed.checkpoint.tree_size}: "
                                  f"it does not cover seq {seq}")
        else:
            signed = _newest(index, seq)
            what = f"the signed checkpoint at tree size {signed.checkpoint.tree_size}"
        _check_against(index, signed, what, fresh)
        size = signed.checkpoint.tree_size
        proof = merkle.inclusion_path(seq - 1, size, index.subtree)
        merkle.verify_inclusion(seq - 1, size, merkle.leaf_hash(line), proof,
                                signed.checkpoint.root)
    except (IndexDamaged, merkle.ProofError, _Doubt) as exc:
        _doubt(exc, fresh)
    return {
        "chain": chain,
        "seq": seq,
        "record": line.decode("utf-8", "surrogateescape"),
        "tree_size": size,
        "proof": [p.hex() for p in proof],
        "checkpoint": signed.text,
    }


def _consistency(index: ProofIndex, old: SignedCheckpoint, old_file: str,
                 new: SignedCheckpoint | None, new_file: str | None,
                 fresh: bool) -> dict[str, Any]:
    try:
        if new is None:
            new = _newest(index, old.checkpoint.tree_size)
            new_what = f"the signed checkpoint at tree size {new.checkpoint.tree_size}"
        else:
            new_what = f"checkpoint {new_file}"
            if new.checkpoint.tree_size < old.checkpoint.tree_size:
                raise ProveUsage(f"{new_what} (tree size {new.checkpoint.tree_size}) is older "
                                 f"than {old_file} (tree size {old.checkpoint.tree_size})")
        _check_against(index, old, f"checkpoint {old_file}", fresh)
        _check_against(index, new, new_what, fresh)
        m, n = old.checkpoint.tree_size, new.checkpoint.tree_size
        proof = merkle.consistency_path(m, n, index.subtree)
        merkle.verify_consistency(m, n, old.checkpoint.root, new.checkpoint.root, proof)
    except (IndexDamaged, merkle.ProofError, _Doubt) as exc:
        _doubt(exc, fresh)
    return {"chain": index.chain, "old": old.text, "new": new.text,
            "proof": [p.hex() for p in proof]}


def _doubt(exc: Exception, fresh: bool) -> NoReturn:
    if not fresh:
        raise _Doubt(str(exc) or type(exc).__name__) from None
    raise CannotProve(f"the files changed while the proof was made ({exc}): try again") from None
