"""The README's quickstart, run as written (its shell blocks, in order, in one shell), with
only the two ports moved to free ones: what a newcomer pastes works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[1]


def quickstart_script() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A five-minute quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) >= 6, "the quickstart's steps are shell blocks"
    return "\n".join(blocks)


def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    gateway_port, standin_port = free_port(), free_port()
    script = (quickstart_script()
              .replace("8081", str(standin_port)).replace("8080", str(gateway_port)))
    config = (ROOT / "config.quickstart.toml").read_text(encoding="utf-8")
    (tmp_path / "config.quickstart.toml").write_text(
        config.replace("8081", str(standin_port)).replace("8080", str(gateway_port)))
    # The quickstart's first line puts the virtualenv on PATH; here it is this interpreter's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMA_SYNC")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    started = time.monotonic()
    result = subprocess.run(
        # A failed step must not leave the two servers running (they hold the output pipe).
        ["bash", "-e", "-c", "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n"
         + script.replace('export PATH="$PWD/.venv/bin:$PATH"', "")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)
    config = (tmp_path / "quickstart" / "config.toml").read_text()
    assert "STORED_FORM" not in config and re.search(r'"sha256:[0-9a-f]{64}"', config)
    key = (tmp_path / "quickstart" / "team.key").read_text().strip()
    assert key.startswith("csg_") and key not in out + result.stderr
    assert "strict: ok" in out
    statuses = re.findall(r"HTTP/1\.1 (\d{3}) ", out)
    assert statuses == ["202", "412"]
    # audit.chain and audit.opened begin the log, then two cancels' attempt and result
    assert re.search(r"\): ok: 6 records, seq 1\.\.6, head [0-9a-f]{64}", out)
    assert seconds < 60
