"""Signed notes and checkpoints against what Go, transparency-dev and C2SP published."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import checkpoint, note
from gateway.audit.checkpoint import CheckpointError
from gateway.audit.merkle import leaf_hash
from gateway.audit.note import NoteError, UnverifiedNote

V: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "signed_note_vectors.json").read_text(encoding="utf-8")
)
GO = V["go_note"]


def peter() -> note.Verifier:
    return note.parse_verifier_key(GO["vkey"])


def enoch() -> note.Verifier:
    return note.parse_verifier_key(GO["enoch_vkey"])


# --- Keys ---------------------------------------------------------------------------------------


def test_signing_reproduces_gos_note_byte_for_byte() -> None:
    signer = note.parse_signer_key(GO["skey"])
    assert note.sign(GO["text"], [signer]) == GO["text"] + "\n" + GO["peter_sig"]


def test_a_private_key_derives_its_published_verifier_key() -> None:
    assert note.parse_signer_key(GO["skey"]).verifier.encoded == GO["vkey"]
    for skey, vkey in V["formats_key_pairs"]:
        assert note.parse_signer_key(skey).verifier.encoded == vkey
        assert note.parse_verifier_key(vkey).encoded == vkey


def test_key_id_is_the_first_four_bytes_of_the_hash_of_name_and_key() -> None:
    verifier = peter()
    assert verifier.key_id == 0xC74F20A3
    assert note.key_id("PeterNeumann", verifier.public_key) == 0xC74F20A3


def test_every_mangling_of_a_verifier_key_is_refused() -> None:
    """Go's TestNewVerifier: every proper substring and every single-byte change fails."""
    vkey = GO["vkey"]
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(NoteError):
                    note.parse_verifier_key(vkey[i:j])
    for i in range(len(vkey)):
        changed = vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :]
        with pytest.raises(NoteError):
            note.parse_verifier_key(changed)
    for bad in GO["bad_vkeys"]:
        with pytest.raises(NoteError):
            note.parse_verifier_key(bad)


def test_every_mangling_of_a_private_key_is_refused() -> None:
    skey = GO["skey"]
    for i in range(0, len(skey), 3):
        for j in range(i + 1, len(skey) + 1, 2):
            if (i, j) != (0, len(skey)):
                with pytest.raises(NoteError):
                    note.parse_signer_key(skey[i:j])
    for i in range(len(skey)):
        changed = skey[:i] + chr(ord(skey[i]) + 1) + skey[i + 1 :]
        with pytest.raises(NoteError):
            note.parse_signer_key(changed)


@pytest.mark.parametrize(
    "name,valid",
    [("PeterNeumann", True), ("example.com/log", True), ("señor", True), ("", False),
     ("a+b", False), ("a b", False), ("a\u00a0b", False), ("a\u2003b", False), ("a\tb", False),
     ("a\u3000b", False)],
)
def test_key_names_follow_the_signed_note_rules(name: str, valid: bool) -> None:
    assert note.valid_key_name(name) is valid


def test_generated_keys_sign_and_verify_and_never_show_the_seed() -> None:
    signer = note.generate_key("example.com/audit")
    verifier = note.parse_verifier_key(signer.verifier.encoded)
    assert note.parse_signer_key(signer.encoded) == signer
    signed = note.sign("hello\n", [signer])
    assert note.open_note(signed, [verifier]).text == "hello\n"
    seed = base64.b64encode(signer.seed).decode()
    shown = (repr(signer), str(signer), f"{signer}", str([signer]), str({"key": signer}))
    assert not [text for text in shown if seed in text or signer.seed.hex() in text]
    with pytest.raises(NoteError):
        note.generate_key("has space")


# --- Opening notes (Go's TestOpen) --------------------------------------------------------------


def test_one_known_signature_verifies_and_the_other_is_kept_unverified() -> None:
    msg = GO["text"] + "\n" + GO["peter_sig"] + GO["enoch_sig"]
    n = note.open_note(msg, [peter()])
    assert n.text == GO["text"]
    assert [s.name for s in n.sigs] == ["PeterNeumann"]
    assert [(s.name, s.key_id) for s in n.unverified_sigs] == [("EnochRoot", 0xAF0CFE78)]
    both = note.open_note(msg, [peter(), enoch()])
    assert [s.name for s in both.sigs] == ["PeterNeumann", "EnochRoot"]


def test_a_note_no_known_key_signed_is_unverified() -> None:
    msg = GO["text"] + "\n" + GO["peter_sig"] + GO["enoch_sig"]
    with pytest.raises(UnverifiedNote) as caught:
        note.open_note(msg, [])
    assert str(caught.value) == "note has no verifiable signatures"
    assert len(caught.value.note.unverified_sigs) == 2


def test_a_duplicated_verifier_is_ambiguous_only_when_used() -> None:
    with pytest.raises(NoteError, match="ambiguous key EnochRoot\\+af0cfe78"):
        note.open_note(GO["text"] + "\n" + GO["enoch_sig"], [enoch(), peter(), enoch()])
    note.open_note(GO["text"] + "\n" + GO["peter_sig"], [enoch(), peter(), enoch()])


def test_more_than_100_signatures_are_malformed() -> None:
    with pytest.raises(NoteError, match="malformed note"):
        note.open_note(GO["text"] + "\n" + GO["peter_sig"] * 101, [peter()])


def test_a_bad_signature_by_a_known_key_rejects_the_note() -> None:
    sig = GO["peter_sig"]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        note.open_note(GO["text"] + "\n" + sig[:60] + "ABCD" + sig[60:], [peter()])


