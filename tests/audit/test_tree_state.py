"""The writer's saved tree: resumed from the state and the records after it, or rebuilt."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from gateway.audit import note, tree_state
from gateway.audit.chain_tree import ChainTree
from tests.audit.signed_logs import ChainBuilder

SIGNER = note.generate_key("audit.example/state")


def built(n: int) -> ChainBuilder:
    builder = ChainBuilder(signer=SIGNER)
    builder.cancels(n, checkpoint_every=10)
    return builder


def save_at(tmp_path: Path, builder: ChainBuilder, seq: int) -> str:
    audit = str(tmp_path / "audit.jsonl")
    tree = ChainTree(builder.chain, builder.tree.origin)
    for line in builder.lines[:seq]:
        tree.add(line)
    tree_state.save(audit, tree, seq, builder.records[seq - 1]["hash"], durable=True)
    return audit


def test_lines_are_read_backwards_whole_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tree_state, "CHUNK", 7)
    rng = random.Random(5)
    path = tmp_path / "f"
    for _ in range(300):
        lines = [rng.randbytes(rng.randint(0, 5)).hex().encode() for _ in range(rng.randint(0, 8))]
        torn = rng.randbytes(rng.randint(0, 3)).hex().encode()
        path.write_bytes(b"".join(line + b"\n" for line in lines) + torn)
        assert list(tree_state.lines_backward(str(path))) == lines[::-1]


def test_the_state_plus_the_records_after_it_give_the_chains_tree(tmp_path: Path) -> None:
    builder = built(95)
    audit = save_at(tmp_path, builder, 50)
    live = tmp_path / "audit.jsonl"
    builder.write(live)
    saved = tree_state.load(audit)
    assert saved is not None and saved.seq == 50
    resumed = tree_state.catch_up(saved, [str(live)], len(builder.records))
    assert resumed is not None
    assert resumed.tree.root() == builder.tree.tree.root()
    assert resumed.tree.size == len(builder.records)


def test_records_after_the_state_may_be_in_the_next_rotated_file(tmp_path: Path) -> None:
    builder = built(60)
    audit = save_at(tmp_path, builder, 20)
    (tmp_path / "audit.jsonl.000001").write_bytes(b"".join(builder.lines[:30]))
    (tmp_path / "audit.jsonl").write_bytes(b"".join(builder.lines[30:]))
    files = [str(tmp_path / "audit.jsonl.000001"), str(tmp_path / "audit.jsonl")]
    saved = tree_state.load(audit)
    assert saved is not None
    resumed = tree_state.catch_up(saved, files, len(builder.records))
    assert resumed is not None and resumed.tree.root() == builder.tree.tree.root()


def test_a_state_that_does_not_match_the_log_is_not_trusted(tmp_path: Path) -> None:
    builder = built(40)
    audit = save_at(tmp_path, builder, 20)
    live = builder.write(tmp_path / "audit.jsonl")
    saved = tree_state.load(audit)
    assert saved is not None
    # Ahead of the log (records lost after the save), or another hash at its seq.
    assert tree_state.catch_up(saved, [str(live)], 19) is None
    other = ChainBuilder(signer=SIGNER, chain=builder.chain, instance="pod-b")
    other.cancels(40, checkpoint_every=10)
    assert tree_state.catch_up(saved, [str(other.write(tmp_path / "o.jsonl"))], 44) is None


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"chain":"x"}', b"x" * 70000])
def test_a_damaged_state_file_loads_as_none(tmp_path: Path, content: bytes) -> None:
    audit = str(tmp_path / "audit.jsonl")
    Path(tree_state.state_path(audit)).write_bytes(content)
    assert tree_state.load(audit) is None


def test_the_tree_is_rebuilt_from_seq_1_or_not_at_all(tmp_path: Path) -> None:
    builder = built(45)
    (tmp_path / "a.1").write_bytes(b"".join(builder.lines[:25]))
    (tmp_path / "a").write_bytes(b"".join(builder.lines[25:]))
    rebuilt = tree_state.rebuild([str(tmp_path / "a.1"), str(tmp_path / "a")], builder.chain,
                                 builder.tree.origin)
    assert rebuilt is not None and rebuilt.tree.root() == builder.tree.tree.root()
    assert tree_state.rebuild([str(tmp_path / "a")], builder.chain, builder.tree.origin) is None


def test_resuming_a_long_chain_reads_only_its_tail(tmp_path: Path) -> None:
    """200k records on disk: resuming from a state 1000 records back takes milliseconds."""
    chain = "cd" * 16
    tree = ChainTree(chain, "o")
    live = tmp_path / "audit.jsonl"
    n = 200_000
    with open(live, "wb") as handle:
        for seq in range(1, n + 1):
            line = json.dumps({"chain": chain, "hash": f"{seq:064x}", "seq": seq},
                              separators=(",", ":")).encode()
            handle.write(line + b"\n")
            tree.add(line)
            if seq == n - 1000:
                tree_state.save(str(live), tree, seq, f"{seq:064x}", durable=False)
    started = time.perf_counter()
    saved = tree_state.load(str(live))
    assert saved is not None
    resumed = tree_state.catch_up(saved, [str(live)], n)
    took = time.perf_counter() - started
    assert resumed is not None and resumed.tree.root() == tree.tree.root()
    assert took < 0.5, took


def test_atomic_replacement_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.note"
    tree_state.write_atomically(str(target), "one\n", durable=True)
    tree_state.write_atomically(str(target), "two\n", durable=False)
    assert target.read_text() == "two\n"
    assert os.listdir(tmp_path) == ["checkpoint.note"]
