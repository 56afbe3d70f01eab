"""What `audit verify` checks of a chain beyond the hash chain: its Merkle tree and signed notes.

Fed the records of one chain in seq order (after the hash-chain checks passed for each), it:

- recomputes the RFC 9162 tree over the record lines and checks every `audit.checkpoint`
  record's `tree_size` (its seq - 1) and `root` (only from seq 1: a retained suffix has no
  tree to start from, and says so);
- with verifier keys, opens every `note`: it must verify, and its origin, tree size and root
  must be the chain's origin and the record's own `tree_size` and `root`;
- checks the signed checkpoints given with `--checkpoint NOTE_FILE`: the chain with that origin
  must hold a tree of that size with that root, and must not end before it (a cut tail).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.audit import checkpoint as cp
from gateway.audit import merkle, note
from gateway.audit.chain_tree import CHAIN_ID, default_origin

CHAIN_EVENT = "audit.chain"
CHECKPOINT_EVENT = "audit.checkpoint"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Fields:
    """The fields of one record this check needs (parsed and type-checked by the caller)."""

    seq: int
    event: str
    leaf: bytes
    chain: str | None = None
    origin: str | None = None
    tree_size: int | None = None
    root: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Anchor:
    """A signed checkpoint kept outside the log (`--checkpoint NOTE_FILE`), verified."""

    name: str
    checkpoint: cp.Checkpoint
    signers: str
    """The names of the keys whose signatures verified."""


def field_reason(record: dict[str, object]) -> str | None:
    """The 0.3 fields' types: `chain`, and a checkpoint's `tree_size`, `root`, `note`."""
    if "chain" not in record:
        return None
    chain = record["chain"]
    if not isinstance(chain, str) or not CHAIN_ID.fullmatch(chain):
        return "wrongly typed field 'chain': expected 32 lowercase hex digits"
    if record.get("event") == CHAIN_EVENT:
        origin = record.get("origin")
        if not isinstance(origin, str) or not origin:
            return "wrongly typed field 'origin' in an audit.chain record: expected a string"
    if record.get("event") != CHECKPOINT_EVENT:
        return None
    for name in ("tree_size", "root"):
        if name not in record:
            return f"missing field {name!r} in an audit.checkpoint record"
    size = record["tree_size"]
    if not isinstance(size, int) or isinstance(size, bool):
        return "wrongly typed field 'tree_size' in an audit.checkpoint record: expected an integer"
    root = record["root"]
    if not isinstance(root, str) or not _HEX64.fullmatch(root):
        return ("wrongly typed field 'root' in an audit.checkpoint record: expected 64 lowercase "
                "hex digits")
    if "note" in record and not isinstance(record["note"], str):
        return "wrongly typed field 'note' in an audit.checkpoint record: expected a string"
    return None


class TreeCheck:
    """The Merkle and note checks of one chain, record by record."""

    def __init__(
        self, verifiers: Sequence[note.Verifier] = (), anchors: Sequence[Anchor] = ()
    ) -> None:
        self._verifiers = tuple(verifiers)
        self._anchors = tuple(anchors)
        self._tree: merkle.Tree | None = None
        self._started = False
        self.chain: str | None = None
        self.origin: str | None = None
        self.notes_unchecked = False
        """Notes were present but no verifier key was given."""
        self.roots_unchecked = False
        """The chain does not start at seq 1 here: roots could not be recomputed."""
        self.signed: tuple[int, str] | None = None
        """The newest verified signature: (tree size, key names)."""
        self._roots_seen: dict[int, str] = {}  # tree sizes of the anchors -> root (hex)
        self._anchor_sizes = frozenset(a.checkpoint.tree_size for a in self._anchors)

    def record(self, fields: Fields) -> str | None:
        """Check one record; the reason it is bad, or None."""
        if not self._started:
            self._started = True
            self.chain = fields.chain
            if fields.seq == 1:
                self._tree = merkle.Tree()
            else:
                self.roots_unchecked = fields.chain is not None
        if fields.chain != self.chain:
            if self.chain is None:
                return ("a record with 'chain' in a log of an earlier version (without "
                        "'chain'): files of two logs spliced together")
            if fields.chain is None:
                return f"missing field 'chain' (the chain is {self.chain})"
            if fields.seq == 1 and fields.event == CHAIN_EVENT:
                return (f"a new chain ({fields.chain}) begins here after chain {self.chain}: "
                        f"give each chain's files on their own")
            return (f"record of chain {fields.chain} within chain {self.chain}: records of two "
                    f"chains spliced together")
        if fields.chain is None:
            return None  # an earlier version's record: the hash chain is all there is
        if fields.event == CHAIN_EVENT and fields.seq == 1:
            self.origin = fields.origin
        if self._tree is None and fields.seq == 1:
            self._tree = merkle.Tree()
        reason = self._checkpoint(fields) if fields.event == CHECKPOINT_EVENT else None
        if reason is None and self._tree is not None:
            self._tree.append_hash(fields.leaf)
            self._remember_root()
        return reason

    def plain(self, leaves: Sequence[bytes]) -> None:
        """What `record` does for records of this chain that are neither `audit.chain` nor
        `audit.checkpoint`, by their leaf hashes, once `record` has seen the chain's first."""
        tree = self._tree
        if tree is None:
            return
        if not self._anchor_sizes:
            tree.extend_hashes(leaves)
            return
        for leaf in leaves:
            tree.append_hash(leaf)
            self._remember_root()

    def _remember_root(self) -> None:
        assert self._tree is not None
        size = self._tree.size
        if size in self._anchor_sizes:
            self._roots_seen[size] = self._tree.root().hex()

    def _checkpoint(self, fields: Fields) -> str | None:
        size, root = fields.tree_size, fields.root
        assert size is not None and root is not None  # field_reason saw to it
        if size != fields.seq - 1:
            return (f"checkpoint record's tree_size is {size}, but it follows seq "
                    f"{fields.seq - 1}: its tree_size must be {fields.seq - 1}")
        if self._tree is not None:
            if self._tree.root().hex() != root:
                return (f"checkpoint record's root is not the Merkle root of the {size} records "
                        f"before it (a record was rewritten and the chain re-sealed)")
        else:
            self._roots_seen.setdefault(size, root)  # unrecomputable: take the record's word
        if fields.note is None:
            return None
        if not self._verifiers:
            self.notes_unchecked = True
            return None
        return self._note(fields.note, size, root)

    def _note(self, text: str, size: int, root: str) -> str | None:
        try:
            opened = note.open_note(text, self._verifiers)
        except note.UnverifiedNote:
            return "note is not signed by any --public-key given (signed by another key)"
        except note.NoteError as exc:
            return f"note does not verify with the --public-key given: {exc}"
        try:
            point = cp.parse(opened.text)
        except cp.CheckpointError as exc:
            return f"note is signed but not a checkpoint: {exc}"
        origin = self.origin
        if origin is not None and point.origin != origin:
            return (f"note's origin is {point.origin!a}, but the chain's is "
                    f"{origin!a}")
        if self.origin is None:
            self.origin = point.origin  # a suffix: the first signed origin is the chain's
        if point.tree_size != size:
            return f"note's tree size is {point.tree_size}, but its record's is {size}"
        if point.root.hex() != root:
            return "note's root is not its record's root"
        self.signed = (size, ", ".join(dict.fromkeys(s.name for s in opened.sigs)))
        return None

    def finish(self, head_seq: int, anchors: Sequence[Anchor] | None = None) -> str | None:
        """After the last record: the anchors given (`anchors`: those of them the caller chose
        once the chain's origin was known) must be trees of this chain."""
        origin = self.origin or (default_origin(self.chain) if self.chain else None)
        for anchor in self._anchors if anchors is None else anchors:
            point = anchor.checkpoint
            if origin is None:
                return (f"signed checkpoint {anchor.name}: the records given have no chain (a "
                        f"log of an earlier version, or none), so no tree to check it against")
            if point.origin != origin:
                return (f"signed checkpoint {anchor.name} is for origin {point.origin!a}, "
                        f"not this chain's ({origin!a})")
            if point.tree_size > head_seq:
                return (f"truncated: signed checkpoint at tree size {point.tree_size}, records "
                        f"end at seq {head_seq}")
            if point.tree_size == 0:
                continue
            seen = self._roots_seen.get(point.tree_size)
            if seen is None:
                self.roots_unchecked = True
                continue
            if seen != point.root.hex():
                return (f"signed checkpoint {anchor.name} at tree size {point.tree_size} does not "
                        f"match the records: their root is another (records rewritten)")
            if self.signed is None or self.signed[0] < point.tree_size:
                self.signed = (point.tree_size, anchor.signers)
        return None
