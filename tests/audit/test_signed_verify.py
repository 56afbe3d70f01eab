"""`audit verify` with --public-key and --checkpoint NOTE_FILE against signed chains."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gateway.audit import note
from gateway.audit.verify import run
from tests.audit.signed_logs import MAC_KEY, ChainBuilder, parsed, reseal

SIGNER = note.generate_key("audit.example/billing")
VKEY = SIGNER.verifier.encoded
OTHER = note.generate_key("audit.example/billing")  # same name, another key


def verify(paths: list[Path], *args: str, keys: list[str] | None = None,
           checkpoints: list[str] | None = None, hmac: list[str] | None = None
           ) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run([str(p) for p in paths], hmac or [], checkpoints or [], "--allow-partial" in args,
               out, err, public_keys=keys or [])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def chain(tmp_path: Path) -> ChainBuilder:
    builder = ChainBuilder(signer=SIGNER)
    builder.cancels(40, checkpoint_every=10)
    return builder


def test_a_signed_chain_verifies_and_says_where_it_was_signed(
    chain: ChainBuilder, tmp_path: Path
) -> None:
    code, out, err = verify([chain.write(tmp_path / "audit.jsonl")], keys=[VKEY],
                            hmac=[_mac_file(tmp_path)])
    assert code == 0, out
    size = len(chain.records) - 1  # the last record is a checkpoint
    assert out.startswith(f"ok: {len(chain.records)} records, head ")
    assert out.rstrip().endswith(f", signed at tree size {size} by audit.example/billing")
    assert err == ""


def test_without_a_public_key_notes_are_not_checked_and_it_warns_once(
    chain: ChainBuilder, tmp_path: Path
) -> None:
    code, out, err = verify([chain.write(tmp_path / "audit.jsonl")], hmac=[_mac_file(tmp_path)])
    assert code == 0
    assert "signed at" not in out
    assert err.count("no --public-key was given") == 1


def test_a_public_key_in_a_file_works_like_the_key(chain: ChainBuilder, tmp_path: Path) -> None:
    key_file = tmp_path / "billing.pub"
    key_file.write_text(VKEY + "\n")
    code, out, _ = verify([chain.write(tmp_path / "audit.jsonl")], keys=[str(key_file)])
    assert code == 0 and "signed at tree size" in out


def test_a_note_signed_by_another_key_with_the_same_name_is_caught(tmp_path: Path) -> None:
    forged = ChainBuilder(signer=OTHER)
    forged.cancels(10, checkpoint_every=5)
    code, out, _ = verify([forged.write(tmp_path / "a.jsonl")], keys=[VKEY])
    assert code == 1
    assert ":4:" not in out and "note is not signed by any --public-key given" in out


def test_two_keys_verify_a_chain_signed_before_and_after_a_key_rotation(tmp_path: Path) -> None:
    builder = ChainBuilder(signer=SIGNER)
    builder.cancels(10, checkpoint_every=5)
    builder.signer = OTHER
    builder.opened()
    builder.cancels(10, checkpoint_every=5)
    path = builder.write(tmp_path / "a.jsonl")
    assert verify([path], keys=[VKEY, OTHER.verifier.encoded])[0] == 0
    code, out, _ = verify([path], keys=[VKEY])
    assert code == 1 and "not signed by any --public-key" in out


def _edit_note(builder: ChainBuilder, index: int, text_change: tuple[str, str]) -> list[bytes]:
    """Re-sign a checkpoint's note text edited with a key the verifier does not trust, or
    keep the signature of the original text: a forged note either way."""
    records = parsed(builder.lines)
    old = records[index]["note"]
    text, _, sigs = old.rpartition("\n\n")
    records[index]["note"] = text.replace(*text_change) + "\n\n" + sigs
    return reseal(records, mac_key=MAC_KEY, fix_roots=False)


@pytest.mark.parametrize(
    "what,change,expected",
    [
        ("origin", ("chroma-sync-gateway/", "chroma-sync-gateway/x"), "invalid signature"),
        ("size", ("\n12\n", "\n13\n"), "invalid signature"),
    ],
)
def test_an_edited_note_does_not_verify(
    chain: ChainBuilder, tmp_path: Path, what: str, change: tuple[str, str], expected: str
) -> None:
    index = next(i for i, r in enumerate(chain.records) if r.get("tree_size") == 12)
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"".join(_edit_note(chain, index, change)))
    code, out, _ = verify([path], keys=[VKEY], hmac=[_mac_file(tmp_path)])
    assert code == 1, what
    assert expected in out


def _mac_file(tmp_path: Path) -> str:
    f = tmp_path / "mac.key"
    f.write_bytes(MAC_KEY)
    return str(f)


def test_a_note_validly_signed_for_another_origin_size_or_root_is_caught(
    chain: ChainBuilder, tmp_path: Path
) -> None:
    """The key holder's notes are genuine, but pasted into the wrong record or chain."""
    other = ChainBuilder(signer=SIGNER)
    other.cancels(40, checkpoint_every=10)
    records = parsed(chain.lines)
    cps = [i for i, r in enumerate(records) if "note" in r]
    cases = {
        "origin": (cps[0], other.records[cps[0]]["note"], "note's origin is"),
        "size": (cps[1], records[cps[0]]["note"], "note's tree size is 12, but its record's is 23"),
    }
    for what, (index, replacement, expected) in cases.items():
        edited = parsed(chain.lines)
        edited[index]["note"] = replacement
        path = tmp_path / f"{what}.jsonl"
        path.write_bytes(b"".join(reseal(edited, mac_key=MAC_KEY, fix_roots=False)))
        code, out, _ = verify([path], keys=[VKEY])
        assert code == 1, what
        assert expected in out, (what, out)
    # Root: same origin and size, another tree (the other chain given the same chain id).
    twin = ChainBuilder(signer=SIGNER, chain=chain.chain, instance="pod-b")
    twin.cancels(10, checkpoint_every=10)
    edited = parsed(chain.lines)
    edited[cps[0]]["note"] = twin.records[cps[0]]["note"]
    path = tmp_path / "root.jsonl"
    path.write_bytes(b"".join(reseal(edited, mac_key=MAC_KEY, fix_roots=False)))
    code, out, _ = verify([path], keys=[VKEY])
    assert code == 1 and "note's root is not its record's root" in out


