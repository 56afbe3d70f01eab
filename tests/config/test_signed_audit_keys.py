"""The 0.3 audit keys (signing key, origin, instance, checkpoint file); check-config --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit import note
from tests.config.test_load import changed, load_error, load_ok


def test_the_signing_keys_are_read_and_relative_paths_follow_the_config(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, changed("audit", signing_key_file="signing.key",
                                    origin="audit.example.com/billing", instance="pod-7",
                                    checkpoint_file="checkpoint.note"))
    assert cfg.audit.signing_key_file == str(tmp_path / "signing.key")
    assert cfg.audit.checkpoint_file == str(tmp_path / "checkpoint.note")
    assert (cfg.audit.origin, cfg.audit.instance) == ("audit.example.com/billing", "pod-7")
    defaults = load_ok(tmp_path, changed("audit"))
    assert (defaults.audit.signing_key_file, defaults.audit.origin, defaults.audit.instance,
            defaults.audit.checkpoint_file) == (None, None, None, None)


@pytest.mark.parametrize(
    "values,expected",
    [
        ({"signing_key_file": "token"}, "audit.signing_key_file must not be the upstream token "
         "file"),
        ({"checkpoint_file": "audit.jsonl"}, "audit.checkpoint_file must not be audit.path"),
        ({"checkpoint_file": "token"}, "audit.checkpoint_file must not be upstream.token_file"),
        ({"signing_key_file": "k", "checkpoint_file": "k"},
         "audit.checkpoint_file must not be audit.signing_key_file"),
        ({"origin": "has space"}, "audit.origin must be 1 to 255 characters without spaces"),
        ({"origin": ""}, "audit.origin must be a non-empty string"),
        ({"instance": "x" * 256}, "audit.instance must be 1 to 255 characters"),
        ({"signing_key_file": 5}, "audit.signing_key_file must be a non-empty string"),
    ],
)
def test_bad_values_are_refused_in_one_line(
    tmp_path: Path, values: dict[str, object], expected: str
) -> None:
    assert expected in load_error(tmp_path, changed("audit", **values))


def check_config(tmp_path: Path, key_text: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "token").write_text("upstream-token-0123456789\n")
    if key_text is not None:
        (tmp_path / "signing.key").write_text(key_text)
    from tests.harness import render_toml

    (tmp_path / "config.toml").write_text(render_toml(
        changed("audit", signing_key_file="signing.key")))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--strict", "--config",
         str(tmp_path / "config.toml")], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "key_text,expected",
    [
        (None, "audit.signing_key_file: audit signing key file"),
        ("PRIVATE+KEY+broken\n", "audit.signing_key_file: audit signing key is not a signed-note "
         "private key"),
        ("TOKEN", "audit.signing_key_file: holds the upstream token"),
    ],
)
def test_strict_check_config_fails_on_an_unusable_signing_key(
    tmp_path: Path, key_text: str | None, expected: str
) -> None:
    if key_text == "TOKEN":  # a key whose name holds the token: auditors would see it
        key_text = note.generate_key("gw-upstream-token-0123456789").encoded + "\n"
    result = check_config(tmp_path, key_text)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    if key_text is not None:
        assert key_text.strip() not in result.stderr + result.stdout


def test_strict_check_config_accepts_a_good_signing_key(tmp_path: Path) -> None:
    result = check_config(tmp_path, note.generate_key("audit.example/gw").encoded + "\n")
    assert result.returncode == 0, result.stderr
    assert "signing on" in result.stdout and "strict: ok" in result.stdout
