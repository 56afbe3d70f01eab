"""A fleet: three real gateways writing three signed chains, their `audit.stdout` mirrors as
the container runtime writes them (CRI lines, some split into P/F parts, the operational log
on stderr interleaved, the files rotated), shipped shuffled and twice. `audit verify` says ok
per chain; then each kind of damage is named."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.audit import chain as audit_chain
from gateway.demo.standin import StandIn
from tests.harness import UPSTREAM_TOKEN, free_port, start_gateway, write_config


@dataclass
class Pod:
    name: str
    chain: str
    vkey: str
    lines: list[bytes]  # the stdout mirror: the audit lines, in order
    stderr: list[bytes]
    note: Path  # audit.checkpoint_file: the newest signed checkpoint


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def cri_entries(pod: Pod, rng: random.Random) -> list[list[bytes]]:
    """Each audit line as the runtime logs it (one entry, or P parts then F), with the
    gateway's stderr lines interleaved: one group a line, so a rotation never splits a line."""
    groups: list[list[bytes]] = []
    errors = iter(pod.stderr)
    for number, line in enumerate(pod.lines):
        stamp = b"2026-11-28T12:00:%02d.%09dZ" % (number // 1000 % 60, number)
        text, group = line[:-1], []
        if rng.random() < 0.35:
            cuts = sorted(rng.sample(range(1, len(text)), 2))
            parts = [text[:cuts[0]], text[cuts[0]:cuts[1]], text[cuts[1]:]]
            for tag, part in zip((b"P", b"P", b"F"), parts, strict=True):
                group.append(stamp + b" stdout " + tag + b" " + part + b"\n")
                error = next(errors, None)
                if error is not None:
                    group.append(stamp + b" stderr F " + error)
        else:
            group.append(stamp + b" stdout F " + text + b"\n")
        groups.append(group)
    return groups


def ship(pods: list[Pod], folder: Path, seed: int = 3) -> list[Path]:
    """Each pod's container log rotated into 3 files; all shipped shuffled, 2 files twice."""
    rng = random.Random(seed)
    files = []
    for pod in pods:
        groups = cri_entries(pod, rng)
        third = len(groups) // 3
        for part, chunk in enumerate((groups[:third], groups[third:2 * third],
                                      groups[2 * third:])):
            path = folder / pod.name / f"0.log.{part}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"".join(b"".join(group) for group in chunk))
            files.append(path)
    for again in rng.sample(files, 2):
        copy = again.with_name(again.name + ".shipped-again")
        shutil.copy(again, copy)
        files.append(copy)
    rng.shuffle(files)
    return files


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> list[Pod]:
    root = tmp_path_factory.mktemp("fleet")
    standin = StandIn(token=UPSTREAM_TOKEN)
    pods = []
    with standin.run_in_thread():
        for n in range(3):
            folder = root / f"pod-{n}"
            folder.mkdir()
            made = cli("audit", "keygen", "--name", f"audit.example/pod-{n}", "--out",
                       folder / "signing.key")
            assert made.returncode == 0, made.stderr
            port = free_port()
            config = write_config(folder, upstream_url=standin.base_url, port=port, audit={
                "stdout": True, "checkpoint_every": 7, "instance": f"pod-{n}",
                "signing_key_file": str(folder / "signing.key"),
                "checkpoint_file": str(folder / "checkpoint.note")})
            gateway = start_gateway(config, port=port)
            for _ in range(10 + 3 * n):
                assert gateway.cancel(standin.add_pending()).status_code == 202
            assert gateway.stop() == 0
            lines = gateway.stdout_path.read_bytes().splitlines(keepends=True)
            assert lines == gateway.audit_path.read_bytes().splitlines(keepends=True)
            pods.append(Pod(f"pod-{n}", json.loads(lines[0])["chain"], made.stdout.strip(),
                            lines, gateway.stderr_path.read_bytes().splitlines(keepends=True),
                            folder / "checkpoint.note"))
    return pods


def verify(pods: list[Pod], *inputs: str | Path, extra: tuple[str, ...] = ()
           ) -> subprocess.CompletedProcess[str]:
    keys = [arg for pod in pods for arg in ("--public-key", pod.vkey)]
    return cli("audit", "verify", *inputs, *keys, "--jobs", "2", *extra)


def line_of(pods: list[Pod], output: str, pod: Pod) -> str:
    (found,) = [line for line in output.splitlines() if pod.chain in line]
    return found


def test_three_signed_chains_shipped_as_cri_logs_verify_ok_per_chain(
        fleet: list[Pod], tmp_path: Path) -> None:
    ship(fleet, tmp_path / "shipped")
    done = verify(fleet, tmp_path / "shipped")
    assert done.returncode == 0, done.stdout + done.stderr
    for pod in fleet:
        n = len(pod.lines)
        assert re.fullmatch(
            rf"chain {pod.chain} \({pod.name}\): ok: {n} records, seq 1\.\.{n}, head "
            rf"{json.loads(pod.lines[-1])['hash']}, signed at tree size {n - 1} by "
            rf"audit\.example/{pod.name}", line_of(fleet, done.stdout, pod))


def damaged(fleet: list[Pod], index: int, lines: list[bytes]) -> list[Pod]:
    pods = list(fleet)
    pods[index] = Pod(**{**fleet[index].__dict__, "lines": lines})
    return pods


def test_a_dropped_middle_line_is_a_missing_seq(fleet: list[Pod], tmp_path: Path) -> None:
    lines = fleet[1].lines
    pods = damaged(fleet, 1, lines[:9] + lines[10:])
    ship(pods, tmp_path / "shipped")
    done = verify(fleet, tmp_path / "shipped")
    assert done.returncode == 1
    assert re.fullmatch(rf"chain {fleet[1].chain} \(pod-1\): \S+:\d+: missing seq 10\.\.10",
                        line_of(fleet, done.stdout, fleet[1]))
    assert line_of(fleet, done.stdout, fleet[0]).endswith("by audit.example/pod-0")


def test_a_tail_cut_below_a_signed_checkpoint_is_truncated(
        fleet: list[Pod], tmp_path: Path) -> None:
    lines = fleet[2].lines
    pods = damaged(fleet, 2, lines[:-4])
    ship(pods, tmp_path / "shipped")
    done = verify(fleet, tmp_path / "shipped", extra=("--checkpoint", str(fleet[2].note)))
    assert done.returncode == 1
    assert line_of(fleet, done.stdout, fleet[2]).endswith(
        f"truncated: signed checkpoint at tree size {len(lines) - 1}, records end at seq "
        f"{len(lines) - 4}")


def test_a_record_moved_into_another_chain_is_named(fleet: list[Pod], tmp_path: Path) -> None:
    moved = json.loads(fleet[1].lines[6])
    moved["chain"] = fleet[0].chain  # relabelled to pass for chain 0's record
    line = audit_chain.canonical(moved) + b"\n"
    pods = damaged(fleet, 0, [*fleet[0].lines[:6], line, *fleet[0].lines[7:]])
    ship(pods, tmp_path / "shipped")
    done = verify(fleet, tmp_path / "shipped")
    assert done.returncode == 1
    assert "hash mismatch: the record was edited" in line_of(fleet, done.stdout, fleet[0])


def test_a_seq_duplicated_with_other_content_is_a_conflict(
        fleet: list[Pod], tmp_path: Path) -> None:
    original = json.loads(fleet[0].lines[4])
    body = {k: v for k, v in original.items() if k not in ("seq", "prev", "hash", "mac")}
    body["team"] = "someone-else"
    _, forged = audit_chain.seal(body, seq=original["seq"], prev=original["prev"], mac_key=None)
    pods = damaged(fleet, 0, [*fleet[0].lines, forged])
    ship(pods, tmp_path / "shipped")
    done = verify(fleet, tmp_path / "shipped")
    assert done.returncode == 1
    assert line_of(fleet, done.stdout, fleet[0]).endswith(
        f"conflicting records at seq {original['seq']}")


def test_prove_reads_the_shipped_container_logs(fleet: list[Pod], tmp_path: Path) -> None:
    ship(fleet, tmp_path / "shipped")
    pod = fleet[1]
    done = cli("audit", "prove", tmp_path / "shipped", "--chain", pod.chain, "--seq", "5")
    assert done.returncode == 0, done.stderr
    proof = json.loads(done.stdout)
    assert proof["record"].encode() + b"\n" == pod.lines[4]
    checked_file = tmp_path / "proof.json"
    checked_file.write_text(done.stdout)
    checked = cli("audit", "check-proof", checked_file, "--public-key", pod.vkey)
    assert checked.returncode == 0, checked.stdout + checked.stderr