def test_a_record_rewritten_and_resealed_with_the_hmac_key_is_caught(
    chain: ChainBuilder, tmp_path: Path
) -> None:
    records = parsed(chain.lines)
    records[5]["outcome"] = "forbidden"  # history rewritten by the HMAC key's holder
    mac = _mac_file(tmp_path)
    # The forger keeps the checkpoint roots: the recomputed tree gives them away.
    kept = tmp_path / "kept.jsonl"
    kept.write_bytes(b"".join(reseal(records, mac_key=MAC_KEY, fix_roots=False)))
    code, out, _ = verify([kept], hmac=[mac])
    assert code == 1 and "root is not the Merkle root" in out
    # The forger fixes the roots too: the HMAC and hash chain hold, the signatures do not.
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_bytes(b"".join(reseal(records, mac_key=MAC_KEY, fix_roots=True)))
    assert verify([fixed], hmac=[mac])[0] == 0  # what 0.2 could see: nothing
    code, out, _ = verify([fixed], hmac=[mac], keys=[VKEY])
    assert code == 1 and "note's root is not its record's root" in out


def _note_file(tmp_path: Path, text: str, name: str = "cp.note") -> str:
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return str(f)


def test_a_cut_tail_is_caught_against_a_signed_checkpoint(
    chain: ChainBuilder, tmp_path: Path
) -> None:
    kept = _note_file(tmp_path, chain.notes()[-1])  # the auditors kept the newest checkpoint
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(chain.lines[:30]))
    assert verify([cut], keys=[VKEY])[0] == 0  # a shorter chain verifies on its own
    code, out, _ = verify([cut], keys=[VKEY], checkpoints=[kept])
    size = json.loads(chain.lines[-1])["tree_size"]
    assert code == 1
    assert f"truncated: signed checkpoint at tree size {size}, records end at seq 30" in out
    whole = chain.write(tmp_path / "whole.jsonl")
    code, out, _ = verify([whole], keys=[VKEY], checkpoints=[kept])
    assert code == 0 and f"signed at tree size {size}" in out


