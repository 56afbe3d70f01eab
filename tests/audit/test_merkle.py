"""The Merkle tree against published RFC 6962/9162 vectors and an independent naive tree."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import merkle
from gateway.audit.merkle import (
    EMPTY_ROOT,
    LeafHashes,
    ProofError,
    Tree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    subtree_root,
    verify_consistency,
    verify_inclusion,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "merkle_vectors.json").read_text()
)


# --- An independent tree, written straight from RFC 9162 2.1's recursive definitions ---------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def naive_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + d[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return _h(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def data(n: int) -> list[bytes]:
    return [f"record {i}".encode() for i in range(n)]


# --- Published vectors --------------------------------------------------------------------------


def test_hashes_match_the_published_rfc6962_hasher_vectors() -> None:
    h = VECTORS["hasher"]
    assert EMPTY_ROOT.hex() == VECTORS["empty_root"]
    assert leaf_hash(b"").hex() == h["empty_leaf"]
    assert leaf_hash(b"L123456").hex() == h["leaf_L123456"]
    assert node_hash(b"N123", b"N456").hex() == h["node_N123_N456"]


def test_roots_of_sizes_1_to_8_match_the_published_vectors() -> None:
    leaves = [bytes.fromhex(x) for x in VECTORS["leaves"]]
    tree = Tree()
    for size, (leaf, want) in enumerate(zip(leaves, VECTORS["roots"], strict=True), start=1):
        tree.append(leaf)
        assert tree.root().hex() == want, size
        assert subtree_root([leaf_hash(x) for x in leaves], size).hex() == want


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['leaf']}of{c['size']}")
def test_inclusion_proofs_match_the_published_vectors(case: dict[str, Any]) -> None:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves"]]
    index, size = case["leaf"] - 1, case["size"]
    proof = inclusion_proof(leaves, index, size)
    assert [p.hex() for p in proof] == case["proof"]
    root = bytes.fromhex(VECTORS["roots"][size - 1])
    verify_inclusion(index, size, leaves[index], proof, root)


@pytest.mark.parametrize(
    "case", VECTORS["consistency"], ids=lambda c: f"{c['size1']}to{c['size2']}"
)
def test_consistency_proofs_match_the_published_vectors(case: dict[str, Any]) -> None:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves"]]
    old, new = case["size1"], case["size2"]
    proof = consistency_proof(leaves, old, new)
    assert [p.hex() for p in proof] == case["proof"]
    roots = VECTORS["roots"]
    verify_consistency(old, new, bytes.fromhex(roots[old - 1]), bytes.fromhex(roots[new - 1]),
                       proof)


def test_corrupted_published_proofs_are_refused() -> None:
    """Each probe of transparency-dev's corruptInclusionProof / corruptConsistencyProof."""
    leaves = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves"]]
    roots = [bytes.fromhex(r) for r in VECTORS["roots"]]
    some = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    for case in VECTORS["inclusion"]:
        i, n = case["leaf"] - 1, case["size"]
        proof = [bytes.fromhex(p) for p in case["proof"]]
        probes = [
            (i - 1, n, leaves[i], proof, roots[n - 1]),
            (i + 1, n, leaves[i], proof, roots[n - 1]),
            (i ^ 2, n, leaves[i], proof, roots[n - 1]),
            (i, n * 2, leaves[i], proof, roots[n - 1]),
            (i, n // 2, leaves[i], proof, roots[n - 1]),
            (i, n, leaf_hash(b"WrongLeaf"), proof, roots[n - 1]),
            (i, n, leaves[i], proof, EMPTY_ROOT),
            (i, n, leaves[i], proof, some),
            (i, n, leaves[i], [*proof, roots[n - 1]], roots[n - 1]),
            (i, n, leaves[i], [roots[n - 1], *proof], roots[n - 1]),
        ]
        for k in range(len(proof)):
            bad = list(proof)
            bad[k] = bytes([bad[k][0] ^ 8]) + bad[k][1:]
            probes.append((i, n, leaves[i], bad, roots[n - 1]))
        if proof:
            probes.append((i, n, leaves[i], proof[:-1], roots[n - 1]))
        for probe in probes:
            with pytest.raises(ProofError):
                verify_inclusion(*probe)
    for case in VECTORS["consistency"]:
        m, n = case["size1"], case["size2"]
        proof = [bytes.fromhex(p) for p in case["proof"]]
        if not proof:
            continue
        r1, r2 = roots[m - 1], roots[n - 1]
        cprobes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
            (m - 1, n, r1, r2, proof), (m + 1, n, r1, r2, proof), (m ^ 2, n, r1, r2, proof),
            (m, n * 2, r1, r2, proof), (m, n // 2, r1, r2, proof),
            (m, n, some, r2, proof), (m, n, r1, some, proof), (m, n, r2, r1, proof),
            (m, n, r1, r2, []), (m, n, r1, r2, [*proof, r1]), (m, n, r1, r2, [*proof, r2]),
            (m, n, r1, r2, [r1, *proof]), (m, n, r1, r2, [r2, *proof]),
            (m, n, r1, r2, [proof[0], *proof]), (m, n, r1, r2, proof[:-1]),
        ]
        for k in range(len(proof)):
            bad = list(proof)
            bad[k] = bytes([bad[k][0] ^ 16]) + bad[k][1:]
            cprobes.append((m, n, r1, r2, bad))
        for old, new, a, b, p in cprobes:
            if (old, new) == (m, n) and (a, b) == (r1, r2) and p == proof:
                continue
            with pytest.raises(ProofError):
                verify_consistency(old, new, a, b, p)


# --- Against the naive tree: sizes 1 to 100 -----------------------------------------------------


def test_roots_proofs_of_sizes_1_to_100_agree_with_the_naive_definition() -> None:
    records = data(100)
    leaves = [leaf_hash(r) for r in records]
    tree = Tree()
    for size in range(1, 101):
        tree.append(records[size - 1])
        d = records[:size]
        root = naive_mth(d)
        assert tree.root() == root, size
        for index in sorted({0, size // 2, size - 1}):
            proof = inclusion_proof(leaves, index, size)
            assert proof == naive_path(index, d), (index, size)
            verify_inclusion(index, size, leaves[index], proof, root)
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf_hash(b"another record"), proof, root)
        for old in sorted({1, size // 2, size - 1} - {0}):
            proof = consistency_proof(leaves, old, size)
            assert proof == naive_subproof(old, d, True), (old, size)
            verify_consistency(old, size, naive_mth(records[:old]), root, proof)
            if old < size:
                with pytest.raises(ProofError):
                    verify_consistency(old, size, naive_mth(data(old + 1)[1:] or [b"x"]), root,
                                       proof)


def test_every_leaf_of_every_size_to_40_proves_into_its_root() -> None:
    records = data(40)
    leaves = [leaf_hash(r) for r in records]
    for size in range(1, 41):
        root = naive_mth(records[:size])
        for index in range(size):
            verify_inclusion(index, size, leaves[index], inclusion_proof(leaves, index, size),
                             root)


def test_impossible_sizes_and_indexes_are_refused() -> None:
    leaves = [leaf_hash(r) for r in data(4)]
    with pytest.raises(ProofError):
        inclusion_proof(leaves, 4, 4)
    with pytest.raises(ProofError):
        inclusion_proof(leaves, 0, 5)
    with pytest.raises(ProofError):
        consistency_proof(leaves, 3, 2)
    with pytest.raises(ProofError):
        verify_inclusion(0, 0, leaves[0], [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_consistency(3, 2, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError):  # a hash of the wrong length
        verify_inclusion(0, 2, leaves[0], [b"short"], EMPTY_ROOT)


# --- The writer's incremental state -------------------------------------------------------------


def test_state_resumes_the_tree_exactly_and_stays_logarithmic() -> None:
    records = data(1000)
    tree = Tree()
    for size, record in enumerate(records, start=1):
        tree.append(record)
        state = tree.state()
        assert len(state["peaks"]) == bin(size).count("1")  # type: ignore[arg-type]
        if size in (1, 2, 3, 511, 512, 513, 999):
            resumed = Tree.from_state(json.loads(json.dumps(state)))
            assert resumed.root() == tree.root()
            resumed.append(b"next")
            other = tree.copy()
            other.append(b"next")
            assert resumed.root() == other.root()
    assert tree.root() == naive_mth(records)


@pytest.mark.parametrize(
    "state",
    [
        None,
        [],
        {"tree_size": 3, "peaks": ["00" * 32]},
        {"tree_size": -1, "peaks": []},
        {"tree_size": True, "peaks": ["00" * 32]},
        {"tree_size": 1, "peaks": ["zz" * 32]},
        {"tree_size": 1, "peaks": ["00" * 31]},
        {"tree_size": 1},
    ],
)
def test_a_damaged_state_is_refused(state: object) -> None:
    with pytest.raises(ValueError):
        Tree.from_state(state)


def test_a_million_leaves_root_and_proofs(record_property: Any) -> None:
    """1M leaves: append, root, an inclusion proof of a middle leaf, a consistency proof."""
    n = 1_000_000
    leaves = LeafHashes()
    tree = Tree()
    started = time.perf_counter()
    for i in range(n):
        leaf = leaf_hash(i.to_bytes(8, "big"))
        tree.append_hash(leaf)
        leaves.append(leaf)
    appended = time.perf_counter()
    root = tree.root()
    assert subtree_root(leaves, n) == root
    rooted = time.perf_counter()
    index = 654_321
    proof = inclusion_proof(leaves, index, n)
    proved = time.perf_counter()
    assert len(proof) == 20  # ceil(log2(1M))
    verify_inclusion(index, n, leaves[index], proof, root)
    old = 999_000
    cproof = consistency_proof(leaves, old, n)
    verify_consistency(old, n, subtree_root(leaves, old), root, cproof)
    record_property("append_us_per_leaf", (appended - started) / n * 1e6)
    record_property("root_from_leaves_s", rooted - appended)
    record_property("inclusion_proof_s", proved - rooted)
    assert proved - rooted < 10  # one hash per leaf, not one per leaf per level


def test_module_has_no_hidden_state_between_trees() -> None:
    a, b = Tree(), Tree()
    a.append(b"x")
    assert b.size == 0 and b.root() == merkle.EMPTY_ROOT
