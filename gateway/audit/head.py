"""Where the audit chain stands (the last record's `seq` and `hash`), and sealing onto it.

Records are sealed (`seq`, `prev`, `hash`, `mac`: see `gateway.audit.chain`) a batch at a time,
with an `audit.checkpoint` after every `audit.checkpoint_every` records. With a chain keeper
(`gateway.audit.signed_chain`) each body gets its `chain` (a checkpoint its Merkle `tree_size`,
`root` and signed `note`) before sealing, and each line goes into the chain's tree after. A
batch that can't be written is unsealed by restoring the head (and the tree) saved before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.audit import chain as audit_chain
from gateway.audit.timestamps import utc_timestamp

if TYPE_CHECKING:
    from gateway.audit.signed_chain import ChainKeeper, Snapshot

Saved = tuple[int, str, int, "Snapshot"]


def checkpoint_body() -> dict[str, Any]:
    """An `audit.checkpoint` record; sealing adds the head it names."""
    return {"ts": utc_timestamp(), "event": "audit.checkpoint"}


class ChainHead:
    """The last sealed record's `seq` and `hash`, and the records since the last checkpoint."""

    def __init__(self, checkpoint_every: int, keeper: ChainKeeper | None = None) -> None:
        self.seq = 0
        self.head = audit_chain.GENESIS
        self.since_checkpoint = 0
        self._every = checkpoint_every
        self.keeper = keeper

    def continue_from(self, seq: int, head: str) -> None:
        """Go on from a record already in the file (found at start)."""
        self.seq, self.head = seq, head

    def saved(self) -> Saved:
        tree = self.keeper.snapshot() if self.keeper is not None else None
        return self.seq, self.head, self.since_checkpoint, tree

    def restore(self, saved: Saved) -> None:
        """Unseal what was sealed since `saved()`: it never reached the file."""
        self.seq, self.head, self.since_checkpoint, tree = saved
        if self.keeper is not None:
            self.keeper.restore(tree)

    def seal_batch(
        self, bodies: list[dict[str, Any]], mac_key: bytes | None
    ) -> tuple[bytes, list[dict[str, Any]]]:
        """The batch's lines (one `write`) and its records, checkpoints added where due."""
        lines: list[bytes] = []
        sealed: list[dict[str, Any]] = []
        every = self._every
        if self.keeper is not None and self.keeper.key_changed():
            # A new signing key (or none any more): the chain says so before it is used.
            bodies = [self.keeper.opened(utc_timestamp()), *bodies]
        for body in bodies:
            record, line = self.seal(body, mac_key)
            lines.append(line)
            sealed.append(record)
            if record["event"] == "audit.checkpoint":
                self.since_checkpoint = 0
            else:
                self.since_checkpoint += 1
                if self.since_checkpoint >= every:
                    record, line = self.seal(checkpoint_body(), mac_key)
                    lines.append(line)
                    sealed.append(record)
                    self.since_checkpoint = 0
        return b"".join(lines), sealed

    def seal(self, body: dict[str, Any], mac_key: bytes | None) -> tuple[dict[str, Any], bytes]:
        if body.get("event") == "audit.checkpoint":
            body = {**body, "head_seq": self.seq, "head_hash": self.head}
        keeper = self.keeper
        if keeper is not None:
            body = keeper.stamp(body)
        record, line = audit_chain.seal(body, seq=self.seq + 1, prev=self.head, mac_key=mac_key)
        if keeper is not None:
            keeper.add(line)
        self.seq = record["seq"]
        self.head = record["hash"]
        return record, line
