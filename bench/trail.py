"""Whether a benchmarked gateway's 0.3 audit trail was really on: read back after it stopped.

The budget rows are only worth their figures if the configured features did their work under
the load: every checkpoint carries a signed `note`, the checkpoint file holds the newest one,
the `file://` archive holds the segments and notes, and `audit verify` with the HMAC key and
the public key accepts both the log and the archive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import procs
from gateway.audit.signing import load_signer


def verify(target: str, *options: str) -> tuple[int, str]:
    """`audit verify TARGET OPTIONS...`: exit status and its last line."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", target, *options],
        capture_output=True, text=True, timeout=300,
    )
    text = (done.stdout or done.stderr).strip().splitlines()
    return done.returncode, text[-1] if text else ""


def check(folder: Path, audit_path: Path) -> dict[str, Any]:
    """What the gateway that ran in `folder` (made by `procs.gateway_process(everything=True)`)
    left: counts, and `audit verify`'s verdict on its log and on its archive."""
    checkpoints = signed = records = 0
    with open(audit_path, "rb") as handle:
        for line in handle:
            records += 1
            if b'"audit.checkpoint"' in line:
                record = json.loads(line)
                if record.get("event") == "audit.checkpoint":
                    checkpoints += 1
                    signed += isinstance(record.get("note"), str)
    archive = folder / "archive"
    segments = sorted(archive.rglob("*.jsonl")) if archive.is_dir() else []
    notes = [p for p in archive.rglob("checkpoints/*") if p.is_file()] if archive.is_dir() else []
    archived = sum(procs.count_lines(p) for p in segments)
    note_file = folder / "checkpoint.note"
    public = load_signer(str(folder / "audit-signing-key")).verifier.encoded
    keys = ["--hmac-key-file", str(folder / "audit-hmac-key"), "--public-key", public]
    log_exit, log_said = verify(str(audit_path), *keys)
    archive_exit, archive_said = verify(archive.as_uri(), "--public-key", public)
    return {
        "records": records, "checkpoints": checkpoints, "signed_checkpoints": signed,
        "checkpoint_file": note_file.is_file() and note_file.stat().st_size > 0,
        "archive_segments": len(segments), "archive_notes": len(notes),
        "archived_records": archived,
        "verify_log": {"exit": log_exit, "said": log_said},
        "verify_archive": {"exit": archive_exit, "said": archive_said},
    }


def summary(found: dict[str, Any]) -> list[str]:
    ok = (found["checkpoints"] and found["signed_checkpoints"] == found["checkpoints"]
          and found["checkpoint_file"] and found["archive_segments"]
          and found["archived_records"] == found["records"]
          and not found["verify_log"]["exit"] and not found["verify_archive"]["exit"])
    return [
        f"0.3 audit trail of the budget gateway, read back after it stopped: "
        f"{'all on' if ok else 'NOT all on'}",
        f"  log: {found['records']} records, {found['signed_checkpoints']} of "
        f"{found['checkpoints']} checkpoints carry a signed note; checkpoint file "
        f"{'written' if found['checkpoint_file'] else 'MISSING'}",
        f"  archive (file://): {found['archive_segments']} segments holding "
        f"{found['archived_records']} records, {found['archive_notes']} checkpoint notes",
        f"  audit verify --hmac-key-file --public-key, the log: {found['verify_log']['said']}",
        f"  audit verify --public-key, the archive: {found['verify_archive']['said']}",
    ]
