"""`audit keygen`, `audit prove`, `audit check-proof` and docs/check_proof.py, end to end."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import merkle, note
from gateway.cli.main import main
from tests.audit.signed_logs import MAC_KEY, ChainBuilder, parsed, reseal

DOCS_CHECKER = Path(__file__).resolve().parents[2] / "docs" / "check_proof.py"


def cli(*args: str) -> tuple[int, str, str]:
    """The real command line, in a process of its own."""
    proc = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def inproc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def docs_check(proof: Path, *keys: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, str(DOCS_CHECKER), str(proof), *keys],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def signer() -> note.Signer:
    return note.generate_key("audit.example/billing")


@pytest.fixture
def log(tmp_path: Path, signer: note.Signer) -> ChainBuilder:
    builder = ChainBuilder(signer=signer)
    builder.cancels(60, checkpoint_every=20)
    builder.write(tmp_path / "audit.jsonl")
    return builder


# --- keygen -------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_0600_and_prints_its_verifier_key(tmp_path: Path) -> None:
    out_file = tmp_path / "signing.key"
    code, out, err = cli("audit", "keygen", "--name", "audit.example/gw", "--out", str(out_file))
    assert code == 0, err
    vkey = out.strip()
    signer = note.parse_signer_key(out_file.read_text().strip())
    assert signer.verifier.encoded == vkey and vkey.startswith("audit.example/gw+")
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    assert signer.encoded not in out + err


def test_keygen_never_overwrites_and_refuses_bad_names(tmp_path: Path) -> None:
    existing = tmp_path / "signing.key"
    existing.write_text("precious\n")
    code, out, err = cli("audit", "keygen", "--name", "gw", "--out", str(existing))
    assert (code, out) == (2, "") and "never overwritten" in err and err.count("\n") == 1
    assert existing.read_text() == "precious\n"
    for name in ("has space", "a+b", ""):
        code, _, err = cli("audit", "keygen", "--name", name, "--out", str(tmp_path / "n.key"))
        assert code == 2 and "--name" in err and err.count("\n") == 1
    code, _, err = cli("audit", "keygen", "--name", "gw", "--out", str(tmp_path / "no" / "k"))
    assert code == 2 and "can't write" in err and "Traceback" not in err


# --- inclusion ----------------------------------------------------------------------------------


def test_inclusion_proofs_of_first_middle_and_last_records_check_everywhere(
    tmp_path: Path, log: ChainBuilder, signer: note.Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = signer.verifier.encoded
    path = str(tmp_path / "audit.jsonl")
    newest = log.records[-1]["tree_size"]
    for seq in (1, newest // 2, newest):
        code, out, err = inproc(capsys, "audit", "prove", path, "--chain", log.chain,
                                "--seq", str(seq))
        assert code == 0, err
        doc = json.loads(out)
        assert set(doc) == {"chain", "seq", "record", "tree_size", "proof", "checkpoint"}
        assert doc["record"].encode() + b"\n" == log.lines[seq - 1]
        assert doc["tree_size"] == newest and doc["checkpoint"] == log.notes()[-1]
        proof = tmp_path / f"proof-{seq}.json"
        proof.write_text(out)
        code, out, _ = inproc(capsys, "audit", "check-proof", str(proof), "--public-key", vkey)
        assert code == 0 and out.startswith(f"ok: seq {seq} of chain {log.chain} is in the tree "
                                            f"of size {newest}")
        code, out, err = docs_check(proof, vkey)
        assert code == 0, err
        assert out.startswith(f"ok: seq {seq} of chain {log.chain}")


def test_inclusion_against_a_given_older_checkpoint(
    tmp_path: Path, log: ChainBuilder, signer: note.Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = tmp_path / "kept.note"
    kept.write_text(log.notes()[0])
    code, out, _ = inproc(capsys, "audit", "prove", str(tmp_path / "audit.jsonl"), "--chain",
                          log.chain, "--seq", "5", "--checkpoint", str(kept))
    assert code == 0 and json.loads(out)["tree_size"] == parsed([log.lines[22]])[0]["tree_size"]
    code, _, err = inproc(capsys, "audit", "prove", str(tmp_path / "audit.jsonl"), "--chain",
                          log.chain, "--seq", "50", "--checkpoint", str(kept))
    assert code == 1 and "does not cover seq 50" in err


def test_a_tampered_proof_fails_in_both_checkers(
    tmp_path: Path, log: ChainBuilder, signer: note.Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = signer.verifier.encoded
    code, out, _ = inproc(capsys, "audit", "prove", str(tmp_path / "audit.jsonl"), "--chain",
                          log.chain, "--seq", "7")
    doc = json.loads(out)
    tampered: dict[str, dict[str, Any]] = {
        "record": {**doc, "record": doc["record"].replace("cancelled", "forbidden")},
        "path": {**doc, "proof": [doc["proof"][0][::-1], *doc["proof"][1:]]},
        "seq": {**doc, "seq": 8},
        "size": {**doc, "tree_size": doc["tree_size"] + 1},
        "note": {**doc, "checkpoint": doc["checkpoint"].replace(
            f"\n{doc['tree_size']}\n", f"\n{doc['tree_size'] + 1}\n", 1)},
    }
    stranger = note.generate_key("audit.example/billing").verifier.encoded
    for what, bad in tampered.items():
        f = tmp_path / f"{what}.json"
        f.write_text(json.dumps(bad))
        code, out, _ = inproc(capsys, "audit", "check-proof", str(f), "--public-key", vkey)
        assert code == 1 and out.count("\n") == 1, (what, out)
        assert docs_check(f, vkey)[0] == 1, what
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc))
    code, out, _ = inproc(capsys, "audit", "check-proof", str(good), "--public-key", stranger)
    assert code == 1 and "not signed by any key given" in out
    assert docs_check(good, stranger)[0] == 1


def test_prove_refuses_records_that_do_not_match_the_signed_checkpoint(
    tmp_path: Path, log: ChainBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    records = parsed(log.lines)
    records[3]["team"] = "rewritten"
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(reseal(records, mac_key=MAC_KEY, fix_roots=True)))
    code, out, err = inproc(capsys, "audit", "prove", str(forged), "--chain", log.chain,
                            "--seq", "4")
    assert code == 1 and out == "" and "does not match the records" in err
    with_index = inproc(capsys, "audit", "prove", str(forged), "--chain", log.chain, "--seq",
                        "4", "--index", str(tmp_path / "proofs.idx"))
    assert with_index == (code, out, err)


def test_prove_reads_files_in_any_order_with_duplicates(
    tmp_path: Path, log: ChainBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b.jsonl").write_bytes(b"".join(log.lines[30:]))
    (tmp_path / "a.jsonl").write_bytes(b"".join(log.lines[:35]))
    code, out, _ = inproc(capsys, "audit", "prove", str(tmp_path / "b.jsonl"),
                          str(tmp_path / "a.jsonl"), "--chain", log.chain, "--seq", "33")
    assert code == 0 and json.loads(out)["record"].encode() + b"\n" == log.lines[32]
    conflicting = parsed(log.lines[30:31])[0]
    conflicting["team"] = "other"
    (tmp_path / "c.jsonl").write_text(json.dumps(conflicting) + "\n")
    code, _, err = inproc(capsys, "audit", "prove", str(tmp_path / "a.jsonl"),
                          str(tmp_path / "c.jsonl"), "--chain", log.chain, "--seq", "3")
    assert code == 1 and "conflicting records at seq 31" in err


# --- consistency --------------------------------------------------------------------------------


def test_a_consistency_proof_between_two_checkpoints_checks_everywhere(
    tmp_path: Path, log: ChainBuilder, signer: note.Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = signer.verifier.encoded
    old = tmp_path / "old.note"
    old.write_text(log.notes()[0])
    code, out, err = inproc(capsys, "audit", "prove", str(tmp_path / "audit.jsonl"),
                            "--consistency", str(old))
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"chain", "old", "new", "proof"}
    assert doc["old"] == log.notes()[0] and doc["new"] == log.notes()[-1]
    proof = tmp_path / "consistency.json"
    proof.write_text(out)
    code, out, _ = inproc(capsys, "audit", "check-proof", str(proof), "--public-key", vkey)
    assert code == 0 and "extends the tree of size 22" in out
    assert docs_check(proof, vkey)[0] == 0
    new = tmp_path / "new.note"
    new.write_text(log.notes()[1])
    code, out, _ = inproc(capsys, "audit", "prove", str(tmp_path / "audit.jsonl"),
                          "--consistency", str(old), "--checkpoint", str(new))
    assert code == 0 and json.loads(out)["new"] == log.notes()[1]


def test_a_fork_cannot_be_proved_consistent(
    tmp_path: Path, log: ChainBuilder, signer: note.Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key holder signs two histories: a consistency proof between them is impossible."""
    fork = ChainBuilder(signer=signer, chain=log.chain, instance="pod-b")
    fork.cancels(60, checkpoint_every=20)
    old = tmp_path / "fork.note"
    old.write_text(fork.notes()[0])
    code, _, err = inproc(capsys, "audit", "prove", str(tmp_path / "audit.jsonl"),
                          "--consistency", str(old))
    assert code == 1 and "does not match the records" in err
    # Nor can a proof be forged from the honest one: swap in the fork's old note.
    honest = tmp_path / "honest.note"
    honest.write_text(log.notes()[0])
    _, out, _ = inproc(capsys, "audit", "prove", str(tmp_path / "audit.jsonl"),
                       "--consistency", str(honest))
    forged = {**json.loads(out), "old": fork.notes()[0]}
    f = tmp_path / "forged.json"
    f.write_text(json.dumps(forged))
    vkey = signer.verifier.encoded
    code, out, _ = inproc(capsys, "audit", "check-proof", str(f), "--public-key", vkey)
    assert code == 1 and "does not extend" in out
    assert docs_check(f, vkey)[0] == 1


