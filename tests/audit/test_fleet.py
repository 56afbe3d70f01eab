"""`audit verify` and `audit query` over many chains: shuffled, duplicated, as CRI lines, from
folders, stdin and archives; one line per chain, each problem named where it is."""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit import chain as audit_chain
from gateway.audit import grouping
from gateway.audit.query import Filters
from gateway.audit.verify_fleet import run_query, run_verify
from tests.audit.archive.chains import ChainFiles


def three_chains(tmp_path: Path) -> list[ChainFiles]:
    logs = []
    for n in range(3):
        folder = tmp_path / f"pod-{n}"
        folder.mkdir()
        log = ChainFiles(folder / "audit.jsonl")
        for _ in range(3):
            log.add(9, team=f"team-{n}")
            log.checkpoint()
        logs.append(log)
    return logs


def cri(lines: list[bytes], rng: random.Random) -> bytes:
    """The mirror as the container runtime writes it: some lines in P/F parts, stderr between."""
    out = []
    for number, line in enumerate(lines):
        text = line[:-1]
        if rng.random() < 0.3:
            cut = rng.randrange(1, len(text))
            out.append(b"2026-11-28T12:00:00.000000001Z stdout P " + text[:cut] + b"\n")
            out.append(b'2026-11-28T12:00:00.000000002Z stderr F {"event":"http.access"}\n')
            out.append(b"2026-11-28T12:00:00.000000003Z stdout F " + text[cut:] + b"\n")
        else:
            out.append(b"2026-11-28T12:00:00.%09dZ stdout F " % number + text + b"\n")
    return b"".join(out)


def verify(*paths: str, stdin: bytes = b"", jobs: int = 1) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_verify(list(paths), [], [], False, jobs, out, err,
                      stdin=io.BufferedReader(io.BytesIO(stdin)))
    return code, out.getvalue(), err.getvalue()


def test_three_chains_shuffled_with_duplicates_as_cri_lines_verify_per_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grouping, "RUN_RECORDS", 10)
    logs = three_chains(tmp_path)
    rng = random.Random(7)
    lines = [line for log in logs for line in log.lines]
    lines += rng.sample(lines, 20)
    rng.shuffle(lines)
    (tmp_path / "shipped.log").write_bytes(cri(lines, rng))
    code, out, err = verify(str(tmp_path / "shipped.log"), jobs=2)
    assert code == 0, out + err
    assert out.splitlines() == sorted(
        f"chain {log.chain} (pod-a): ok: {log.seq} records, seq 1..{log.seq}, head {log.head}"
        for log in logs)


def test_folders_stdin_and_an_archive_folder_together(tmp_path: Path) -> None:
    logs = three_chains(tmp_path)
    stdin = b"".join(logs[2].lines)
    code, out, _ = verify(str(tmp_path / "pod-0"), str(tmp_path / "pod-1"), "-", stdin=stdin)
    assert code == 0
    assert len(out.splitlines()) == 3


def test_a_dropped_middle_line_is_named_with_where_the_next_one_came_from(
        tmp_path: Path) -> None:
    logs = three_chains(tmp_path)
    lines = logs[0].lines
    (tmp_path / "cut.jsonl").write_bytes(b"".join(lines[:12] + lines[13:]))
    code, out, _ = verify(str(tmp_path / "cut.jsonl"), str(tmp_path / "pod-1"))
    assert code == 1
    bad = [line for line in out.splitlines() if logs[0].chain in line]
    assert bad == [f"chain {logs[0].chain} (pod-a): {tmp_path}/cut.jsonl:13: missing seq 13..13"]
    assert f"chain {logs[1].chain} (pod-a): ok:" in out


def test_a_seq_duplicated_with_other_content_is_a_conflict(tmp_path: Path) -> None:
    (log, *_) = three_chains(tmp_path)
    record = json.loads(log.lines[4])
    record["team"] = "someone-else"
    body = audit_chain.body_of(record)
    _, line = audit_chain.seal({k: v for k, v in body.items() if k not in ("seq", "prev")},
                               seq=record["seq"], prev=record["prev"], mac_key=None)
    (tmp_path / "extra.jsonl").write_bytes(line)
    code, out, _ = verify(str(tmp_path / "pod-0"), str(tmp_path / "extra.jsonl"))
    assert code == 1
    assert re.fullmatch(rf"chain {log.chain} \(pod-a\): .*:(5|1): conflicting records at seq 5",
                        out.strip())


def test_a_record_edited_inside_is_named_at_its_input_line(tmp_path: Path) -> None:
    (log, *_) = three_chains(tmp_path)
    text = log.path.read_bytes().replace(b'"inv-7"', b'"inv-8"')
    log.path.write_bytes(text)
    code, out, _ = verify(str(log.path))
    assert code == 1
    assert out.startswith(f"chain {log.chain} (pod-a): {log.path}:7: hash mismatch")


def test_query_reads_verified_records_and_gives_no_rows_when_one_chain_fails(
        tmp_path: Path) -> None:
    logs = three_chains(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    code = run_query([str(tmp_path)], Filters(team="team-1"), "jsonl", [], False, 1, out, err)
    assert code == 0, err.getvalue()
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(rows) == 27 and {r["chain"] for r in rows} == {logs[1].chain}
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)

    lines = logs[2].lines
    logs[2].path.write_bytes(b"".join(lines[:3] + lines[4:]))
    out, err = io.StringIO(), io.StringIO()
    code = run_query([str(tmp_path)], Filters(team="team-1"), "jsonl", [], False, 1, out, err)
    assert code == 1 and out.getvalue() == ""
    assert "missing seq 4..4" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    code = run_query([str(tmp_path)], Filters(team="team-2"), "jsonl", [], True, 1, out, err)
    assert code == 0 and len(out.getvalue().splitlines()) == 26


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", *args], input=stdin.decode(),
                          capture_output=True, text=True, timeout=60)


def test_the_command_line_verifies_a_fleet_in_parallel_and_queries_it(tmp_path: Path) -> None:
    logs = three_chains(tmp_path)
    done = cli("verify", str(tmp_path), "--jobs", "2")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
    done = cli("query", str(tmp_path), "--team", "team-0", "--outcome", "cancelled",
               "--format", "csv")
    assert done.returncode == 0, done.stderr
    raw = subprocess.run([sys.executable, "-m", "gateway", "audit", "query", str(tmp_path),
                          "--team", "team-0", "--format", "csv"], capture_output=True,
                         timeout=60).stdout
    lines = raw.decode().split("\r\n")  # RFC 4180: CRLF
    assert lines[0].startswith("ts,chain,seq,team,key_id") and len(lines) == 1 + 27 + 1
    assert all(logs[0].chain in line for line in lines[1:-1])
    done = cli("query", "-", "--since", "noon")
    assert done.returncode == 2 and "RFC 3339" in done.stderr and "Traceback" not in done.stderr


def test_logs_without_chains_are_still_verified_as_in_0_2(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    head = audit_chain.GENESIS
    with open(path, "wb") as out:
        for seq in (1, 2):
            record, line = audit_chain.seal({"ts": "t", "event": "x"}, seq=seq, prev=head,
                                            mac_key=None)
            head = record["hash"]
            out.write(line)
    done = cli("verify", str(path))
    assert done.returncode == 0 and done.stdout == f"ok: 2 records, head {head}\n"
