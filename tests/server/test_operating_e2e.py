"""Operating it: `check-config --strict`, honest exit codes, key checks, the metrics listener."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.access import keys
from gateway.demo.standin import StandIn
from tests.cli.test_main import assert_one_line_error, run
from tests.conftest import GatewayFactory
from tests.harness import (
    BILLING_KEY,
    UPSTREAM_TOKEN,
    default_teams,
    free_port,
    write_config,
)


def restricted_teams() -> list[dict[str, object]]:
    teams = default_teams()
    for team in teams:
        team["scope"] = ["database:billing"]
    return teams


def strict(path: Path) -> subprocess.CompletedProcess[str]:
    return run("check-config", "--strict", "--config", str(path))


# --- check-config --strict -----------------------------------------------------------------


def test_strict_check_passes_a_config_the_gateway_can_start_with(tmp_path: Path) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_text("k" * 40)
    path = write_config(tmp_path, upstream_url="https://sync.example.test", port=8123,
                        teams=restricted_teams(), audit={"hmac_key_file": str(key_file)})
    result = strict(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "strict: ok"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("token_missing", "upstream.token_file: upstream token file is missing"),
        ("token_invalid", "upstream.token_file: upstream token holds a control or non-ASCII"),
        ("hmac_missing", "audit.hmac_key_file: audit HMAC key file is missing"),
        ("hmac_short", "audit.hmac_key_file: audit HMAC key is shorter than 32 characters"),
        ("hmac_holds_token", "audit.hmac_key_file holds the upstream token"),
        ("audit_folder_missing", "audit.path: its folder does not exist"),
    ],
)
def test_strict_check_fails_on_what_would_fail_closed_at_start(
    tmp_path: Path, breakage: str, expected: str
) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_text("k" * 40)
    audit: dict[str, object] = {"hmac_key_file": str(key_file)}
    if breakage == "audit_folder_missing":
        audit["path"] = str(tmp_path / "no-such-folder" / "audit.jsonl")
    path = write_config(tmp_path, upstream_url="https://sync.example.test", port=8123,
                        teams=restricted_teams(), audit=audit)
    token = tmp_path / "token"
    if breakage == "token_missing":
        token.unlink()
    elif breakage == "token_invalid":
        token.write_bytes(b"abc\x00def")
    elif breakage == "hmac_missing":
        key_file.unlink()
    elif breakage == "hmac_short":
        key_file.write_text("short")
    elif breakage == "hmac_holds_token":
        key_file.write_text(f"{UPSTREAM_TOKEN}-and-more-to-be-long-enough")
    line = assert_one_line_error(strict(path))
    assert line.startswith(f"{path}: {expected}"), line
    assert UPSTREAM_TOKEN not in line
    # Plain check-config judges only the text: these are not its errors.
    assert run("check-config", "--config", str(path)).returncode == 0


def test_strict_check_fails_when_the_audit_folder_is_not_writable(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        path = write_config(tmp_path, upstream_url="https://sync.example.test", port=8123,
                            teams=restricted_teams(), audit={"path": str(folder / "a.jsonl")})
        result = strict(path)
        if result.returncode == 0:
            pytest.skip("running as root: every folder is writable")
        assert assert_one_line_error(result) == f"{path}: audit.path: its folder is not writable"
    finally:
        folder.chmod(0o700)


def test_strict_check_warns_about_unrestricted_teams_and_still_passes(tmp_path: Path) -> None:
    path = write_config(tmp_path, upstream_url="https://sync.example.test", port=8123)
    result = strict(path)
    assert result.returncode == 0
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2  # both default teams are ["*"]
    assert warnings[0].startswith(f"warning: {path}: teams[0].scope: team 'billing' is "
                                  "unrestricted")


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad team!", ".leading-dot", "x" * 65, "ünicode"])
def test_keys_new_refuses_a_team_name_the_config_would_refuse(name: str) -> None:
    result = run("keys", "new", "--team", name)
    line = assert_one_line_error(result)
    assert line.startswith("keys new: --team must be 1 to 64 of [A-Za-z0-9._-]")
    assert result.stdout == ""  # no key was made


@pytest.mark.parametrize(
    "stdin", [b"notakey\n", b"csg_short\n", b"csg_" + b"A" * 42 + b"!\n", b"csg_" + b"A" * 44],
    ids=["no-prefix", "short", "bad-char", "long"],
)
def test_keys_hash_refuses_input_that_is_not_a_team_key(stdin: bytes) -> None:
    result = run("keys", "hash", stdin=stdin)
    line = assert_one_line_error(result)
    assert line.startswith("keys hash: not a team key")
    assert stdin.strip().decode() not in line
    assert result.stdout == ""


# --- serve: binding, start-up, exit codes --------------------------------------------------


def test_serve_exits_1_with_one_line_when_the_port_is_taken(
    tmp_path: Path, standin: StandIn
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, upstream_url=standin.base_url, port=port)
        result = run("serve", "--config", str(path))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines == [f"serve: can't listen on 127.0.0.1:{port} (Address already in use)"]
    assert "gateway.started" not in result.stderr
    assert not (tmp_path / "audit.jsonl").exists()  # nothing started, nothing written


def test_serve_exits_1_when_the_metrics_port_is_taken(tmp_path: Path, standin: StandIn) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        path = write_config(tmp_path, upstream_url=standin.base_url, port=free_port(),
                            server={"metrics_port": metrics_port})
        result = run("serve", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"serve: can't serve metrics on 127.0.0.1:{metrics_port} (Address already in use)"]


def test_gateway_started_is_logged_once_listening(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory()
    [started] = [e for e in gateway.logs() if e["event"] == "gateway.started"]
    assert started["teams"] == 2


def test_metrics_port_serves_metrics_and_nothing_else(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    metrics_port = free_port()
    gateway = gateway_factory(server={"metrics_port": metrics_port})
    assert gateway.cancel(standin.add_pending()).status_code == 202
    with httpx.Client(base_url=f"http://127.0.0.1:{metrics_port}", trust_env=False,
                      timeout=5) as client:
        answer = client.get("/metrics")
        assert answer.status_code == 200
        key_id = keys.key_id(keys.stored_form(BILLING_KEY))
        assert (f'chroma_sync_gateway_key_requests_total{{key_id="{key_id}",team="billing"}} 1.0'
                in answer.text)
        assert client.put(f"/api/v1/invocations/{standin.add_pending()}",
                          headers={"Authorization": f"Bearer {BILLING_KEY}"}).status_code == 404
        assert client.get("/healthz").status_code == 404
    assert gateway.stop() == 0


def test_audit_unavailable_is_logged_once_per_cause(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    gateway = gateway_factory(audit={"path": str(tmp_path / "missing" / "audit.jsonl")})
    for _ in range(3):
        answer = gateway.cancel(standin.add_pending())
        assert answer.json()["error"] == "audit_unavailable"
        assert gateway.client.get("/readyz").status_code == 503
    logged = [e for e in gateway.logs() if e["event"] == "audit.unavailable"]
    assert len(logged) == 1, logged
    assert "lock file can't be opened" in logged[0]["problem"]
    assert str(tmp_path) not in logged[0]["problem"]

