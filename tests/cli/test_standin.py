"""`chroma-sync-gateway standin`, run for real: a stand-in on loopback that `serve` can use,
seeded reproducibly, sharing its token through a file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.harness import free_port

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "standin", *args], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHROMA_SYNC")},
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Press Ctrl-C"):
            return process, lines
    process.kill()
    err = process.stderr.read() if process.stderr else ""
    raise AssertionError(f"standin did not start: {lines} {err}")


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(10)


def pending_ids(lines: list[str]) -> list[str]:
    return [m.group(0) for line in lines if line.startswith("  ")
            for m in [re.match(r"\s+(" + UUID + ")", line)] if m]


def test_it_serves_its_seeded_invocations_to_the_token_it_wrote_and_stops_on_sigint(
    tmp_path: Path,
) -> None:
    port = free_port()
    process, lines = start(tmp_path, "--port", str(port), "--token-file", "token", "--seed", "7")
    try:
        token_file = tmp_path / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token and token not in "\n".join(lines)  # the token stays in the file
        assert f"serving on http://127.0.0.1:{port}" in lines[0]
        ids = [i.strip() for i in pending_ids(lines)]
        assert len(ids) == 10
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            job = client.get(f"/api/v1/invocations/{ids[0]}", headers={"x-chroma-token": token})
            assert job.status_code == 200 and job.json()["status"] == "pending"
            refused = client.get(f"/api/v1/invocations/{ids[0]}",
                                 headers={"x-chroma-token": "wrong"})
            assert refused.status_code == 401
            assert client.put(f"/api/v1/invocations/{ids[0]}",
                              headers={"x-chroma-token": token}).status_code == 202
    finally:
        assert stop(process) == 0


def test_the_same_seed_gives_the_same_ids_and_an_existing_token_file_is_reused(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text("my-own-upstream-token\n")
    first, lines_a = start(tmp_path, "--port", "0", "--token-file", "token", "--seed", "3")
    stop(first)
    second, lines_b = start(tmp_path, "--port", "0", "--token-file", "token", "--seed", "3")
    stop(second)
    third, lines_c = start(tmp_path, "--port", "0", "--seed", "4")
    stop(third)
    assert pending_ids(lines_a) == pending_ids(lines_b) != pending_ids(lines_c)
    assert (tmp_path / "token").read_text() == "my-own-upstream-token\n"


def test_a_host_that_is_not_loopback_or_a_bad_token_file_is_a_usage_error(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "standin", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)

    wide = run("--host", "0.0.0.0")
    assert wide.returncode == 2 and "loopback" in wide.stderr
    (tmp_path / "empty").write_text("\n")
    empty = run("--token-file", "empty", "--port", "0")
    assert empty.returncode == 2 and "empty" in empty.stderr
    assert "Traceback" not in wide.stderr + empty.stderr
