"""Audit files of 0.3 chains written here, record by record, as the writer lays them out.

Records are sealed with `gateway.audit.chain` (the writer's own code); checkpoints carry
`chain`, `tree_size`, the RFC 9162 `root` (`gateway.audit.merkle`) and a stand-in `note` (the
archive copies notes, it does not check them; without --public-key neither does verify).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from gateway.audit import chain as audit_chain
from gateway.audit import merkle


class ChainFiles:
    """One chain's files at `path`: `add` records, `checkpoint`, `rotate` like the writer."""

    def __init__(self, path: Path, chain: str | None = None) -> None:
        self.path = path
        self.chain = chain or secrets.token_hex(16)
        self.seq = 0
        self.head = audit_chain.GENESIS
        self.lines: list[bytes] = []  # every line written, in order
        self.tree = merkle.Tree()
        self._rotated = 0
        self._append({"ts": _ts(0), "event": "audit.chain", "instance": "pod-a",
                      "origin": f"chroma-sync-gateway/{self.chain}", "version": "0.3.0",
                      "public_key": None, "previous": None})

    def _append(self, body: dict[str, Any]) -> dict[str, Any]:
        record, line = audit_chain.seal({**body, "chain": self.chain}, seq=self.seq + 1,
                                        prev=self.head, mac_key=None)
        self.seq, self.head = record["seq"], record["hash"]
        with open(self.path, "ab") as handle:
            handle.write(line)
        self.lines.append(line)
        self.tree.append(line[:-1])
        return record

    def add(self, count: int = 1, **fields: Any) -> None:
        for _ in range(count):
            n = self.seq + 1
            self._append({"ts": _ts(n), "event": "cancel.result", "request_id": f"r{n}",
                          "invocation_id": f"inv-{n}", "team": "billing", "key_id": "k1",
                          "client": "127.0.0.1", "outcome": "cancelled", "status": 200,
                          "upstream_status": 200, "error": None, "duration_ms": 1.5, **fields})

    def checkpoint(self, signed: bool = True) -> int:
        size = self.seq
        body: dict[str, Any] = {"ts": _ts(size + 1), "event": "audit.checkpoint",
                                "head_seq": self.seq, "head_hash": self.head,
                                "tree_size": size, "root": self.tree.root().hex()}
        if signed:
            body["note"] = f"chroma-sync-gateway/{self.chain}\n{size}\nroot=\n\n— key sig\n"
        return int(self._append(body)["seq"])

    def rotate(self) -> None:
        self._rotated += 1
        os.rename(self.path, f"{self.path}.{self._rotated:06d}")

    def text(self, first: int, last: int) -> bytes:
        return b"".join(self.lines[first - 1 : last])


def _ts(n: int) -> str:
    return f"2026-11-28T12:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}Z"