def test_a_signed_checkpoint_of_another_history_is_caught(tmp_path: Path) -> None:
    """A witness kept a checkpoint; the log now shows another history at that size."""
    original = ChainBuilder(signer=SIGNER)
    original.cancels(12, checkpoint_every=6)
    kept = _note_file(tmp_path, original.notes()[0])
    records = parsed(original.lines)
    records[3]["team"] = "someone-else"
    rewritten = tmp_path / "rewritten.jsonl"
    rewritten.write_bytes(b"".join(reseal(records, mac_key=MAC_KEY, fix_roots=True)))
    code, out, _ = verify([rewritten], keys=[VKEY], checkpoints=[kept])
    assert code == 1
    # The in-log notes already fail; without them the anchor alone still catches it.
    stripped = [{k: v for k, v in r.items() if k != "note"} for r in records]
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(b"".join(reseal(stripped, mac_key=MAC_KEY, fix_roots=True)))
    code, out, _ = verify([bare], keys=[VKEY], checkpoints=[kept])
    assert code == 1 and "does not match the records" in out


def test_a_checkpoint_note_of_another_origin_or_key_is_refused(
    chain: ChainBuilder, tmp_path: Path
) -> None:
    path = chain.write(tmp_path / "a.jsonl")
    other = ChainBuilder(signer=SIGNER)
    other.cancels(10, checkpoint_every=10)
    code, out, _ = verify([path], keys=[VKEY], checkpoints=[_note_file(tmp_path,
                                                                       other.notes()[0])])
    assert code == 1 and "is for origin" in out
    stranger = ChainBuilder(signer=OTHER, chain=chain.chain)
    stranger.cancels(10, checkpoint_every=10)
    code, _, err = verify([path], keys=[VKEY],
                          checkpoints=[_note_file(tmp_path, stranger.notes()[0], "s.note")])
    assert code == 2 and "not signed by any --public-key" in err


@pytest.mark.parametrize(
    "keys,checkpoints,expected",
    [
        (["not-a-key"], [], "--public-key: 'not-a-key' is neither a verifier key"),
        ([SIGNER.encoded], [], "that is a private key"),
        ([], ["NOTE"], "give --public-key to verify it"),
        ([VKEY], ["GARBAGE"], "not a signed checkpoint that verifies"),
    ],
)
def test_bad_keys_and_note_files_are_usage_errors(
    chain: ChainBuilder, tmp_path: Path, keys: list[str], checkpoints: list[str], expected: str
) -> None:
    path = chain.write(tmp_path / "a.jsonl")
    files = {"NOTE": _note_file(tmp_path, chain.notes()[0]),
             "GARBAGE": _note_file(tmp_path, "not a note\n", "g.note")}
    code, out, err = verify([path], keys=keys, checkpoints=[files.get(c, c) for c in checkpoints])
    assert code == 2 and out == ""
    assert expected in err and err.count("\n") == 1
    assert SIGNER.encoded not in err


def test_a_suffix_verifies_its_notes_and_says_roots_were_not_recomputed(
    chain: ChainBuilder, tmp_path: Path
) -> None:
    tail = tmp_path / "tail.jsonl"
    tail.write_bytes(b"".join(chain.lines[20:]))
    code, out, err = verify([tail], "--allow-partial", keys=[VKEY])
    assert code == 0 and "signed at tree size" in out
    assert "Merkle roots before it could not be recomputed" in err


def test_records_of_two_chains_spliced_are_caught(tmp_path: Path) -> None:
    a, b = ChainBuilder(signer=SIGNER), ChainBuilder(signer=SIGNER)
    a.cancels(5)
    b.cancels(5)
    records = parsed(a.lines)
    records[4]["chain"] = b.chain
    path = tmp_path / "spliced.jsonl"
    path.write_bytes(b"".join(reseal(records, mac_key=MAC_KEY, fix_roots=False)))
    code, out, _ = verify([path])
    assert code == 1 and "records of two chains spliced together" in out
