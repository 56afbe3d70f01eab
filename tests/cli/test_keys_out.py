"""`keys new --out FILE`: the key goes to a new 0600 file, never to the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.access import keys


def keys_new(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "keys", "new", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)


def test_the_key_is_written_to_a_0600_file_and_only_its_stored_form_is_printed(
    tmp_path: Path,
) -> None:
    result = keys_new(tmp_path, "--team", "billing", "--out", "billing.key")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "billing.key"
    assert path.stat().st_mode & 0o777 == 0o600
    key = path.read_text().strip()
    assert keys.is_team_key(key)
    assert key not in result.stdout + result.stderr
    assert f"stored: {keys.stored_form(key)}" in result.stdout


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "billing.key"
    path.write_text("keep me\n")
    result = keys_new(tmp_path, "--team", "billing", "--out", "billing.key")
    assert result.returncode == 2
    assert "billing.key" in result.stderr and "Traceback" not in result.stderr
    assert path.read_text() == "keep me\n"
    assert "csg_" not in result.stdout
