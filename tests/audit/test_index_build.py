"""Making a proof index, and bringing one up to date by reading only what is new."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.audit import index_build, merkle, note
from gateway.audit import index_sources as sources
from gateway.audit.proof_index import ProofIndex, write
from gateway.audit.prove import CannotProve
from tests.audit.signed_logs import ChainBuilder, parsed


@pytest.fixture
def log() -> ChainBuilder:
    builder = ChainBuilder(signer=note.generate_key("audit.example/gw"))
    builder.cancels(90, checkpoint_every=30)
    return builder


def test_an_index_holds_every_level_and_every_records_place(
    tmp_path: Path, log: ChainBuilder
) -> None:
    path = log.write(tmp_path / "audit.jsonl")
    write(str(tmp_path / "i"), index_build.build([str(path)], log.chain, None))
    index = ProofIndex(str(tmp_path / "i"))
    leaves = [merkle.leaf_hash(line[:-1]) for line in log.lines]
    n = len(leaves)
    assert (index.leaves, index.prefix) == (n, n)
    for start, end in ((0, n), (64, n), (0, 64), (64, 80), (88, n), (5, 6)):
        assert index.subtree(start, end) == merkle.subtree_root(leaves[start:end], end - start)
    raw = path.read_bytes()
    for seq in (1, 50, n):
        place = index.where(seq)
        assert place is not None and raw[place[1]:].startswith(log.lines[seq - 1])
    tree_sizes = [r["tree_size"] for r in parsed(log.lines) if "note" in r]
    assert [c[0] for c in index.checkpoints()] == tree_sizes
    assert index.newest_checkpoint() is not None and index.newest_checkpoint()[0] == n - 1


def test_an_update_reads_only_the_appended_records(tmp_path: Path, log: ChainBuilder) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(log.lines[:50]) + log.lines[50][:7])
    first = index_build.build([str(path)], log.chain, None)
    consumed = first.files[0].consumed
    assert consumed == sum(map(len, log.lines[:50]))
    with open(path, "ab") as grown:
        grown.write(log.lines[50][7:] + b"".join(log.lines[51:]))
    seen: list[int] = []
    real_read = index_build.Scan.read

    def spy(self: index_build.Scan, source: sources.SourceFile) -> sources.SourceFile:
        seen.append(source.consumed)
        return real_read(self, source)

    index_build.Scan.read = spy  # type: ignore[method-assign]
    try:
        updated = index_build.update(first, [str(path)])
    finally:
        index_build.Scan.read = real_read  # type: ignore[method-assign]
    assert seen == [consumed]
    whole = index_build.build([str(path)], log.chain, None)
    assert bytes(updated.leaves.packed()) == bytes(whole.leaves.packed())
    assert updated.levels == whole.levels and updated.where == whole.where
    assert updated.checkpoints == whole.checkpoints


def test_an_update_that_reading_order_could_change_is_a_rebuild(
    tmp_path: Path, log: ChainBuilder
) -> None:
    path = log.write(tmp_path / "audit.jsonl")
    known = index_build.build([str(path)], log.chain, None)
    (tmp_path / "gone.jsonl").write_bytes(b"")
    with pytest.raises(index_build.Rebuild):  # a file it was made from is not given
        index_build.update(known, [])
    path.write_bytes(log.lines[0].replace(b"pod-a", b"pod-b") + b"".join(log.lines[1:]))
    with pytest.raises(index_build.Rebuild):  # rewritten
        index_build.update(known, [str(path)])


def test_conflicting_records_are_refused_as_without_an_index(
    tmp_path: Path, log: ChainBuilder
) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"".join(log.lines))
    (tmp_path / "b.jsonl").write_bytes(log.lines[4].replace(b"cancelled", b"forbidden"))
    with pytest.raises(CannotProve, match=r"b\.jsonl:1: conflicting records at seq 5"):
        index_build.build([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], log.chain,
                          None)