# --- bad input: exit 2, one line, no traceback ------------------------------------------------


@pytest.mark.parametrize(
    "args,expected",
    [
        (["audit", "prove", "{log}"], "give either --chain ID --seq S"),
        (["audit", "prove", "{log}", "--chain", "{chain}"], "needs both --chain ID and --seq S"),
        (["audit", "prove", "{log}", "--chain", "xyz", "--seq", "1"], "32 lowercase hex"),
        (["audit", "prove", "{log}", "--chain", "{chain}", "--seq", "0"], "1 or more"),
        (["audit", "prove", "{log}", "--chain", "{chain}", "--seq", "9999"], "is not in the files"),
        (["audit", "prove", "{log}", "--chain", "0" * 32, "--seq", "1"], "no record of chain"),
        (["audit", "prove", "{missing}", "--chain", "{chain}", "--seq", "1"], "no such file"),
        (["audit", "prove", "{log}", "--consistency", "{garbage}"], "not a signed checkpoint"),
        (["audit", "prove", "{log}", "--consistency", "{missing}"], "can't read"),
        (["audit", "prove", "{log}", "--chain", "{chain}", "--seq", "1", "--consistency",
          "{garbage}"], "give either"),
        (["audit", "prove", "{log}", "--chain", "{chain}", "--seq", "1", "--index", "{garbage}"],
         "not a proof index"),
        (["audit", "prove", "-", "--chain", "{chain}", "--seq", "1", "--index", "{missing}"],
         "not on - or archive URLs"),
        (["audit", "check-proof", "{garbage}", "--public-key", "{vkey}"], "not a proof"),
        (["audit", "check-proof", "{missing}", "--public-key", "{vkey}"], "can't read"),
        (["audit", "check-proof", "{log}", "--public-key", "{vkey}"], "not a proof"),
        (["audit", "check-proof", "{garbage}", "--public-key", "nope"], "--public-key"),
        (["audit", "verify", "{log}", "--public-key", "nope"], "--public-key"),
        (["audit", "verify", "{log}", "--checkpoint", "{garbage}", "--public-key", "{vkey}"],
         "not a signed checkpoint"),
    ],
)
def test_bad_input_to_every_new_verb_is_one_line_and_exit_2(
    tmp_path: Path, log: ChainBuilder, signer: note.Signer, capsys: pytest.CaptureFixture[str],
    args: list[str], expected: str,
) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("not a note, not a proof\n")
    values = {"log": str(tmp_path / "audit.jsonl"), "chain": log.chain,
              "missing": str(tmp_path / "missing"), "garbage": str(garbage),
              "vkey": signer.verifier.encoded}
    code, out, err = inproc(capsys, *[a.format(**values) for a in args])
    assert code == 2, (out, err)
    assert out == "" and err.count("\n") == 1 and expected in err, err


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    code, out, err = cli("audit", "check-proof", str(tmp_path / "nothing"), "--public-key", "x")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err


