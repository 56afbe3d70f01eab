"""One chain's Merkle tree as the writer keeps it, and the checkpoint fields it signs.

The writer adds every record line it writes (`add`), and at a checkpoint asks for the
checkpoint record's tree fields (`checkpoint_fields`): `chain`, `tree_size` (the records
before the checkpoint), `root` (hex) and, with a signing key, `note` (a C2SP tlog-checkpoint
signed note). The state (`state`) is a few hundred bytes at any chain length, so the writer
saves it and resumes at start without re-reading the chain.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gateway.audit import checkpoint, merkle

if TYPE_CHECKING:  # cryptography is loaded only when there is a key to sign with
    from gateway.audit import note

DEFAULT_ORIGIN_PREFIX = "chroma-sync-gateway/"
CHAIN_ID = re.compile(r"[0-9a-f]{32}")


def new_chain_id() -> str:
    """32 lowercase hex digits: 128 random bits."""
    import secrets  # here: the auditors' tools import this module, and never make a chain

    return secrets.token_hex(16)


def default_origin(chain: str) -> str:
    return DEFAULT_ORIGIN_PREFIX + chain


class ChainTree:
    """The tree over one chain's record lines, with the origin its checkpoints carry."""

    __slots__ = ("chain", "origin", "tree")

    def __init__(self, chain: str, origin: str, tree: merkle.Tree | None = None) -> None:
        self.chain = chain
        self.origin = origin
        self.tree = tree if tree is not None else merkle.Tree()

    def add(self, line: bytes) -> None:
        """Add a record's line (its trailing newline, if any, is not hashed)."""
        self.tree.append(line[:-1] if line.endswith(b"\n") else line)

    def signed_note(self, signer: note.Signer) -> str:
        """The signed checkpoint of the tree as it is now."""
        from gateway.audit import note

        text = checkpoint.encode(self.origin, self.tree.size, self.tree.root())
        return note.sign(text, [signer])

    def checkpoint_fields(self, signer: note.Signer | None) -> dict[str, Any]:
        """The tree fields of the next record, an `audit.checkpoint` (seq = size + 1)."""
        fields: dict[str, Any] = {
            "chain": self.chain,
            "tree_size": self.tree.size,
            "root": self.tree.root().hex(),
        }
        if signer is not None:
            fields["note"] = self.signed_note(signer)
        return fields

    def state(self) -> dict[str, Any]:
        return {"chain": self.chain, "origin": self.origin, "tree": self.tree.state()}

    @classmethod
    def from_state(cls, state: object) -> ChainTree:
        """Raises ValueError on a state that is not one `state()` wrote."""
        if not isinstance(state, dict):
            raise ValueError("chain state: not an object")
        chain, origin = state.get("chain"), state.get("origin")
        if not isinstance(chain, str) or not CHAIN_ID.fullmatch(chain):
            raise ValueError("chain state: no chain id")
        if not isinstance(origin, str) or not origin:
            raise ValueError("chain state: no origin")
        return cls(chain, origin, merkle.Tree.from_state(state.get("tree")))
