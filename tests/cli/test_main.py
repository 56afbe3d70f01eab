"""The command line, run for real: `python -m gateway ...`, and `gateway.cli.main.main`
in-process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__
from gateway.access import keys
from gateway.cli import main as cli
from gateway.secrets.sources import fingerprint
from tests.harness import (
    BILLING_KEY,
    BILLING_KEY_2,
    FROZEN_KEY,
    TEAM_KEYS,
    UPSTREAM_TOKEN,
    render_toml,
    write_config,
)

CONSOLE_SCRIPT = Path(sys.executable).parent / "chroma-sync-gateway"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMA_SYNC")}
    env.update(extra)
    return env


def run(
    *args: str, stdin: bytes = b"", cwd: Path | None = None, env: dict[str, str] | None = None,
    program: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*(program or [sys.executable, "-m", "gateway"]), *args],
        input=stdin, capture_output=True, cwd=cwd, env=env or clean_env(), timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def good_config(folder: Path) -> Path:
    return write_config(folder, upstream_url="https://sync.example.test", port=8123)


def bad_config(folder: Path) -> Path:
    path = good_config(folder)
    path.write_text(path.read_text().replace("timeout = 2.0", 'timeout = "ten"'))
    return path


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- keys ----------------------------------------------------------------------------------

def parse_keys_new(stdout: str) -> tuple[str, str, str]:
    fields = dict(line.split(":", 1) for line in stdout.splitlines() if ":" in line)
    return fields["team"].strip(), fields["key"].strip(), fields["stored"].strip()


def test_keys_new_prints_a_key_and_its_stored_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "new", "--team", "billing"]) == 0
    out = capsys.readouterr()
    team, key, stored = parse_keys_new(out.out)
    assert team == "billing"
    assert re.fullmatch(r"csg_[A-Za-z0-9_-]{43}", key)
    assert stored == keys.stored_form(key)
    assert out.out.count(key) == 1  # shown once
    assert key not in out.err


def test_keys_new_stored_form_matches_keys_hash_of_the_key() -> None:
    made = run("keys", "new", "--team", "billing")
    assert made.returncode == 0, made.stderr
    _, key, stored = parse_keys_new(made.stdout)
    hashed = run("keys", "hash", stdin=f"{key}\n".encode())
    assert hashed.returncode == 0, hashed.stderr
    assert hashed.stdout == f"{stored}\n"


def test_keys_new_gives_a_different_key_each_time() -> None:
    first = parse_keys_new(run("keys", "new", "--team", "a").stdout)[1]
    second = parse_keys_new(run("keys", "new", "--team", "a").stdout)[1]
    assert first != second


def test_keys_new_without_a_team_is_a_usage_error() -> None:
    result = run("keys", "new")
    assert result.returncode == 2
    assert "--team" in result.stderr and "Traceback" not in result.stderr


def test_keys_hash_prints_the_known_stored_form() -> None:
    result = run("keys", "hash", stdin=b"csg_" + b"A" * 43 + b"\n")
    assert result.returncode == 0
    assert result.stdout == (
        "sha256:fb9dbd8a34555761880efb0edf3572d6ac27e35a9be6ecb8ece50459a1821454\n"
    )


@pytest.mark.parametrize(
    "stdin", [b"", b"\n", b"   \n\t"], ids=["empty", "newline", "whitespace"]
)
def test_keys_hash_with_no_key_on_stdin_exits_2(stdin: bytes) -> None:
    line = assert_one_line_error(run("keys", "hash", stdin=stdin))
    assert line == "keys hash: expected one key on stdin"


def test_keys_hash_with_two_keys_on_stdin_exits_2_without_echoing_them() -> None:
    result = run("keys", "hash", stdin=f"{BILLING_KEY} {BILLING_KEY_2}\n".encode())
    line = assert_one_line_error(result)
    assert BILLING_KEY not in line and BILLING_KEY_2 not in line
    assert result.stdout == ""


def test_keys_hash_with_non_utf8_stdin_exits_2() -> None:
    line = assert_one_line_error(run("keys", "hash", stdin=b"csg_\xff\xfe\n"))
    assert line == "keys hash: the key on stdin is not UTF-8 text"


# --- check-config --------------------------------------------------------------------------

def test_check_config_on_a_good_config_summarizes_it_without_secrets(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    result = run("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"config: {path}: ok" in out
    assert "upstream: https://sync.example.test" in out
    assert f"audit: {tmp_path / 'audit.jsonl'}" in out
    assert "teams: 2" in out
    billing = keys.key_id(keys.stored_form(BILLING_KEY))
    billing_2 = keys.key_id(keys.stored_form(BILLING_KEY_2))
    frozen = keys.key_id(keys.stored_form(FROZEN_KEY))
    assert f"billing: 2 key(s) [{billing}, {billing_2}], enabled" in out
    assert f"frozen: 1 key(s) [{frozen}], DISABLED" in out
    assert f"fingerprint {fingerprint(UPSTREAM_TOKEN)}" in out
    everything = result.stdout + result.stderr
    assert UPSTREAM_TOKEN not in everything
    for key in TEAM_KEYS:
        assert key not in everything and key[4:20] not in everything
        assert keys.stored_form(key) not in everything  # only the key_id handle is shown


def test_check_config_in_process_reports_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check-config", "--config", str(good_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "teams: 2" in out and "billing: 2 key(s)" in out and "frozen: 1 key(s)" in out
    assert UPSTREAM_TOKEN not in out


def test_check_config_with_the_token_in_the_environment_shows_only_a_fingerprint(
    tmp_path: Path,
) -> None:
    path = good_config(tmp_path)
    text = re.sub(r'token_file = ".*"', 'token_env = "CSG_TEST_TOKEN"', path.read_text())
    path.write_text(text)
    result = run("check-config", "--config", str(path),
                 env=clean_env(CSG_TEST_TOKEN=UPSTREAM_TOKEN))
    assert result.returncode == 0, result.stderr
    assert "env CSG_TEST_TOKEN" in result.stdout
    assert fingerprint(UPSTREAM_TOKEN) in result.stdout
    assert UPSTREAM_TOKEN not in result.stdout + result.stderr


def test_check_config_with_an_unusable_token_says_so_without_echoing_it(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    (tmp_path / "token").write_text("first-half\r\nsecond-half\n")
    result = run("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "upstream token" in result.stdout and "NOT USABLE" in result.stdout
    assert "first-half" not in result.stdout + result.stderr
    assert "second-half" not in result.stdout + result.stderr


def test_check_config_with_a_missing_token_file_says_so(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    (tmp_path / "token").unlink()
    result = run("check-config", "--config", str(path))
    assert "NOT USABLE: upstream token file is missing" in result.stdout


def test_check_config_on_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    result = run("check-config", "--config", str(path))
    line = assert_one_line_error(result)
    assert line == f'{path}: upstream.timeout must be a positive number, got "ten"'
    assert result.stdout == ""


def test_check_config_with_a_raw_key_in_config_does_not_print_it(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    raw = keys.new_key()
    path.write_text(path.read_text().replace(keys.stored_form(FROZEN_KEY), raw))
    result = run("check-config", "--config", str(path))
    line = assert_one_line_error(result)
    assert "keys hash" in line
    assert raw not in result.stdout + result.stderr


def test_check_config_reads_the_path_from_the_environment(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    result = run("check-config", env=clean_env(CHROMA_SYNC_GATEWAY_CONFIG=str(path)))
    assert assert_one_line_error(result).startswith(f"{path}: ")


def test_check_config_option_wins_over_the_environment(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    good = good_config(tmp_path / "good")
    bad = bad_config(tmp_path)
    result = run("check-config", "--config", str(good),
                 env=clean_env(CHROMA_SYNC_GATEWAY_CONFIG=str(bad)))
    assert result.returncode == 0, result.stderr


def test_check_config_defaults_to_config_toml_in_the_working_directory(tmp_path: Path) -> None:
    good_config(tmp_path)
    result = run("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config: config.toml: ok" in result.stdout


def test_check_config_in_process_returns_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(render_toml({"server": {"port": 1}}))
    assert cli.main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{path}: ")


# --- serve ---------------------------------------------------------------------------------

def test_serve_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    line = assert_one_line_error(run("serve", "--config", str(path)))
    assert line == f'{path}: upstream.timeout must be a positive number, got "ten"'


def test_serve_with_no_config_file_exits_2_naming_config_toml(tmp_path: Path) -> None:
    line = assert_one_line_error(run("serve", cwd=tmp_path))
    assert line == "config.toml: file not found"


def test_serve_with_an_out_of_range_port_option_exits_2(tmp_path: Path) -> None:
    line = assert_one_line_error(run("serve", "--config", str(good_config(tmp_path)),
                                     "--port", "70000"))
    assert "--port" in line and "70000" in line


def test_serve_with_a_non_numeric_port_option_exits_2(tmp_path: Path) -> None:
    result = run("serve", "--config", str(good_config(tmp_path)), "--port", "http")
    assert result.returncode == 2 and "Traceback" not in result.stderr


# --- usage ---------------------------------------------------------------------------------

def test_unknown_command_exits_2() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_unknown_command_in_process_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_exits_2() -> None:
    result = run()
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_version_prints_the_package_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"chroma-sync-gateway {__version__}"


def test_python_dash_m_gateway_works_like_the_console_script() -> None:
    assert CONSOLE_SCRIPT.exists(), "the package is not installed with its console script"
    cases = ((["--version"], b""), (["keys", "hash"], BILLING_KEY.encode()), (["--help"], b""))
    for args, stdin in cases:
        module = run(*args, stdin=stdin)
        script = run(*args, stdin=stdin, program=[str(CONSOLE_SCRIPT)])
        assert module.returncode == script.returncode == 0
        assert module.stdout == script.stdout


def test_console_script_exit_status_for_a_bad_config_is_2(tmp_path: Path) -> None:
    result = run("check-config", "--config", str(bad_config(tmp_path)),
                 program=[str(CONSOLE_SCRIPT)])
    assert_one_line_error(result)


# --- audit verify --------------------------------------------------------------------------

def test_audit_verify_on_a_missing_path_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "absent.jsonl"
    line = assert_one_line_error(run("audit", "verify", str(missing)))
    assert line == f"audit verify: {missing}: no such file"


def test_audit_verify_without_a_path_exits_2() -> None:
    result = run("audit", "verify")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_the_query_formats_offered_are_the_ones_query_writes() -> None:
    from gateway.audit import query
    from gateway.cli import audit_fleet

    assert audit_fleet.FORMATS == query.FORMATS


# --- the parser: only the named command's arguments are built ---------------------------------

COMMAND_LINES = [
    ["serve", "--config", "c.toml", "--port", "8081"],
    ["check-config", "--strict"],
    ["keys", "new", "--team", "billing", "--out", "k"],
    ["keys", "hash"],
    ["keys", "jwks", "--out-dir", "d", "--service-account", "ns/sa", "--hours", "2"],
    ["audit", "verify", "-", "a.jsonl", "--jobs", "2", "--public-key", "k", "--allow-partial"],
    ["audit", "keygen", "--name", "n", "--out", "f"],
    ["audit", "prove", "a.jsonl", "--chain", "c" * 32, "--seq", "7", "--index", "i"],
    ["audit", "query", "s3://b/p", "--team", "t", "--outcome", "cancelled", "--format", "csv"],
    ["audit", "check-proof", "p.json", "--public-key", "k"],
    ["bulk-cancel", "--url", "http://127.0.0.1:1", "--source", "s", "--dry-run"],
    ["demo", "--port", "0"],
    ["standin", "--seed", "3"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda argv: " ".join(argv[:2]))
def test_the_parser_built_for_a_command_parses_it_as_the_whole_parser_does(
        argv: list[str]) -> None:
    assert cli.build_parser(argv).parse_args(argv) == cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [[], ["keys"], ["audit"], ["audit", "prove"]])
def test_help_lists_every_command_and_the_named_ones_options(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    shown = []
    for parser in (cli.build_parser([*argv, "--help"]), cli.build_parser()):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([*argv, "--help"])
        assert info.value.code == 0
        shown.append(capsys.readouterr().out)
    assert shown[0] == shown[1]
    if argv == ["audit", "prove"]:
        assert "--index INDEX_FILE" in shown[0]


@pytest.mark.parametrize("argv", [["audit", "prove", "x", "--sequence", "1"],
                                  ["keys", "new"], ["audit", "frobnicate"], ["serve", "--bogus"]])
def test_a_usage_error_is_the_same_with_only_the_named_command_built(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    errors = []
    for parser in (cli.build_parser(argv), cli.build_parser()):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1]


def test_the_parser_for_one_command_leaves_the_others_arguments_out() -> None:
    parser = cli.build_parser(["audit", "prove"])
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "1"])  # serve was listed, not built