# --- a million records --------------------------------------------------------------------------


def test_a_proof_in_a_chain_of_a_million_records(
    tmp_path: Path, signer: note.Signer, capsys: pytest.CaptureFixture[str],
    record_property: Any,
) -> None:
    """1M records on disk: prove the middle one (and time it), check it in both checkers."""
    chain = "ab" * 16
    n = 1_000_000
    path = tmp_path / "big.jsonl"
    tree = merkle.Tree()
    from gateway.audit.chain_tree import ChainTree

    ct = ChainTree(chain, "chroma-sync-gateway/" + chain, tree)
    with open(path, "wb") as handle:
        for seq in range(1, n + 1):
            line = f'{{"chain":"{chain}","event":"x","seq":{seq}}}'.encode()
            handle.write(line + b"\n")
            ct.add(line)
        last = json.dumps({"chain": chain, "event": "audit.checkpoint", "seq": n + 1,
                           **ct.checkpoint_fields(signer)}, separators=(",", ":"))
        handle.write(last.encode() + b"\n")
    started = time.perf_counter()
    code, out, err = inproc(capsys, "audit", "prove", str(path), "--chain", chain,
                            "--seq", "500000")
    elapsed = time.perf_counter() - started
    assert code == 0, err
    proof = tmp_path / "proof.json"
    proof.write_text(out)
    record_property("prove_1m_seconds", round(elapsed, 2))
    record_property("proof_bytes", len(out))
    assert len(json.loads(out)["proof"]) == 20
    code, out, _ = inproc(capsys, "audit", "check-proof", str(proof), "--public-key",
                          signer.verifier.encoded)
    assert code == 0 and "tree of size 1000000" in out
    assert docs_check(proof, signer.verifier.encoded)[0] == 0


