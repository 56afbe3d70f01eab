"""`chroma-sync-gateway demo`, run for real: its printed curl works, its audit log verifies."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.harness import free_port


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    lines: queue.Queue[str | None]
    seen: list[str] = field(default_factory=list)

    def read_until(self, marker: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"demo exited early: {self.seen}")
            self.seen.append(line)
            if marker in line:
                return line
        raise AssertionError(f"no line with {marker!r} in time: {self.seen}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


StartDemo = Callable[[int], Demo]


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[StartDemo]:
    started: list[Demo] = []

    def start(port: int) -> Demo:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMA_SYNC")}
        stderr = open(tmp_path / f"demo-{port}.err", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
            stdout=subprocess.PIPE, stderr=stderr, env=env,
        )
        stderr.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                lines.put(raw.decode("utf-8", "replace"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        demo = Demo(process, lines)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        if demo.process.poll() is None:
            demo.process.kill()
            demo.process.wait(10)


@dataclass
class Curl:
    method: str
    url: str
    headers: dict[str, str]


def parse_curl(line: str) -> Curl:
    words = shlex.split(line.strip())
    assert words[0] == "curl", words
    method, headers, url = "GET", {}, None
    index = 1
    while index < len(words):
        word = words[index]
        if word == "-X":
            method = words[index + 1]
            index += 2
        elif word == "-H":
            name, _, value = words[index + 1].partition(":")
            headers[name.strip()] = value.strip()
            index += 2
        elif word.startswith("http://"):
            url = word
            index += 1
        else:
            index += 1
    assert url is not None, words
    return Curl(method, url, headers)


def perform(curl: Curl) -> httpx.Response:
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        return client.request(curl.method, curl.url, headers=curl.headers)


def wait_for_lines(path: Path, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = path.read_bytes() if path.exists() else b""
        if data.endswith(b"\n") and data.count(b"\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"audit log has not {count} lines: {path.read_bytes()!r}")


def test_demo_curl_cancels_once_then_412_and_audit_verifies_and_sigterm_cleans_up(
    start_demo: StartDemo,
) -> None:
    port = free_port()
    demo = start_demo(port)
    curl = parse_curl(demo.read_until("curl "))
    refused = parse_curl(demo.read_until("curl "))
    audit_line = demo.read_until("Audit log: ")
    audit_path = Path(audit_line.split("Audit log: ", 1)[1].strip())
    hint = demo.read_until("verify it with: ").split("verify it with: ", 1)[1].strip()
    folder = audit_path.parent

    assert curl.method == "PUT"
    assert curl.url.startswith(f"http://127.0.0.1:{port}/api/v1/invocations/")
    assert curl.headers["Authorization"].startswith("Bearer csg_")

    first = perform(curl)
    assert first.status_code == 202, first.text
    second = perform(curl)
    assert second.status_code == 412, second.text
    assert "error" in second.json()
    out_of_scope = perform(refused)
    assert out_of_scope.status_code == 403, out_of_scope.text
    assert out_of_scope.json()["error"] == "out_of_scope"
    assert "search" not in out_of_scope.json()["message"]

    assert audit_path.exists()
    wait_for_lines(audit_path, 7)  # the chain's 2 first, two attempts, two results, a refusal
    # The hint as printed, by a shell whose PATH lacks .venv/bin (as after `scripts/install`).
    verify = subprocess.run(
        ["/bin/sh", "-c", hint], capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert re.match(r"chain [0-9a-f]{32} \([^)]*\): ok: 7 records", verify.stdout)
    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    results = [r for r in records if r["event"] == "cancel.result"]
    assert [r["outcome"] for r in results] == ["cancelled", "not_cancelable", "forbidden"]
    assert [r["team"] for r in results] == ["docs", "docs", "docs"]
    assert [r["database"] for r in results] == ["docs", "docs", "search"]

    started = time.monotonic()
    assert demo.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert not folder.exists(), "the demo's temporary folder was left behind"


def test_demo_key_line_matches_the_curl_header(start_demo: StartDemo) -> None:
    demo = start_demo(free_port())
    key_line = demo.read_until("Demo team key")
    curl = parse_curl(demo.read_until("curl "))
    key = key_line.rsplit(":", 1)[1].strip()
    assert curl.headers["Authorization"] == f"Bearer {key}"
    wrong = Curl(curl.method, curl.url, {"Authorization": "Bearer csg_not-the-key"})
    assert perform(wrong).status_code == 401
    assert demo.stop() == 0


def test_demo_picks_another_port_when_the_preferred_one_is_taken(
    start_demo: StartDemo,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        demo = start_demo(taken)
        curl = parse_curl(demo.read_until("curl "))
        assert f":{taken}/" not in curl.url
        assert perform(curl).status_code == 202
        assert demo.stop() == 0
