"""`audit check-proof`: check a proof from `audit prove` with nothing but a verifier key.

An inclusion proof holds the record's line, the RFC 9162 path and the signed checkpoint. It
proves the record when: the checkpoint's signature verifies with a key given, its tree size is
the proof's, the record's own `chain` and `seq` are the proof's, and the path leads from the
record's leaf hash (leaf index `seq - 1`) to the checkpoint's root.

A consistency proof holds two signed checkpoints and the path between them. It proves that the
newer tree extends the older one (nothing signed before was changed or removed) when both
checkpoints verify, have the same origin, and the path leads to both roots.

`docs/check_proof.py` does the same with the standard library and `cryptography` only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from gateway.audit import checkpoint as cp
from gateway.audit import merkle, note

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_PROOF_BYTES = 64 * 1024 * 1024


class ProofFileError(ValueError):
    """The file is not a proof (exit 2)."""


class ProofFailed(Exception):
    """The proof does not prove what it claims (exit 1)."""


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_PROOF_BYTES + 1)
    except OSError as exc:
        raise ProofFileError(f"{path}: can't read ({exc.strerror})") from None
    if len(raw) > _MAX_PROOF_BYTES:
        raise ProofFileError(f"{path}: not a proof (over {_MAX_PROOF_BYTES} bytes)")
    try:
        doc: Any = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProofFileError(f"{path}: not a proof (not JSON)") from None
    if not isinstance(doc, dict):
        raise ProofFileError(f"{path}: not a proof (not a JSON object)")
    return doc


def _path(doc: dict[str, Any]) -> list[bytes]:
    proof = doc.get("proof")
    if not isinstance(proof, list) or not all(
        isinstance(p, str) and _HEX64.fullmatch(p) for p in proof
    ):
        raise ProofFileError("not a proof: 'proof' is not a list of 64-hex-digit hashes")
    return [bytes.fromhex(p) for p in proof]


def _open(text: object, verifiers: Sequence[note.Verifier], what: str) -> tuple[
        cp.Checkpoint, str]:
    """The verified checkpoint in `text`, and the names of the keys that signed it."""
    if not isinstance(text, str):
        raise ProofFileError(f"not a proof: '{what}' is not a signed note")
    try:
        opened = note.open_note(text, verifiers)
    except note.UnverifiedNote:
        raise ProofFailed(f"the {what} checkpoint is not signed by any key given") from None
    except note.NoteError as exc:
        raise ProofFailed(f"the {what} checkpoint does not verify: {exc}") from None
    try:
        parsed = cp.parse(opened.text)
    except cp.CheckpointError as exc:
        raise ProofFailed(f"the {what} note is signed but not a checkpoint: {exc}") from None
    return parsed, ", ".join(dict.fromkeys(s.name for s in opened.sigs))


def check(doc: dict[str, Any], verifiers: Sequence[note.Verifier]) -> str:
    """The `ok:` line for a proof that holds; ProofFailed or ProofFileError otherwise."""
    if "record" in doc:
        return _check_inclusion(doc, verifiers)
    if "old" in doc and "new" in doc:
        return _check_consistency(doc, verifiers)
    raise ProofFileError("not a proof: neither an inclusion proof ('record') nor a "
                         "consistency proof ('old', 'new')")


def _int(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofFileError(f"not a proof: {name!r} is not an integer >= 0")
    return value


def _check_inclusion(doc: dict[str, Any], verifiers: Sequence[note.Verifier]) -> str:
    chain, line = doc.get("chain"), doc.get("record")
    seq, size = _int(doc, "seq"), _int(doc, "tree_size")
    if not isinstance(chain, str) or not isinstance(line, str):
        raise ProofFileError("not a proof: 'chain' and 'record' must be strings")
    path = _path(doc)
    point, signers = _open(doc.get("checkpoint"), verifiers, "signed")
    if point.tree_size != size:
        raise ProofFailed(f"the proof says tree size {size}, its checkpoint {point.tree_size}")
    try:
        record: Any = json.loads(line)
    except (ValueError, RecursionError):
        raise ProofFailed("the record is not a JSON object") from None
    if not isinstance(record, dict) or record.get("seq") != seq or record.get("chain") != chain:
        raise ProofFailed(f"the record is not seq {seq} of chain {chain!a} (its own "
                          f"'seq' and 'chain' say otherwise)")
    if not 1 <= seq <= size:
        raise ProofFailed(f"seq {seq} is not in a tree of size {size}")
    leaf = merkle.leaf_hash(line.encode("utf-8", "surrogateescape"))
    try:
        merkle.verify_inclusion(seq - 1, size, leaf, path, point.root)
    except merkle.ProofError as exc:
        raise ProofFailed(f"the record is not in the signed tree: {exc}") from None
    return (f"ok: seq {seq} of chain {chain} is in the tree of size {size} of "
            f"{point.origin}, signed by {signers}")


def _check_consistency(doc: dict[str, Any], verifiers: Sequence[note.Verifier]) -> str:
    path = _path(doc)
    old, old_signers = _open(doc.get("old"), verifiers, "old")
    new, new_signers = _open(doc.get("new"), verifiers, "new")
    if old.origin != new.origin:
        raise ProofFailed(f"the two checkpoints are of different logs ({old.origin!a} and "
                          f"{new.origin!a})")
    if old.tree_size > new.tree_size:
        raise ProofFailed(f"the old checkpoint (tree size {old.tree_size}) is newer than the "
                          f"new one ({new.tree_size})")
    try:
        merkle.verify_consistency(old.tree_size, new.tree_size, old.root, new.root, path)
    except merkle.ProofError as exc:
        raise ProofFailed(f"the new tree does not extend the old one: {exc}") from None
    signers = ", ".join(dict.fromkeys([*old_signers.split(", "), *new_signers.split(", ")]))
    return (f"ok: the tree of size {new.tree_size} of {new.origin} extends the tree of size "
            f"{old.tree_size}, signed by {signers}")