# --- the standalone checker on its own ----------------------------------------------------------


def _docs_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_proof_doc", DOCS_CHECKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_standalone_checker_imports_only_the_standard_library_and_cryptography() -> None:
    import ast

    tree = ast.parse(DOCS_CHECKER.read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom)}
    assert roots - set(sys.stdlib_module_names) == {"cryptography"}


def test_the_standalone_checker_agrees_with_the_published_vectors() -> None:
    doc = _docs_module()
    data = Path(__file__).resolve().parents[1] / "audit" / "data"
    notes = json.loads((data / "signed_note_vectors.json").read_text(encoding="utf-8"))
    go = notes["go_note"]
    key = doc.verifier_key(go["vkey"])
    text, signers = doc.open_note(go["text"] + "\n" + go["peter_sig"] + go["enoch_sig"], [key])
    assert text == go["text"] and signers == ["PeterNeumann"]
    sumdb = notes["sumdb"]
    for case in sumdb["checkpoints"]:
        text, _ = doc.open_note(case["note"], [doc.verifier_key(sumdb["vkey"])])
        assert doc.checkpoint(text)[1] == case["size"]
    with pytest.raises(doc.Bad):
        doc.open_note(go["text"] + "\n" + go["peter_sig"][:60] + "ABCD" + go["peter_sig"][60:],
                      [key])
    vectors = json.loads((data / "merkle_vectors.json").read_text())
    leaves = [merkle.leaf_hash(bytes.fromhex(x)) for x in vectors["leaves"]]
    roots = [bytes.fromhex(r) for r in vectors["roots"]]
    for case in vectors["inclusion"]:
        path = [bytes.fromhex(p) for p in case["proof"]]
        i, n = case["leaf"] - 1, case["size"]
        assert doc.root_from_inclusion(i, n, leaves[i], path) == roots[n - 1]
    for case in vectors["consistency"]:
        path = [bytes.fromhex(p) for p in case["proof"]]
        m, n = case["size1"], case["size2"]
        doc.check_consistency(m, n, roots[m - 1], roots[n - 1], path)
        if path:
            with pytest.raises(doc.Bad):
                doc.check_consistency(m, n, roots[n - 1], roots[m - 1], path)


