"""Signed chains written by real gateways: restarts, rotations, a key rotation, failing closed,
and what the auditors' tools catch in the files they wrote."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import chain as audit_chain
from gateway.audit import note
from gateway.audit.chain_tree import ChainTree
from gateway.demo.standin import StandIn
from tests.audit.signed_logs import MAC_KEY, parsed, reseal
from tests.conftest import GatewayFactory
from tests.harness import RunningGateway, wait_for

DOCS_CHECKER = Path(__file__).resolve().parents[2] / "docs" / "check_proof.py"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)],
                          capture_output=True, text=True, timeout=60, check=False)


def keygen(path: Path, name: str = "audit.example/billing") -> str:
    made = cli("audit", "keygen", "--name", name, "--out", path)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def cancels(gateway: RunningGateway, standin: StandIn, n: int) -> None:
    for _ in range(n):
        assert gateway.cancel(standin.add_pending()).status_code == 202


def log_files(folder: Path) -> list[Path]:
    return [*sorted(folder.glob("audit.jsonl.[0-9]*")), folder / "audit.jsonl"]


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in log_files(folder)
            for line in path.read_bytes().splitlines()]


def signed_config(folder: Path, **extra: Any) -> dict[str, Any]:
    return {"signing_key_file": str(folder / "signing.key"),
            "checkpoint_file": str(folder / "checkpoint.note"), **extra}


def test_a_signed_chain_across_restarts_and_rotations(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    vkey = keygen(tmp_path / "signing.key")
    audit = signed_config(tmp_path, checkpoint_every=7, max_bytes=65536,
                          instance="billing-gw-0")
    first = gateway_factory(folder=tmp_path, audit=audit)
    cancels(first, standin, 60)
    assert first.stop() == 0
    kept = tmp_path / "before-restart.note"
    shutil.copy(tmp_path / "checkpoint.note", kept)
    second = gateway_factory(folder=tmp_path, audit=audit)
    cancels(second, standin, 60)
    assert second.stop() == 0

    files = log_files(tmp_path)
    assert len(files) >= 3  # rotated at least twice
    all_records = records(tmp_path)
    chain = all_records[0]["chain"]
    assert all(r["chain"] == chain for r in all_records)
    first_record = all_records[0]
    assert first_record["event"] == "audit.chain" and first_record["seq"] == 1
    assert (first_record["instance"], first_record["public_key"], first_record["previous"]) == (
        "billing-gw-0", vkey, None)
    assert first_record["origin"] == f"chroma-sync-gateway/{chain}"
    opened = [r for r in all_records if r["event"] == "audit.opened"]
    assert len(opened) == 2 and all(r["public_key"] == vkey for r in opened)
    checkpoints = [r for r in all_records if r["event"] == "audit.checkpoint"]
    verifier = note.parse_verifier_key(vkey)
    for record in checkpoints:
        assert record["tree_size"] == record["seq"] - 1
        opened_note = note.open_note(record["note"], [verifier])
        assert opened_note.text.splitlines()[:2] == [first_record["origin"],
                                                    str(record["tree_size"])]
    # A checkpoint right after each rotation, and one at each shutdown.
    for path in files[1:]:
        head = [json.loads(line) for line in path.read_bytes().splitlines()[:4]]
        assert any(r["event"] == "audit.checkpoint" for r in head), path.name
    assert (tmp_path / "checkpoint.note").read_text() == checkpoints[-1]["note"]
    assert checkpoints[-1]["seq"] == all_records[-1]["seq"]  # the shutdown checkpoint
    logged = [e for e in second.logs() if e.get("event") == "audit.checkpoint"]
    assert logged and logged[-1]["note"] == checkpoints[-1]["note"]
    assert not [e for e in second.logs() if e.get("event") == "audit.tree_rebuilding"]

    verified = cli("audit", "verify", *files, "--public-key", vkey)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.rstrip().endswith(
        f"signed at tree size {checkpoints[-1]['tree_size']} by audit.example/billing")
    anchored = cli("audit", "verify", *files, "--public-key", vkey, "--checkpoint", kept)
    assert anchored.returncode == 0, anchored.stdout

    # A consistency proof across the restart, and one record proved on its own.
    proof = tmp_path / "consistency.json"
    made = cli("audit", "prove", *files, "--consistency", kept)
    assert made.returncode == 0, made.stderr
    proof.write_text(made.stdout)
    checked = cli("audit", "check-proof", proof, "--public-key", vkey)
    assert checked.returncode == 0 and checked.stdout.startswith("ok: the tree of size")
    doc = subprocess.run([sys.executable, str(DOCS_CHECKER), str(proof), vkey],
                         capture_output=True, text=True, timeout=60, check=False)
    assert doc.returncode == 0, doc.stdout + doc.stderr
    made = cli("audit", "prove", *files, "--chain", chain, "--seq", "50")
    assert made.returncode == 0, made.stderr
    (tmp_path / "inclusion.json").write_text(made.stdout)
    checked = cli("audit", "check-proof", tmp_path / "inclusion.json", "--public-key", vkey)
    assert checked.returncode == 0 and checked.stdout.startswith(f"ok: seq 50 of chain {chain}")


def test_a_cut_tail_and_a_resealed_rewrite_are_caught_with_the_public_key(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    vkey = keygen(tmp_path / "signing.key")
    mac_file = tmp_path / "hmac.key"
    mac_file.write_bytes(MAC_KEY)
    gateway = gateway_factory(folder=tmp_path, audit=signed_config(
        tmp_path, checkpoint_every=6, hmac_key_file=str(mac_file)))
    cancels(gateway, standin, 12)
    assert gateway.stop() == 0
    log = tmp_path / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    size = json.loads(lines[-1])["tree_size"]

    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:-8]))
    assert cli("audit", "verify", cut, "--public-key", vkey).returncode == 0
    caught = cli("audit", "verify", cut, "--public-key", vkey,
                 "--checkpoint", tmp_path / "checkpoint.note")
    assert caught.returncode == 1
    assert (f"truncated: signed checkpoint at tree size {size}, records end at seq "
            f"{len(lines) - 8}") in caught.stdout

    records = parsed(lines)
    victim = next(i for i, r in enumerate(records) if r["event"] == "cancel.result")
    records[victim]["outcome"] = "forbidden"
    rewritten = tmp_path / "rewritten.jsonl"
    rewritten.write_bytes(b"".join(reseal(records, mac_key=MAC_KEY, fix_roots=True)))
    assert cli("audit", "verify", rewritten, "--hmac-key-file", mac_file).returncode == 0
    caught = cli("audit", "verify", rewritten, "--hmac-key-file", mac_file, "--public-key", vkey)
    assert caught.returncode == 1 and "note's root is not its record's root" in caught.stdout


def test_forged_notes_in_a_real_log_are_caught(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    vkey = keygen(tmp_path / "signing.key")
    gateway = gateway_factory(folder=tmp_path, audit=signed_config(tmp_path, checkpoint_every=4))
    cancels(gateway, standin, 6)
    assert gateway.stop() == 0
    records = parsed((tmp_path / "audit.jsonl").read_bytes().splitlines())
    index = next(i for i, r in enumerate(records) if "note" in r)
    genuine = records[index]
    stranger = note.generate_key("audit.example/billing")  # the same name, another key
    text = genuine["note"].rpartition("\n\n")[0] + "\n"
    lines = text.splitlines()
    other_root = ChainTree("0" * 32, lines[0]).tree.root()
    forgeries = {
        "wrong key": (note.sign(text, [stranger]), "not signed by any --public-key"),
        "wrong origin": (genuine["note"].replace(lines[0], lines[0] + "x", 1),
                         "invalid signature"),
        "wrong size": (genuine["note"].replace(f"\n{lines[1]}\n", f"\n{int(lines[1]) + 1}\n", 1),
                       "invalid signature"),
        "wrong root": (genuine["note"].replace(lines[2], base64.b64encode(other_root).decode(),
                                               1), "invalid signature"),
    }
    for what, (forged, expected) in forgeries.items():
        edited = [dict(r) for r in records]
        edited[index]["note"] = forged
        path = tmp_path / f"{what.replace(' ', '-')}.jsonl"
        path.write_bytes(b"".join(reseal(edited, mac_key=None, fix_roots=False)))
        caught = cli("audit", "verify", path, "--public-key", vkey)
        assert caught.returncode == 1, what
        assert expected in caught.stdout, (what, caught.stdout)


def test_a_key_rotation_is_recorded_and_both_keys_verify_their_checkpoints(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    old = keygen(tmp_path / "signing.key", "audit.example/billing")
    gateway = gateway_factory(folder=tmp_path, audit=signed_config(tmp_path, checkpoint_every=4))
    cancels(gateway, standin, 4)
    new = keygen(tmp_path / "new.key", "audit.example/billing")
    (tmp_path / "new.key").replace(tmp_path / "signing.key")  # as a Secret update does
    assert wait_for(lambda: any(e.get("event") == "audit_signing_key.rotated"
                                for e in gateway.logs()), 5)
    cancels(gateway, standin, 4)
    assert gateway.stop() == 0
    all_records = records(tmp_path)
    opened = [r["public_key"] for r in all_records if r["event"] == "audit.opened"]
    assert opened == [old, new]
    files = log_files(tmp_path)
    both = cli("audit", "verify", *files, "--public-key", old, "--public-key", new)
    assert both.returncode == 0, both.stdout
    only_old = cli("audit", "verify", *files, "--public-key", old)
    assert only_old.returncode == 1 and "not signed by any --public-key" in only_old.stdout


def metric(gateway: RunningGateway, name: str) -> float:
    for line in gateway.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not rendered")


@pytest.mark.parametrize("problem", ["missing", "malformed", "holds the token"])
def test_an_unusable_signing_key_fails_closed_until_it_is_fixed(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path, problem: str
) -> None:
    key_file = tmp_path / "signing.key"
    if problem == "malformed":
        key_file.write_text("PRIVATE+KEY+not-a-key\n")
    elif problem == "holds the token":
        key_file.write_text("nothing here yet\n")
    gateway = gateway_factory(folder=tmp_path, audit=signed_config(tmp_path), wait_ready=False)
    if problem == "holds the token":
        token = (tmp_path / "token").read_text().strip()
        key_file.write_text(f"{note.generate_key('gw').encoded}{token}\n")
    assert wait_for(lambda: _serving(gateway), 15)
    assert gateway.client.get("/readyz").status_code == 503
    invocation = standin.add_pending()
    refused = gateway.cancel(invocation)
    assert refused.status_code == 503 and refused.json()["error"] == "audit_unavailable"
    assert standin.state_of(invocation) == "pending"  # nothing was forwarded
    assert metric(gateway, "chroma_sync_gateway_audit_signing_key_available") == 0
    key_file.unlink(missing_ok=True)
    vkey = keygen(key_file)
    assert wait_for(lambda: gateway.client.get("/readyz").status_code == 200, 10)
    assert metric(gateway, "chroma_sync_gateway_audit_signing_key_available") == 1
    assert gateway.cancel(standin.add_pending()).status_code == 202
    assert gateway.stop() == 0
    assert cli("audit", "verify", *log_files(tmp_path), "--public-key", vkey).returncode == 0
    assert key_file.read_text().strip() not in gateway.stderr_path.read_text()


def _serving(gateway: RunningGateway) -> bool:
    try:
        return gateway.client.get("/healthz").status_code == 200
    except Exception:  # not listening yet
        return False


def test_a_log_of_an_earlier_version_is_rotated_and_named_by_the_new_chain(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    old_lines, prev = [], audit_chain.GENESIS
    for seq in range(1, 4):
        record, line = audit_chain.seal({"ts": "2025-01-01T00:00:00.000Z",
                                         "event": "audit.checkpoint", "head_seq": seq - 1,
                                         "head_hash": prev}, seq=seq, prev=prev, mac_key=None)
        old_lines.append(line)
        prev = record["hash"]
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"".join(old_lines))
    gateway = gateway_factory(folder=tmp_path)
    cancels(gateway, standin, 1)
    assert gateway.stop() == 0
    rotated = tmp_path / "audit.jsonl.000001"
    assert rotated.read_bytes() == b"".join(old_lines)  # untouched
    first = json.loads(log.read_bytes().splitlines()[0])
    assert first["event"] == "audit.chain" and first["seq"] == 1
    assert first["previous"] == {"chain": None, "seq": 3, "hash": prev}
    assert cli("audit", "verify", rotated).returncode == 0
    assert cli("audit", "verify", log).returncode == 0


def test_start_up_resumes_a_long_chains_tree_within_a_second(tmp_path: Path) -> None:
    """200,000 records: the writer resumes from its saved state, reading only the tail."""
    import asyncio

    from gateway.audit import tree_state
    from gateway.audit.writer import AuditLog
    from gateway.config.model import AuditConfig

    chain = "ef" * 16
    tree = ChainTree(chain, "chroma-sync-gateway/" + chain)
    path = tmp_path / "audit.jsonl"
    prev, n = audit_chain.GENESIS, 200_000
    with open(path, "wb") as handle:
        for seq in range(1, n + 1):
            body = {"ts": "2025-01-01T00:00:00.000Z", "event": "cancel.result", "chain": chain}
            if seq == 1:
                body = {**body, "event": "audit.chain", "origin": tree.origin}
            record, line = audit_chain.seal(body, seq=seq, prev=prev, mac_key=None)
            handle.write(line)
            tree.add(line)
            prev = record["hash"]
            if seq == n - 500:
                tree_state.save(str(path), tree, seq, prev, durable=False)

    async def start() -> float:
        log = AuditLog(AuditConfig(path=str(path), fsync=False))
        started = time.perf_counter()
        await log.start()
        took = time.perf_counter() - started
        await log.close()
        return took

    took = asyncio.run(start())
    assert took < 1.0, took
    last = json.loads(path.read_bytes().splitlines()[-1])
    assert last["event"] == "audit.checkpoint" and last["chain"] == chain
    assert last["tree_size"] == n + 1  # the tree went on: audit.opened, then this checkpoint
    tree.add(path.read_bytes().splitlines()[n])
    assert last["root"] == tree.tree.root().hex()


def test_a_gateway_that_does_not_sign_reports_no_signing_key_problem(
    gateway_factory: GatewayFactory,
) -> None:
    # The alert on this gauge fires at 0: a gateway without signing must not trip it.
    gateway = gateway_factory()
    assert metric(gateway, "chroma_sync_gateway_audit_signing_key_available") == 1
