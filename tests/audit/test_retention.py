"""`audit.keep_files`: rotated files beyond it are deleted, each deletion recorded in the chain;
`audit verify` checks what is retained from a checkpoint, and warns about unchecked macs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.audit import chain as audit_chain
from gateway.audit.files import rotated_files
from gateway.audit.writer import AuditLog
from tests.audit.test_writer import body, config, records_of, run

KEY = "auditors-key-0123456789abcdef0123456789"


def fill(tmp_path: Path, count: int, **overrides: Any) -> Path:
    """Write `count` records of about 300 bytes with 64 KiB files, keeping `keep_files`."""

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, max_bytes=65536, **overrides))
        await log.start()
        for n in range(count):
            await log.write({**body(n), "request_id": f"req-{n}-" + "x" * 100})
        await log.close()

    run(scenario())
    return tmp_path / "audit.jsonl"


def all_records(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for file in [*rotated_files(str(path)), str(path)]:
        out.extend(records_of(Path(file)))
    return out


def verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_rotated_files_beyond_keep_files_are_deleted_oldest_first_and_recorded(
    tmp_path: Path,
) -> None:
    path = fill(tmp_path, 1200, keep_files=2)
    kept = rotated_files(str(path))
    assert len(kept) == 2
    numbers = [int(f.rsplit(".", 1)[1]) for f in kept]
    assert numbers == sorted(numbers) and numbers[0] > 1  # the oldest went first
    records = all_records(path)
    deleted = [r for r in records if r["event"] == "audit.deleted"]
    names = [r["file"] for r in deleted]
    # The records of the first deletions went with the files that held them; the retained
    # ones name the files just before the oldest kept one, in order.
    assert names and names == [
        f"audit.jsonl.{n:06d}" for n in range(numbers[0] - len(names), numbers[0])]
    for record in deleted:
        assert not (tmp_path / record["file"]).exists()
        assert isinstance(record["last_seq"], int) and len(record["last_hash"]) == 64
        assert record["first_seq"] <= record["last_seq"]
    # Each deleted file's last record is what the retained files' chain continues from.
    first_kept = records_of(Path(kept[0]))[0]
    assert first_kept["prev"] == deleted[-1]["last_hash"]
    assert first_kept["seq"] == deleted[-1]["last_seq"] + 1


def test_without_keep_files_every_rotated_file_is_kept(tmp_path: Path) -> None:
    path = fill(tmp_path, 600)
    assert len(rotated_files(str(path))) >= 2
    assert not any(r["event"] == "audit.deleted" for r in all_records(path))
    assert int(rotated_files(str(path))[0].rsplit(".", 1)[1]) == 1


def test_verify_checks_the_retained_suffix_from_the_deleted_files_checkpoint(
    tmp_path: Path,
) -> None:
    path = fill(tmp_path, 1200, keep_files=2)
    files = [*rotated_files(str(path)), str(path)]
    last = [r for r in all_records(path) if r["event"] == "audit.deleted"][-1]
    plain = verify_cli(*files)
    assert plain.returncode == 1 and "first record has seq" in plain.stdout
    assert "--checkpoint" in plain.stdout  # says what to give

    anchored = verify_cli(*files, "--checkpoint", f"{last['last_seq']}:{last['last_hash']}")
    assert anchored.returncode == 0, anchored.stdout
    first_seq = last["last_seq"] + 1
    assert anchored.stdout.splitlines()[1] == (
        f"started at seq {first_seq}: a retained suffix (records before it are not in the files "
        f"given), anchored by checkpoint seq {last['last_seq']}")

    wrong = verify_cli(*files, "--checkpoint", f"{last['last_seq']}:{'0' * 64}")
    assert wrong.returncode == 1 and "does not chain to the checkpoint" in wrong.stdout


def test_a_later_checkpoint_alone_does_not_excuse_a_missing_start(tmp_path: Path) -> None:
    path = fill(tmp_path, 1200, keep_files=2)
    files = [*rotated_files(str(path)), str(path)]
    head = records_of(path)[-1]
    result = verify_cli(*files, "--checkpoint", f"{head['seq']}:{head['hash']}")
    assert result.returncode == 1 and "first record has seq" in result.stdout


def test_verify_warns_when_records_carry_a_mac_and_no_key_was_given(tmp_path: Path) -> None:
    lines = []
    prev = audit_chain.GENESIS
    for seq in range(1, 4):
        record, line = audit_chain.seal(
            {"ts": "2026-01-01T00:00:00.000Z", "event": "audit.config"}, seq=seq, prev=prev,
            mac_key=KEY.encode())
        prev = record["hash"]
        lines.append(line)
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"".join(lines))
    without = verify_cli(str(log))
    assert without.returncode == 0
    assert without.stderr.splitlines() == [
        "audit verify: warning: the records carry a mac, but no --hmac-key-file was given: "
        "no mac was checked"]
    key_file = tmp_path / "k"
    key_file.write_text(KEY)
    with_key = verify_cli(str(log), "--hmac-key-file", str(key_file))
    assert with_key.returncode == 0 and with_key.stderr == ""
    assert json.loads(lines[0])["event"] == "audit.config"  # a non-cancel record verifies