# --- through a proof index (--index) ------------------------------------------------------------


def _prove(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return inproc(capsys, "audit", "prove", *args)


def test_an_index_made_then_used_gives_the_same_proofs_byte_for_byte(
    tmp_path: Path, log: ChainBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    path, index = str(tmp_path / "audit.jsonl"), tmp_path / "proofs.idx"
    for seq in ("1", "31", "60"):
        plain = _prove(capsys, path, "--chain", log.chain, "--seq", seq)
        assert plain[0] == 0, plain[2]
        made = _prove(capsys, path, "--chain", log.chain, "--seq", seq, "--index", str(index))
        used = _prove(capsys, path, "--chain", log.chain, "--seq", seq, "--index", str(index))
        assert made == used == plain
    assert index.read_bytes().startswith(b"csg-proof-index")
    old = tmp_path / "old.note"
    old.write_text(log.notes()[0])
    plain = _prove(capsys, path, "--consistency", str(old))
    assert plain[0] == 0
    assert _prove(capsys, path, "--consistency", str(old), "--index", str(index)) == plain


def test_an_index_follows_a_growing_file_and_a_rotation(
    tmp_path: Path, log: ChainBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    log.cancels(60, checkpoint_every=20)
    lines = log.lines
    folder = tmp_path / "logs"
    folder.mkdir()
    current, index = folder / "audit.jsonl", str(tmp_path / "proofs.idx")

    def same_as_without(seq: int) -> None:
        plain = _prove(capsys, str(folder), "--chain", log.chain, "--seq", str(seq))
        assert plain[0] == 0, plain[2]
        assert _prove(capsys, str(folder), "--chain", log.chain, "--seq", str(seq),
                      "--index", index) == plain

    current.write_bytes(b"".join(lines[:70]) + lines[70][:9])  # a line half written
    same_as_without(5)
    with open(current, "ab") as grown:
        grown.write(lines[70][9:] + b"".join(lines[71:100]))
    same_as_without(80)
    os.rename(current, folder / "audit.jsonl.000001")  # rotation: the old file keeps its inode
    current.write_bytes(b"".join(lines[100:]))
    for seq in (3, 80, len(lines) - 1):
        same_as_without(seq)


def test_a_proof_from_an_index_loads_no_module_it_does_not_need(
    tmp_path: Path, log: ChainBuilder, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its ~35 ms are mostly start-up: dataclasses (with inspect, ~9 ms with the classes it
    makes), cryptography and the other commands' arguments stay out of it."""
    path, index = str(tmp_path / "audit.jsonl"), str(tmp_path / "proofs.idx")
    assert _prove(capsys, path, "--chain", log.chain, "--seq", "7", "--index", index)[0] == 0
    script = ("import sys; from gateway.cli.main import main; code = main(sys.argv[1:]); "
              "print(sorted(m for m in ('dataclasses', 'inspect', 'cryptography', 'gateway.config',"
              " 'gateway.audit.verify') if m in sys.modules), file=sys.stderr); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, "audit", "prove", path, "--chain",
                           log.chain, "--seq", "7", "--index", index],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["seq"] == 7
    assert proc.stderr.strip() == "[]"
