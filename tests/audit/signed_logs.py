"""Build 0.3 audit logs (chains, Merkle checkpoints, signed notes) the way the writer does.

Sealing, the tree and the notes come from the gateway's own modules (`chain`, `chain_tree`);
what these helpers add is the order of records, and tampering: `reseal` rewrites a chain as
someone holding the HMAC key but not the signing key would.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.audit import chain as audit_chain
from gateway.audit import note
from gateway.audit.chain_tree import ChainTree, default_origin, new_chain_id

MAC_KEY = b"auditors-key-0123456789abcdef0123456789"


def cancel_body(i: int) -> dict[str, Any]:
    return {
        "ts": f"2025-03-01T12:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
        "event": "cancel.result",
        "request_id": f"req-{i:06d}",
        "invocation_id": f"inv-{i:06d}",
        "team": "billing" if i % 3 else "search",
        "key_id": "k1",
        "client": "127.0.0.1",
        "outcome": "cancelled",
        "status": 200,
        "upstream_status": 200,
        "error": None,
        "duration_ms": round(i * 1.25, 3),
    }


class ChainBuilder:
    """Appends sealed records to one chain, as the writer would."""

    def __init__(
        self,
        *,
        signer: note.Signer | None,
        chain: str | None = None,
        origin: str | None = None,
        mac_key: bytes | None = MAC_KEY,
        instance: str = "pod-a",
        previous: dict[str, Any] | None = None,
    ) -> None:
        self.signer = signer
        self.mac_key = mac_key
        self.chain = chain or new_chain_id()
        self.tree = ChainTree(self.chain, origin or default_origin(self.chain))
        self.lines: list[bytes] = []
        self.records: list[dict[str, Any]] = []
        self.instance = instance
        self.add({
            "ts": "2025-03-01T12:00:00.000Z", "event": "audit.chain", "instance": instance,
            "origin": self.tree.origin, "version": "0.3.0",
            "public_key": signer.verifier.encoded if signer else None, "previous": previous,
        })
        self.opened()

    @property
    def head(self) -> tuple[int, str]:
        return len(self.records), self.records[-1]["hash"] if self.records else audit_chain.GENESIS

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        seq, prev = self.head
        record, line = audit_chain.seal({**body, "chain": self.chain}, seq=seq + 1, prev=prev,
                                        mac_key=self.mac_key)
        self.records.append(record)
        self.lines.append(line)
        self.tree.add(line)
        return record

    def opened(self) -> None:
        self.add({"ts": "2025-03-01T12:00:00.001Z", "event": "audit.opened",
                  "instance": self.instance, "version": "0.3.0",
                  "public_key": self.signer.verifier.encoded if self.signer else None})

    def checkpoint(self) -> dict[str, Any]:
        seq, head = self.head
        return self.add({"ts": "2025-03-01T12:00:01.000Z", "event": "audit.checkpoint",
                         "head_seq": seq, "head_hash": head,
                         **self.tree.checkpoint_fields(self.signer)})

    def cancels(self, n: int, *, checkpoint_every: int | None = None) -> None:
        for i in range(n):
            self.add(cancel_body(len(self.records) + i))
            if checkpoint_every and (i + 1) % checkpoint_every == 0:
                self.checkpoint()

    def notes(self) -> list[str]:
        return [r["note"] for r in self.records if "note" in r]

    def write(self, path: Path) -> Path:
        path.write_bytes(b"".join(self.lines))
        return path


def reseal(
    records: Sequence[dict[str, Any]], *, mac_key: bytes | None, fix_roots: bool
) -> list[bytes]:
    """Re-seal every record (seq, prev, hash, mac) after an edit, as the HMAC key's holder can.

    Checkpoint records get the `head_seq` and `head_hash` of the rewritten chain (what fooled
    0.2), and with `fix_roots` its `tree_size` and `root` too; their `note` stays as signed (a
    forger has no signing key).
    """
    lines: list[bytes] = []
    prev = audit_chain.GENESIS
    tree: ChainTree | None = None
    for seq, record in enumerate(records, start=1):
        body = {k: v for k, v in record.items() if k not in ("seq", "prev", "hash", "mac")}
        if tree is None:
            tree = ChainTree(body["chain"], "unused")
        if body["event"] == "audit.checkpoint":
            body.update(head_seq=seq - 1, head_hash=prev)
            if fix_roots:
                body.update(tree_size=tree.tree.size, root=tree.tree.root().hex())
        sealed, line = audit_chain.seal(body, seq=seq, prev=prev, mac_key=mac_key)
        lines.append(line)
        tree.add(line)
        prev = sealed["hash"]
    return lines


def parsed(lines: Sequence[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]
