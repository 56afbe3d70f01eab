"""`keys jwks`: a throwaway issuer whose JWKS and token a real gateway accepts, end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gateway.demo.standin import StandIn
from tests.conftest import GatewayFactory


def keys_jwks(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "keys", "jwks", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)


def test_the_printed_issuer_and_token_let_the_service_account_cancel(
    tmp_path: Path, gateway_factory: GatewayFactory, standin: StandIn,
) -> None:
    out = tmp_path / "idp"
    result = keys_jwks(tmp_path, "--out-dir", str(out), "--service-account", "ops/runner",
                       "--issuer", "https://cluster.example", "--audience", "gw")
    assert result.returncode == 0, result.stderr
    assert (out / "token").stat().st_mode & 0o777 == 0o600
    printed = dict(re.findall(r'^(issuer|audience|jwks_file) = "([^"]+)"$', result.stdout,
                              re.MULTILINE))
    assert printed == {"issuer": "https://cluster.example", "audience": "gw",
                       "jwks_file": str(out / "jwks.json")}
    gateway = gateway_factory(
        teams=[{"name": "ops", "scope": ["*"], "service_accounts": ["ops/runner"]}],
        issuers=[{"name": "trial", **printed}])
    token = (out / "token").read_text().strip()
    response = gateway.cancel(standin.add_pending(), key=token)
    assert response.status_code == 202
    records = gateway.wait_for_records(
        lambda rs: any(r["event"] == "cancel.result" for r in rs))
    assert [r["key_id"] for r in records if r["event"] == "cancel.result"] == ["sa:ops/runner"]
    # Another service account's token is not made by it: the team's own check still applies.
    assert gateway.cancel(standin.add_pending(), key=token + "x").status_code == 401


def test_bad_arguments_and_an_occupied_folder_are_usage_errors(tmp_path: Path) -> None:
    bad = keys_jwks(tmp_path, "--out-dir", "idp", "--service-account", "no-slash")
    assert bad.returncode == 2 and "NAMESPACE/NAME" in bad.stderr
    (tmp_path / "idp").mkdir()
    (tmp_path / "idp" / "token").write_text("old")
    occupied = keys_jwks(tmp_path, "--out-dir", "idp", "--service-account", "ops/runner")
    assert occupied.returncode == 2 and "exists" in occupied.stderr
    assert (tmp_path / "idp" / "token").read_text() == "old"
    assert "Traceback" not in bad.stderr + occupied.stderr
