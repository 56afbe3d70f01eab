"""Relative paths in a config file are relative to the file's folder, not to the directory the
gateway happens to be started from."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.access import keys
from gateway.config import load as config

TEAM = f'[[teams]]\nname = "a"\nkeys = ["{keys.stored_form(keys.new_key())}"]\nscope = ["*"]\n'


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(text + TEAM)
    return path


def test_relative_paths_resolve_against_the_config_folder_wherever_it_is_loaded_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "etc" / "gw"
    (folder / "certs").mkdir(parents=True)
    (folder / "certs" / "ca.pem").write_text("not checked here")
    path = write(folder, (
        '[upstream]\ntoken_file = "secrets/token"\nca_file = "certs/ca.pem"\n'
        '[audit]\npath = "../../var/audit.jsonl"\nhmac_key_file = "secrets/hmac"\n'
        '[[issuers]]\nname = "c"\nissuer = "https://c"\naudience = "gw"\n'
        'jwks_file = "jwks.json"\n'))
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config.load(str(path))
    assert cfg.upstream.token_file == str(folder / "secrets" / "token")
    assert cfg.upstream.ca_file == str(folder / "certs" / "ca.pem")
    assert Path(cfg.audit.path).resolve() == (tmp_path / "var" / "audit.jsonl").resolve()
    assert cfg.audit.hmac_key_file == str(folder / "secrets" / "hmac")
    assert cfg.issuers[0].jwks_file == str(folder / "jwks.json")


def test_a_config_given_by_a_relative_path_resolves_against_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(tmp_path / "conf", '[upstream]\ntoken_file = "token"\n[audit]\npath = "audit.jsonl"\n')
    monkeypatch.chdir(tmp_path)
    cfg = config.load("conf/config.toml")
    assert cfg.upstream.token_file == str(tmp_path / "conf" / "token")
    assert cfg.audit.path == str(tmp_path / "conf" / "audit.jsonl")


def test_absolute_paths_and_the_environment_token_are_left_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream]\ntoken_env = "CHROMA_TOKEN"\n'
                           '[audit]\npath = "/var/lib/chroma-sync-gateway/audit.jsonl"\n')
    cfg = config.load(str(path))
    assert cfg.upstream.token_env == "CHROMA_TOKEN"
    assert cfg.audit.path == "/var/lib/chroma-sync-gateway/audit.jsonl"


def test_a_relative_ca_file_is_checked_where_it_resolves(tmp_path: Path) -> None:
    path = write(tmp_path / "conf", '[upstream]\ntoken_file = "t"\nca_file = "missing.pem"\n'
                                    '[audit]\npath = "a.jsonl"\n')
    with pytest.raises(config.ConfigError, match=r"upstream\.ca_file must name a readable file"):
        config.load(str(path))
