"""What the signed, provable audit costs: the tree on the hot path, a signature, a proof.

    python -m bench.audit_tree [--records N]

Prints microseconds per record of sealing a record (the 0.2 hot path) and of adding its line
to the Merkle tree (what 0.3 adds per record), one Ed25519 signature of a checkpoint note,
opening (verifying) one, and, for a chain of N records (default 1,000,000): the root from the
leaf hashes, one inclusion proof and one consistency proof (time and size), and resuming the
writer's tree from its saved state. Best of 3 runs for the per-record figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from gateway.audit import chain as audit_chain
from gateway.audit import merkle, note
from gateway.audit.chain_tree import ChainTree, new_chain_id


def best_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def record_body(i: int) -> dict[str, object]:
    return {
        "ts": "2026-11-28T12:42:29.123Z", "event": "cancel.result", "request_id": f"r{i:08d}",
        "invocation_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "team": "billing",
        "key_id": "k_4f2a9c", "client": "10.1.2.3", "outcome": "cancelled", "status": 200,
        "upstream_status": 200, "error": None, "duration_ms": 12.345, "database": "db",
        "collection": "docs", "source_id": "5b1c6a52-2f0a-4e43-9b8a-2a8d0a1e3c44",
        "chain": "0123456789abcdef0123456789abcdef",
    }


def writer_seal_us(with_chain: bool, n: int = 20_000) -> float:
    """The writer's sealing of one-record batches, with or without the chain and its tree."""
    from gateway.audit.head import ChainHead
    from gateway.audit.signed_chain import ChainKeeper

    keeper = None
    if with_chain:
        keeper = ChainKeeper("/nonexistent/audit.jsonl", version="bench")
        keeper.plan([], None)
        keeper.begin(None, "t")
        keeper.opened("t")
    head = ChainHead(10**9, keeper)
    body = {k: v for k, v in record_body(1).items() if k != "chain"}

    def one() -> None:
        head.saved()
        _, sealed = head.seal_batch([body], b"k" * 32)
        if keeper is not None:
            keeper.committed(sealed, head.seq, head.head)

    return best_us(one, n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_tree")
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    n = args.records
    key = b"k" * 32

    state = {"seq": 0, "head": audit_chain.GENESIS}
    body = record_body(1)

    def seal() -> None:
        record, _ = audit_chain.seal(body, seq=state["seq"] + 1, prev=state["head"], mac_key=key)
        state["seq"] += 1
        state["head"] = record["hash"]

    _, line = audit_chain.seal(body, seq=1, prev=audit_chain.GENESIS, mac_key=key)
    tree = ChainTree(new_chain_id(), "chroma-sync-gateway/bench")
    print(f"record line: {len(line)} bytes")
    print(f"seal one record (0.2 hot path):        {best_us(seal, 50_000):8.2f} us")
    print(f"add its line to the Merkle tree (0.3):  {best_us(lambda: tree.add(line), 200_000):8.2f}"
          f" us")

    plain, chained = writer_seal_us(False), writer_seal_us(True)
    print(f"writer, one record a batch, 0.2 (no chain):  {plain:8.2f} us")
    print(f"writer, one record a batch, 0.3 (chain+tree): {chained:8.2f} us "
          f"(+{chained - plain:.2f})")

    signer = note.generate_key("audit.example/bench")
    verifier = signer.verifier
    signed = tree.signed_note(signer)
    print(f"sign one checkpoint note:               "
          f"{best_us(lambda: tree.signed_note(signer), 2000):8.1f} us")
    print(f"open (verify) one checkpoint note:      "
          f"{best_us(lambda: note.open_note(signed, [verifier]), 2000):8.1f} us")
    print(f"checkpoint fields, signed:              "
          f"{best_us(lambda: tree.checkpoint_fields(signer), 2000):8.1f} us")

    leaves = merkle.LeafHashes()
    big = merkle.Tree()
    started = time.perf_counter()
    for i in range(n):
        leaf = merkle.leaf_hash(i.to_bytes(8, "big") + line)
        leaves.append(leaf)
        big.append_hash(leaf)
    print(f"\n{n} leaves hashed and appended:  {time.perf_counter() - started:6.2f} s")
    started = time.perf_counter()
    root = merkle.subtree_root(leaves, n)
    print(f"root from the {n} leaf hashes:   {time.perf_counter() - started:6.2f} s")
    assert root == big.root()
    started = time.perf_counter()
    proof = merkle.inclusion_proof(leaves, n // 2, n)
    took = time.perf_counter() - started
    doc = {"proof": [p.hex() for p in proof]}
    print(f"inclusion proof of the middle record:  {took:6.2f} s, {len(proof)} hashes, "
          f"{len(json.dumps(doc))} bytes of JSON path")
    started = time.perf_counter()
    merkle.verify_inclusion(n // 2, n, leaves[n // 2], proof, root)
    print(f"checking it:                           {(time.perf_counter() - started) * 1e6:6.0f} us")
    started = time.perf_counter()
    cproof = merkle.consistency_proof(leaves, n - 1000, n)
    print(f"consistency proof (size -1000 to size): {time.perf_counter() - started:6.2f} s, "
          f"{len(cproof)} hashes")
    saved = json.dumps(ChainTree("0" * 32, "o", big).state())
    started = time.perf_counter()
    resumed = ChainTree.from_state(json.loads(saved))
    print(f"resume the writer's tree from its state: {(time.perf_counter() - started) * 1e6:6.0f}"
          f" us ({len(saved)} bytes of state)")
    assert resumed.tree.root() == root
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
