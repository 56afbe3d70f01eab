"""Proofs through a proof index: the same as without one, and never wrong when the index is
stale, damaged, cut short or tampered with (it is made anew, or refused)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import note, proof_index, prove, prove_indexed
from tests.audit.signed_logs import ChainBuilder


@pytest.fixture(scope="module")
def signer() -> note.Signer:
    return note.generate_key("audit.example/billing")


@pytest.fixture
def log(tmp_path: Path, signer: note.Signer) -> ChainBuilder:
    builder = ChainBuilder(signer=signer)
    builder.cancels(120, checkpoint_every=25)
    builder.write(tmp_path / "audit.jsonl")
    return builder


def with_index(tmp_path: Path, chain: str, seq: int, index: Path) -> tuple[dict[str, Any],
                                                                           list[str]]:
    warnings: list[str] = []
    doc = prove_indexed.prove_inclusion([str(tmp_path / "audit.jsonl")], chain, seq, None,
                                        str(index), warnings.append)
    return doc, warnings


def without(tmp_path: Path, chain: str, seq: int) -> dict[str, Any]:
    return prove.prove_inclusion([str(tmp_path / "audit.jsonl")], chain, seq)


def test_a_fresh_index_is_used_as_it_is(tmp_path: Path, log: ChainBuilder) -> None:
    index = tmp_path / "proofs.idx"
    first, warnings = with_index(tmp_path, log.chain, 40, index)
    made = index.stat()
    again, more = with_index(tmp_path, log.chain, 41, index)
    assert first == without(tmp_path, log.chain, 40) and again == without(tmp_path, log.chain, 41)
    assert warnings == more == []
    assert (index.stat().st_ino, index.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)


def test_a_rewritten_file_makes_the_index_stale_and_it_is_made_anew(
    tmp_path: Path, log: ChainBuilder, signer: note.Signer
) -> None:
    index = tmp_path / "proofs.idx"
    with_index(tmp_path, log.chain, 10, index)
    other = ChainBuilder(signer=signer, chain=log.chain, instance="pod-b")  # another history
    other.cancels(120, checkpoint_every=25)
    other.write(tmp_path / "audit.jsonl")
    doc, _ = with_index(tmp_path, log.chain, 10, index)
    assert doc == without(tmp_path, log.chain, 10)
    assert doc["record"].encode() + b"\n" == other.lines[9] != log.lines[9]


def _sections(index: Path) -> dict[str, Any]:
    raw = index.read_bytes()
    length = int.from_bytes(raw[16:20], "little")
    return dict(json.loads(raw[52:52 + length])["sections"])


def _flip(index: Path, at: int) -> None:
    raw = bytearray(index.read_bytes())
    raw[at] ^= 0x40
    index.write_bytes(raw)


@pytest.mark.parametrize("where", ["header", "leaf", "level", "where", "checkpoints"])
def test_flipped_index_bytes_never_give_a_wrong_proof(
    tmp_path: Path, log: ChainBuilder, where: str
) -> None:
    index = tmp_path / "proofs.idx"
    seq = 77
    with_index(tmp_path, log.chain, seq, index)
    sections = _sections(index)
    levels = sections["levels"]
    at = {
        "header": 60,
        "leaf": levels[0][0] + 32 * (seq - 1) + 5,  # the record's own leaf
        "level": levels[2][0] + 32 * ((seq - 1) // 4 ^ 1) + 7,  # a hash on its path
        "where": sections["where"][0] + 12 * (seq - 1) + 4,  # the record's offset
        "checkpoints": sections["checkpoints"][0] + 20 * (sections["checkpoints"][1] - 1) + 9,
    }[where]
    _flip(index, at)
    doc, warnings = with_index(tmp_path, log.chain, seq, index)
    assert doc == without(tmp_path, log.chain, seq)
    assert len(warnings) == 1 and "made it anew" in warnings[0]
    again, warnings = with_index(tmp_path, log.chain, seq, index)
    assert again == doc and warnings == []


@pytest.mark.parametrize("keep", [0.5, 40, 9])
def test_a_truncated_index_is_made_anew(tmp_path: Path, log: ChainBuilder, keep: float) -> None:
    index = tmp_path / "proofs.idx"
    with_index(tmp_path, log.chain, 5, index)
    raw = index.read_bytes()
    index.write_bytes(raw[:int(len(raw) * keep) if keep < 1 else int(keep)])
    doc, warnings = with_index(tmp_path, log.chain, 100, index)
    assert doc == without(tmp_path, log.chain, 100)
    assert len(warnings) == 1 and "damaged" in warnings[0]


def test_an_index_of_another_chain_is_refused_and_kept(
    tmp_path: Path, log: ChainBuilder, signer: note.Signer
) -> None:
    index = tmp_path / "proofs.idx"
    other = ChainBuilder(signer=signer)
    other.cancels(30, checkpoint_every=10)
    other.write(tmp_path / "other.jsonl")
    prove_indexed.prove_inclusion([str(tmp_path / "other.jsonl")], other.chain, 3, None,
                                  str(index), print)
    kept = index.read_bytes()
    with pytest.raises(prove.ProveUsage, match=f"index of chain {other.chain}, not of "
                                                f"{log.chain}"):
        with_index(tmp_path, log.chain, 3, index)
    assert index.read_bytes() == kept


def test_a_file_that_is_no_index_is_never_overwritten(tmp_path: Path, log: ChainBuilder) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("not an index\n")
    with pytest.raises(prove.ProveUsage, match="not a proof index"):
        with_index(tmp_path, log.chain, 3, precious)
    assert precious.read_text() == "not an index\n"


def test_a_tampered_checkpoint_place_still_proves_against_a_note_from_the_files(
    tmp_path: Path, log: ChainBuilder
) -> None:
    """Even a consistent forgery of the index (its checksum recomputed) gets no wrong proof."""
    index = tmp_path / "proofs.idx"
    with_index(tmp_path, log.chain, 7, index)
    content = proof_index.ProofIndex(str(index)).content()
    size, file_id, _ = content.checkpoints[-1]
    content.checkpoints[-1] = (size, file_id, 0)  # points at the audit.chain record
    leaves = bytearray(content.leaves.packed())
    leaves[32 * 6:32 * 7] = bytes(32)[:31] + b"\x01"  # and a forged leaf for seq 7
    content.leaves = type(content.leaves).from_packed(leaves)
    content.levels = []
    content.extend_levels()
    proof_index.write(str(index), content)
    doc, warnings = with_index(tmp_path, log.chain, 7, index)
    assert doc == without(tmp_path, log.chain, 7) and len(warnings) == 1