def test_duplicates_are_dropped_and_unknown_bad_signatures_ignored() -> None:
    peter_sig, enoch_sig = GO["peter_sig"], GO["enoch_sig"]
    msg = (GO["text"] + "\n" + peter_sig + peter_sig + enoch_sig + enoch_sig
           + enoch_sig[:60] + "ABCD" + enoch_sig[60:])
    n = note.open_note(msg, [peter()])
    assert len(n.sigs) == 1 and len(n.unverified_sigs) == 2


@pytest.mark.parametrize(
    "build",
    [
        lambda t, s: t,
        lambda t, s: t + "\n",
        lambda t, s: t + "\n" + s[:-1],
        lambda t, s: "\x01" + t + "\n" + s,
        lambda t, s: t + "\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1"
        "FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        lambda t, s: t + "\n" + s + "Unexpected line.\n",
        lambda t, s: t + "\n" + s.replace("—", "-"),
        lambda t, s: t.replace("\n", "\r\n") + "\n" + s,
    ],
)
def test_malformed_notes_are_refused(build: Any) -> None:
    with pytest.raises(NoteError, match="malformed note"):
        note.open_note(build(GO["text"], GO["peter_sig"]), [peter()])


def test_invalid_utf8_is_malformed() -> None:
    msg = b"\xff" + (GO["text"] + "\n" + GO["peter_sig"]).encode()
    with pytest.raises(NoteError, match="malformed note"):
        note.open_note(msg, [peter()])


def test_a_signature_line_with_the_right_name_but_another_key_id_is_ignored() -> None:
    # Go: "wrongHash" — the key ID no longer matches a known key, so the note is unverified.
    with pytest.raises(UnverifiedNote):
        note.open_note(GO["text"] + "\n" + GO["peter_sig"].replace("x08g", "xxxx"), [peter()])


def test_signing_refuses_text_without_a_final_newline() -> None:
    with pytest.raises(NoteError, match="malformed note"):
        note.sign("abc", [note.parse_signer_key(GO["skey"])])


# --- Others' signed checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize("case", V["sumdb"]["checkpoints"], ids=lambda c: str(c["size"]))
def test_real_sum_golang_org_checkpoints_verify(case: dict[str, Any]) -> None:
    verifier = note.parse_verifier_key(V["sumdb"]["vkey"])
    opened = note.open_note(case["note"], [verifier])
    parsed = checkpoint.parse(opened.text)
    assert parsed.origin == "go.sum database tree"
    assert parsed.tree_size == case["size"]
    assert base64.b64encode(parsed.root).decode() == opened.text.split("\n")[2]
    tampered = case["note"].replace(str(case["size"]), str(case["size"] + 1))
    with pytest.raises(NoteError, match="invalid signature"):
        note.open_note(tampered, [verifier])


def test_a_witness_cosigned_checkpoint_verifies_with_every_known_key() -> None:
    sumdb = V["sumdb"]
    msg = sumdb["checkpoints"][0]["note"] + "".join(sumdb["cosigners"]["sig_lines"])
    cosigners = [note.parse_verifier_key(k) for k in sumdb["cosigners"]["vkeys"]]
    opened = note.open_note(msg, [note.parse_verifier_key(sumdb["vkey"]), *cosigners])
    assert [s.name for s in opened.sigs] == ["sum.golang.org", "monkeys", "bananas", "witness"]
    # A witness alone is enough for whoever trusts only the witness.
    assert len(note.open_note(msg, cosigners[2:]).unverified_sigs) == 3


def test_the_c2sp_examples_parse_with_their_last_blank_line_as_separator() -> None:
    c2sp = V["c2sp"]
    parsed = note.parse_note(c2sp["signed_note_example"])
    assert parsed.text.endswith("\ned è subito sera.\n")
    assert "\n\n" in parsed.text  # the text itself holds a blank line
    assert parsed.unverified_sigs[0].name == "quasimodo.example/salvatore"
    cp_note = note.parse_note(c2sp["checkpoint_example"])
    cp = checkpoint.parse(cp_note.text)
    assert (cp.origin, cp.tree_size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.text() == cp_note.text
    assert cp_note.unverified_sigs[0].name == "example.com/behind-the-sofa"


# --- Checkpoint text ----------------------------------------------------------------------------


def test_gos_tree_note_text_is_a_checkpoint_of_its_size_and_root() -> None:
    tree = V["go_tlog_tree_note"]
    parsed = checkpoint.parse(tree["text"])
    assert parsed.tree_size == tree["size"]
    assert parsed.root == leaf_hash(tree["root_is_leaf_hash_of"].encode())
    assert checkpoint.encode(parsed.origin, parsed.tree_size, parsed.root) == tree["text"]
    for bad in tree["bad"]:
        with pytest.raises(CheckpointError):
            checkpoint.parse(bad)


@pytest.mark.parametrize(
    "text",
    [
        "origin\n1\n",
        "\n1\n" + "A" * 43 + "=\n",
        "origin\n01\n" + "A" * 43 + "=\n",
        "origin\n-1\n" + "A" * 43 + "=\n",
        "origin\n1\n" + "A" * 43 + "=",
        "origin\n1\n" + "A" * 42 + "==\n",
        "origin\n1\n" + "A" * 43 + "=\n\n",
        "origin\n99999999999999999999\n" + "A" * 43 + "=\n",
    ],
)
def test_malformed_checkpoint_texts_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        checkpoint.parse(text)


def test_extension_lines_are_kept_and_an_origin_with_a_newline_cannot_be_encoded() -> None:
    parsed = checkpoint.parse("o\n0\n" + "A" * 43 + "=\next one\n")
    assert parsed.extensions == ("ext one",)
    with pytest.raises(CheckpointError):
        checkpoint.encode("two\nlines", 1, b"\x00" * 32)
