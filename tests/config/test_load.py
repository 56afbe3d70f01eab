"""Configuration: the example file, every validation rule, path resolution, defaults."""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.access import keys
from gateway.config import load as config
from gateway.config import model
from gateway.config.teams import STORED_KEY_RE
from gateway.errors import ConfigError
from tests.harness import render_toml

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"

KEY_A = keys.stored_form("csg_test-key-a")
KEY_B = keys.stored_form("csg_test-key-b")
KEY_C = keys.stored_form("csg_test-key-c")

DELETE = object()
WHOLE = "must be a whole number from "
POSITIVE = "must be a positive number, got "


def base() -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 8080},
        "upstream": {"base_url": "https://sync.example.test", "token_file": "token"},
        "audit": {"path": "audit.jsonl"},
        "teams": [{"name": "billing", "keys": [KEY_A], "scope": ["*"]}],
    }


def changed(section: str, **values: Any) -> dict[str, Any]:
    """The base config with `section` keys set (or removed with DELETE)."""
    data = base()
    table = data["teams"][0] if section == "teams" else data[section]
    for key, value in values.items():
        if value is DELETE:
            table.pop(key, None)
        else:
            table[key] = value
    return data


def write(tmp_path: Path, content: str | bytes | dict[str, Any]) -> Path:
    path = tmp_path / "config.toml"
    if isinstance(content, dict):
        content = render_toml(content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def load_error(tmp_path: Path, content: str | bytes | dict[str, Any]) -> str:
    """Load a bad config; return its message after checking it is one line naming the file."""
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}: "), message
    assert "Traceback" not in message
    return message.removeprefix(f"{path}: ")


def load_ok(tmp_path: Path, content: str | dict[str, Any]) -> model.Config:
    return config.load(str(write(tmp_path, content)))


# --- config.example.toml -------------------------------------------------------------------

KEY_LINE = re.compile(r"^(#\s*)?([a-z_]+)\s*=\s*(.*)$")
SECTIONS = {
    "[server]": "server", "[upstream]": "upstream", "[audit]": "audit", "[[teams]]": "teams",
    "[[issuers]]": "issuers", "[bulk]": "bulk", "[traces]": "traces",
}


def example_keys() -> dict[str, dict[str, str]]:
    """Per section: key name -> the whole line, for set and commented-out keys alike."""
    found: dict[str, dict[str, str]] = {}
    section = None
    for line in EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if stripped in SECTIONS:
            section = SECTIONS[stripped]
            found.setdefault(section, {})
            continue
        match = KEY_LINE.match(stripped)
        if section and match:
            found[section][match.group(2)] = line
    return found


def accepted_keys() -> dict[str, set[str]]:
    return {
        name: {f.name for f in dataclasses.fields(cls)}
        for name, cls in (
            ("server", model.ServerConfig),
            ("upstream", model.UpstreamConfig),
            ("audit", model.AuditConfig),
            ("teams", model.TeamConfig),
            ("issuers", model.IssuerConfig),
            ("bulk", model.BulkConfig),
            ("traces", model.TracesConfig),
        )
    }


def test_example_config_loads_with_config_load() -> None:
    cfg = config.load(str(EXAMPLE))
    assert cfg.source == str(EXAMPLE)
    assert cfg.upstream.token_file and cfg.upstream.token_env is None
    assert cfg.upstream.transport == "native"
    assert [t.name for t in cfg.teams] == ["billing"]


def test_example_config_shows_every_key_the_parser_accepts() -> None:
    shown = example_keys()
    for section, names in accepted_keys().items():
        missing = names - set(shown.get(section, {}))
        assert not missing, f"[{section}] lacks {sorted(missing)}"


def test_example_config_shows_no_key_the_parser_refuses() -> None:
    accepted = accepted_keys()
    for section, names in example_keys().items():
        assert set(names) <= accepted[section], section


def test_example_config_comments_every_key_on_its_line() -> None:
    for section, lines in example_keys().items():
        for name, line in lines.items():
            body = line.lstrip().lstrip("#")
            assert "#" in body, f"{section}.{name} has no comment: {line!r}"
            required = {"path", "name", "keys", "scope"}
            assert "default" in body.split("#", 1)[1] or name in required, (
                f"{section}.{name} does not say its default"
            )


def test_example_config_holds_only_placeholder_stored_keys() -> None:
    text = EXAMPLE.read_text()
    assert "csg_" not in text
    cfg = config.load(str(EXAMPLE))
    for team in cfg.teams:
        for key in team.keys:
            assert STORED_KEY_RE.fullmatch(key)


def test_example_config_token_source_is_exactly_one_of_file_and_env() -> None:
    shown = example_keys()["upstream"]
    assert not shown["token_file"].lstrip().startswith("#")
    assert shown["token_env"].lstrip().startswith("#")


def test_example_config_commented_keys_are_valid_when_uncommented(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder\n")
    text = EXAMPLE.read_text()
    commented = [
        (section, name, line)
        for section, lines in example_keys().items()
        for name, line in lines.items()
        if line.lstrip().startswith("#")
    ]
    assert {name for _, name, _ in commented} >= {
        "token_env", "ca_file", "hmac_key_file", "max_bytes", "enabled",
    }
    for section, name, line in commented:
        variant = text.replace(line, line.lstrip().lstrip("#").lstrip(), 1)
        if name == "token_env":
            token_file_line = example_keys()["upstream"]["token_file"]
            variant = variant.replace(token_file_line, "# " + token_file_line, 1)
        if name == "ca_file":
            value = re.search(r'ca_file\s*=\s*("[^"]*")', line)
            assert value is not None
            variant = variant.replace(value.group(1), f'"{ca}"', 1)
        cfg = config.parse(tomllib.loads(variant), source="variant")
        table = cfg.teams[0] if section == "teams" else getattr(cfg, section)
        assert getattr(table, name) is not None, f"{section}.{name}"


# --- defaults and immutability -------------------------------------------------------------

def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, {
        "upstream": {"token_env": "CHROMA_SYNC_TOKEN"},
        "audit": {"path": "audit.jsonl"},
        "teams": [{"name": "billing", "keys": [KEY_A], "scope": ["*"]}],
    })
    assert cfg.server == model.ServerConfig(host="127.0.0.1", port=8080, grace_period=10.0)
    up = cfg.upstream
    assert up.base_url == "https://sync.trychroma.com"
    assert (up.token_file, up.token_env, up.ca_file) == (None, "CHROMA_SYNC_TOKEN", None)
    assert (up.connect_timeout, up.timeout) == (2.0, 10.0)
    assert (up.max_connections, up.transport) == (100, "native")
    assert cfg.audit == model.AuditConfig(
        # Relative to the config file's folder (tests/config/test_paths.py).
        path=str(tmp_path / "audit.jsonl"), fsync=True, hmac_key_file=None,
        checkpoint_every=1000,
        checkpoint_seconds=300.0, stdout=False, max_bytes=None,
    )
    team = cfg.teams[0]
    assert (team.enabled, team.rate_limit, team.burst) == (True, 50.0, 100)


def test_burst_defaults_to_twice_the_rate_limit_rounded_up(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, changed("teams", rate_limit=2.3))
    assert cfg.teams[0].burst == 5
    cfg = load_ok(tmp_path, changed("teams", rate_limit=0.1))
    assert cfg.teams[0].burst == 1


def test_integer_seconds_are_accepted_as_floats(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, changed("upstream", timeout=3, connect_timeout=1))
    assert cfg.upstream.timeout == 3.0 and isinstance(cfg.upstream.timeout, float)


@pytest.mark.parametrize("transport", ["native", "aiohttp", "httpx"])
def test_each_transport_is_accepted(tmp_path: Path, transport: str) -> None:
    loaded = load_ok(tmp_path, changed("upstream", transport=transport))
    assert loaded.upstream.transport == transport


def test_team_keys_are_kept_as_a_tuple_in_order(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, changed("teams", keys=[KEY_B, KEY_A]))
    assert cfg.teams[0].keys == (KEY_B, KEY_A)


@pytest.mark.parametrize(
    ("target", "attribute"),
    [
        ("config", "teams"),
        ("server", "port"),
        ("upstream", "timeout"),
        ("audit", "path"),
        ("team", "enabled"),
    ],
)
def test_config_objects_are_frozen(tmp_path: Path, target: str, attribute: str) -> None:
    cfg = load_ok(tmp_path, base())
    obj = {
        "config": cfg, "server": cfg.server, "upstream": cfg.upstream, "audit": cfg.audit,
        "team": cfg.teams[0],
    }[target]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attribute, None)


# --- the spec's own example message --------------------------------------------------------

def test_non_number_timeout_gives_the_specs_example_message(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("upstream", timeout="ten"))
    assert message == 'upstream.timeout must be a positive number, got "ten"'


# --- unknown keys --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({**base(), "logging": {"level": "debug"}}, "logging"),
        (changed("server", workers=4), "server.workers"),
        (changed("upstream", token="secret"), "upstream.token"),
        (changed("audit", rotate=True), "audit.rotate"),
        (changed("teams", rate=5), "teams[0].rate"),
    ],
    ids=["top", "server", "upstream", "audit", "team"],
)
def test_unknown_key_is_refused_naming_its_dotted_path(
    tmp_path: Path, content: dict[str, Any], key: str
) -> None:
    assert load_error(tmp_path, content) == f"{key} is not a known key"


def test_unknown_key_with_a_newline_in_its_name_still_gives_one_line(tmp_path: Path) -> None:
    text = '"evil\\nkey" = 1\n' + render_toml(base())
    assert load_error(tmp_path, text) == '"evil\\nkey" is not a known key'


def test_unknown_team_key_in_second_team_names_its_index(tmp_path: Path) -> None:
    data = base()
    data["teams"].append({"name": "ops", "keys": [KEY_B], "scope": ["*"], "colour": "red"})
    assert load_error(tmp_path, data) == "teams[1].colour is not a known key"


# --- wrong types ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("server", "host", 5, "must be a non-empty string, got 5"),
        ("server", "host", "", 'must be a non-empty string, got ""'),
        ("server", "port", "8080", WHOLE + '0 to 65535, got "8080"'),
        ("server", "port", 8080.0, WHOLE + "0 to 65535, got 8080.0"),
        ("server", "port", True, WHOLE + "0 to 65535, got true"),
        ("server", "grace_period", "10s", POSITIVE + '"10s"'),
        ("upstream", "base_url", ["https://a"], "must be a non-empty string, got an array"),
        ("upstream", "token_file", 1, "must be a non-empty string, got 1"),
        ("upstream", "timeout", True, POSITIVE + "true"),
        ("upstream", "max_connections", 2.5, WHOLE + "1 to 10000, got 2.5"),
        ("upstream", "transport", "requests",
         'must be "native", "aiohttp" or "httpx", got "requests"'),
        ("upstream", "transport", 1, 'must be "native", "aiohttp" or "httpx", got 1'),
        ("audit", "path", 7, "must be a non-empty string, got 7"),
        ("audit", "path", "", 'must be a non-empty string, got ""'),
        ("audit", "fsync", "yes", 'must be true or false, got "yes"'),
        ("audit", "fsync", 1, "must be true or false, got 1"),
        ("audit", "stdout", "false", 'must be true or false, got "false"'),
        ("audit", "hmac_key_file", False, "must be a non-empty string, got false"),
        ("audit", "checkpoint_every", "1000", WHOLE + '1 to 1000000000, got "1000"'),
        ("audit", "checkpoint_seconds", "5m", POSITIVE + '"5m"'),
        ("audit", "max_bytes", "1MB", WHOLE + '65536 to 1125899906842624, got "1MB"'),
        ("teams", "name", 3, "must be a non-empty string, got 3"),
        ("teams", "enabled", "no", 'must be true or false, got "no"'),
        ("teams", "rate_limit", "50/s", POSITIVE + '"50/s"'),
        ("teams", "burst", 1.5, WHOLE + "1 to 1000000000, got 1.5"),
    ],
)
def test_wrong_type_is_refused_naming_key_and_value(
    tmp_path: Path, section: str, key: str, value: Any, expected: str
) -> None:
    prefix = "teams[0]" if section == "teams" else section
    assert load_error(tmp_path, changed(section, **{key: value})) == f"{prefix}.{key} {expected}"


@pytest.mark.parametrize("section", ["server", "upstream", "audit"])
def test_section_that_is_not_a_table_is_refused(tmp_path: Path, section: str) -> None:
    data = base()
    text = render_toml({k: v for k, v in data.items() if k != section})
    message = load_error(tmp_path, f"{section} = 5\n" + text)
    assert message == f"{section} must be a table, got 5"


def test_string_with_a_control_character_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("server", host="127.0.0.1\u0007evil"))
    assert message == "server.host must not hold control characters"


# --- out of range --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("section", "key", "literal", "expected"),
    [
        ("server", "port", "70000", WHOLE + "0 to 65535, got 70000"),
        ("server", "port", "-1", WHOLE + "0 to 65535, got -1"),
        ("server", "grace_period", "0", POSITIVE + "0"),
        ("server", "grace_period", "nan", POSITIVE + "nan"),
        ("upstream", "timeout", "-1.5", POSITIVE + "-1.5"),
        ("upstream", "timeout", "0.0", POSITIVE + "0.0"),
        ("upstream", "timeout", "inf", POSITIVE + "inf"),
        ("upstream", "timeout", "nan", POSITIVE + "nan"),
        ("upstream", "connect_timeout", "-inf", POSITIVE + "-inf"),
        ("upstream", "connect_timeout", "0", POSITIVE + "0"),
        ("upstream", "max_connections", "0", WHOLE + "1 to 10000, got 0"),
        ("upstream", "max_connections", "10001", WHOLE + "1 to 10000, got 10001"),
        ("audit", "checkpoint_every", "0", WHOLE + "1 to 1000000000, got 0"),
        ("audit", "checkpoint_seconds", "-5", POSITIVE + "-5"),
        ("audit", "checkpoint_seconds", "+inf", POSITIVE + "inf"),
        ("audit", "max_bytes", "65535", WHOLE + "65536 to 1125899906842624, got 65535"),
        ("teams", "rate_limit", "0", POSITIVE + "0"),
        ("teams", "rate_limit", "nan", POSITIVE + "nan"),
        ("teams", "burst", "0", WHOLE + "1 to 1000000000, got 0"),
    ],
)
def test_out_of_range_value_is_refused(
    tmp_path: Path, section: str, key: str, literal: str, expected: str
) -> None:
    data = changed(section, **{key: DELETE})
    text = render_toml(data)
    header = "[[teams]]\n" if section == "teams" else f"[{section}]\n"
    text = text.replace(header, f"{header}{key} = {literal}\n", 1)
    prefix = "teams[0]" if section == "teams" else section
    assert load_error(tmp_path, text) == f"{prefix}.{key} {expected}"


def test_port_bounds_and_smallest_max_bytes_are_accepted(tmp_path: Path) -> None:
    assert load_ok(tmp_path, changed("server", port=65535)).server.port == 65535
    assert load_ok(tmp_path, changed("server", port=0)).server.port == 0
    assert load_ok(tmp_path, changed("audit", max_bytes=65536)).audit.max_bytes == 65536


# --- upstream.base_url ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "url",
    [
        "ftp://sync.example.test",
        "sync.example.test",
        "https://",
        "https:///api",
        "https://user@sync.example.test",
        "https://user:pw@sync.example.test",
        "https://@sync.example.test",
        "https://sync.example.test/?a=1",
        "https://sync.example.test#frag",
        "https://sync.example.test/%2e%2e/admin",
        "https://sync.example.test/a/../b",
        "https://sync.example.test//x",
        "http://sync.example.test",
        "http://10.0.0.1:8080",
        "http://localhost.example.test",
        "https://sync.example.test:99999",
        "https://sync.example.test:port",
    ],
)
def test_bad_base_url_is_refused(tmp_path: Path, url: str) -> None:
    message = load_error(tmp_path, changed("upstream", base_url=url))
    assert message.startswith("upstream.base_url ")


def test_plain_http_to_a_remote_host_is_refused_for_clear_text_token(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("upstream", base_url="http://sync.example.test"))
    assert "https" in message and "loopback" in message


def test_base_url_with_credentials_does_not_echo_them(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, changed("upstream", base_url="https://admin:hunter2-secret@sync.example.test")
    )
    assert message.startswith("upstream.base_url ")
    assert "hunter2-secret" not in message


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
        ("http://localhost:9000", "http://localhost:9000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("https://sync.example.test/", "https://sync.example.test"),
        ("https://sync.example.test/prefix/", "https://sync.example.test/prefix"),
        ("https://sync.example.test:8443", "https://sync.example.test:8443"),
    ],
)
def test_good_base_url_is_accepted_with_trailing_slash_stripped(
    tmp_path: Path, url: str, stored: str
) -> None:
    assert load_ok(tmp_path, changed("upstream", base_url=url)).upstream.base_url == stored


# --- the upstream token source and ca_file -------------------------------------------------

def test_both_token_file_and_token_env_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("upstream", token_env="CHROMA_SYNC_TOKEN"))
    assert message == "upstream.token_file or upstream.token_env must be set (exactly one)"


def test_neither_token_file_nor_token_env_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("upstream", token_file=DELETE))
    assert message == "upstream.token_file or upstream.token_env must be set (exactly one)"


def test_missing_upstream_section_is_refused_for_lack_of_a_token(tmp_path: Path) -> None:
    data = base()
    del data["upstream"]
    assert "upstream.token_file or upstream.token_env" in load_error(tmp_path, data)


@pytest.mark.parametrize("name", ["1TOKEN", "CHROMA-TOKEN", "CHROMA TOKEN", "$TOKEN", "TÖKEN"])
def test_bad_environment_variable_name_is_refused(tmp_path: Path, name: str) -> None:
    message = load_error(tmp_path, changed("upstream", token_file=DELETE, token_env=name))
    assert message.startswith("upstream.token_env must be an environment variable name")


def test_good_environment_variable_name_is_accepted(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, changed("upstream", token_file=DELETE, token_env="_CHROMA_2"))
    assert cfg.upstream.token_env == "_CHROMA_2"


def test_missing_ca_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    message = load_error(tmp_path, changed("upstream", ca_file=str(missing)))
    assert message.startswith("upstream.ca_file must name a readable file")


def test_ca_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("upstream", ca_file=str(tmp_path)))
    assert message.startswith("upstream.ca_file must name a readable file")


def test_existing_ca_file_is_accepted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem\n")
    assert load_ok(tmp_path, changed("upstream", ca_file=str(ca))).upstream.ca_file == str(ca)


# --- stored keys ---------------------------------------------------------------------------

HEX = KEY_A.removeprefix("sha256:")
RAW_KEY = keys.new_key()


@pytest.mark.parametrize(
    "stored",
    [
        "sha256:" + HEX.upper(),
        "sha256:" + HEX[:63],
        "sha256:" + HEX + "0",
        HEX,
        "sha1:" + HEX,
        "SHA256:" + HEX,
        " sha256:" + HEX,
        "sha256:" + HEX[:-1] + "g",
        "",
    ],
    ids=["uppercase", "63-digits", "65-digits", "no-prefix", "sha1", "upper-prefix",
         "leading-space", "non-hex", "empty"],
)
def test_malformed_stored_key_is_refused_without_echoing_it(tmp_path: Path, stored: str) -> None:
    message = load_error(tmp_path, changed("teams", keys=[stored]))
    assert message == "teams[0].keys[0] must be a stored key, sha256: and 64 lowercase hex digits"
    if stored:
        assert stored not in message and HEX[:12] not in message.lower()


def test_raw_team_key_in_config_gets_a_hint_and_is_not_echoed(tmp_path: Path) -> None:
    raw = keys.new_key()
    message = load_error(tmp_path, changed("teams", keys=[KEY_A, raw]))
    assert message.startswith("teams[0].keys[1] must be a stored key")
    assert "keys hash" in message
    assert raw not in message and raw[4:] not in message and raw[4:16] not in message


def test_non_string_stored_key_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("teams", keys=[42]))
    assert message.startswith("teams[0].keys[0] must be a stored key")


@pytest.mark.parametrize(
    ("keys_value", "shown"),
    [([], "got an array"), (RAW_KEY, "got a string"), (DELETE, "got nothing"), (7, "got 7")],
    ids=["empty-array", "a-raw-key-string", "missing", "a-number"],
)
def test_team_without_an_array_of_keys_is_refused_without_echoing_a_string(
    tmp_path: Path, keys_value: Any, shown: str
) -> None:
    message = load_error(tmp_path, changed("teams", keys=keys_value))
    assert message == f"teams[0].keys must be a non-empty array of stored keys, {shown}"
    assert RAW_KEY[4:] not in message


def test_same_key_in_two_teams_is_refused(tmp_path: Path) -> None:
    data = base()
    data["teams"].append({"name": "ops", "keys": [KEY_B, KEY_A], "scope": ["*"]})
    assert load_error(tmp_path, data) == "teams[1].keys[1] repeats a key already configured"


def test_same_key_twice_in_one_team_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("teams", keys=[KEY_A, KEY_A]))
    assert message == "teams[0].keys[1] repeats a key already configured"


def test_several_keys_per_team_and_several_teams_are_accepted(tmp_path: Path) -> None:
    data = changed("teams", keys=[KEY_A, KEY_B])
    data["teams"].append({"name": "ops", "keys": [KEY_C], "scope": ["*"], "enabled": False})
    cfg = load_ok(tmp_path, data)
    assert [(t.name, len(t.keys), t.enabled) for t in cfg.teams] == [
        ("billing", 2, True), ("ops", 1, False),
    ]


# --- teams ---------------------------------------------------------------------------------

def test_duplicate_team_names_are_refused(tmp_path: Path) -> None:
    data = base()
    data["teams"].append({"name": "billing", "keys": [KEY_B], "scope": ["*"]})
    assert load_error(tmp_path, data) == 'teams[1].name repeats team "billing"'


@pytest.mark.parametrize(
    "name",
    ["-billing", ".billing", "_billing", "bill ing", "bill/ing", "billing!", "bïlling",
     "a" * 65],
)
def test_bad_team_name_is_refused(tmp_path: Path, name: str) -> None:
    message = load_error(tmp_path, changed("teams", name=name))
    assert message.startswith("teams[0].name must be 1 to 64 of [A-Za-z0-9._-]")


@pytest.mark.parametrize("name", ["a", "B", "billing-eu.2_x", "a" * 64, "9lives"])
def test_good_team_name_is_accepted(tmp_path: Path, name: str) -> None:
    assert load_ok(tmp_path, changed("teams", name=name)).teams[0].name == name


def test_team_without_a_name_is_refused(tmp_path: Path) -> None:
    assert load_error(tmp_path, changed("teams", name=DELETE)) == "teams[0].name is required"


def test_config_without_teams_is_refused(tmp_path: Path) -> None:
    data = base()
    del data["teams"]
    assert load_error(tmp_path, data) == "teams is required: at least one [[teams]] table"


def test_empty_teams_array_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, "teams = []\n" + render_toml({**base(), "teams": []}))
    assert message.startswith("teams must be one or more [[teams]] tables")


def test_teams_as_a_single_table_instead_of_a_table_array_is_refused(tmp_path: Path) -> None:
    text = render_toml({**base(), "teams": []})
    text += f'\n[teams]\nname = "billing"\nkeys = ["{KEY_A}"]\n'
    message = load_error(tmp_path, text)
    assert message == "teams must be one or more [[teams]] tables, got a table"


def test_teams_as_a_string_is_refused(tmp_path: Path) -> None:
    text = 'teams = "billing"\n' + render_toml({**base(), "teams": []})
    assert load_error(tmp_path, text) == 'teams must be one or more [[teams]] tables, got "billing"'


def test_teams_entry_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    text = "teams = [1]\n" + render_toml({**base(), "teams": []})
    assert load_error(tmp_path, text) == "teams[0] must be a table, got 1"


# --- audit ---------------------------------------------------------------------------------

def test_missing_audit_path_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("audit", path=DELETE, fsync=True))
    assert message == "audit.path is required"


def test_missing_audit_section_is_refused(tmp_path: Path) -> None:
    data = base()
    del data["audit"]
    assert load_error(tmp_path, data) == "audit.path is required"


# --- the file itself -----------------------------------------------------------------------

def test_invalid_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[server]\nport = = 8080\n")
    assert message.startswith("not valid TOML: ")
    assert "line 2" in message


def test_duplicate_toml_key_is_refused_as_invalid_toml(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[server]\nport = 1\nport = 2\n")
    assert message.startswith("not valid TOML: ")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    content = render_toml(base()).encode("utf-8").replace(b"billing", b"b\xe9lling")
    assert load_error(tmp_path, content) == "not UTF-8 text"


def test_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert str(info.value) == f"{path}: file not found"


def test_directory_instead_of_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: can't be read")
    assert "\n" not in message


def test_parse_names_the_given_source(tmp_path: Path) -> None:
    data = changed("upstream", timeout="ten")
    with pytest.raises(ConfigError, match=r"^demo: upstream\.timeout "):
        config.parse(copy.deepcopy(data), source="demo")


# --- where the file is ---------------------------------------------------------------------

def test_config_path_prefers_the_explicit_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHROMA_SYNC_GATEWAY_CONFIG", "from-env.toml")
    assert config.config_path("given.toml") == "given.toml"


def test_config_path_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHROMA_SYNC_GATEWAY_CONFIG", "from-env.toml")
    assert config.config_path(None) == "from-env.toml"


def test_config_path_falls_back_to_config_toml_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHROMA_SYNC_GATEWAY_CONFIG", raising=False)
    assert config.config_path(None) == "config.toml"


def test_config_path_ignores_an_empty_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHROMA_SYNC_GATEWAY_CONFIG", "")
    assert config.config_path(None) == "config.toml"


def test_default_path_loads_config_toml_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, changed("server", port=9123))
    monkeypatch.chdir(tmp_path)
    assert config.load(config.config_path(None)).server.port == 9123


# --- scopes (least privilege) --------------------------------------------------------------

@pytest.mark.parametrize(("scope", "expected"), [
    (DELETE, "teams[0].scope is required"),
    ([], "teams[0].scope must be a non-empty array"),
    ("*", 'teams[0].scope must be an array, got "*"'),
    (["*", "database:docs"], 'teams[0].scope "*" must stand alone'),
    (["database:docs", "bucket:x"], 'teams[0].scope[1] has an unknown kind'),
    (["database:"], "teams[0].scope[0] has an unknown kind"),
    (["docs"], "teams[0].scope[0] has an unknown kind"),
    (["collection:docs"], "teams[0].scope[0] must be collection:DB/NAME"),
    (["collection:/handbook"], "teams[0].scope[0] must be collection:DB/NAME"),
    (["source:not-a-uuid"], "teams[0].scope[0] must be source: and a UUID"),
    ([42], "teams[0].scope[0] must be a string"),
])
def test_a_bad_scope_is_refused_naming_the_key(
    tmp_path: Path, scope: object, expected: str
) -> None:
    message = load_error(tmp_path, changed("teams", scope=scope))
    assert message.startswith(expected), message


def test_scope_entries_parse_into_their_kinds(tmp_path: Path) -> None:
    source = "0B8E1D2C-3A4F-4B5C-8D6E-7F8091A2B3C4"
    cfg = load_ok(tmp_path, changed("teams", scope=[
        "database:docs", "collection:search/handbook", f"source:{source}"]))
    scope = cfg.teams[0].scope
    assert not scope.unrestricted
    assert scope.databases == {"docs"}
    assert scope.collections == {("search", "handbook")}
    assert scope.sources == {source.lower()}


def test_star_alone_is_unrestricted(tmp_path: Path) -> None:
    assert load_ok(tmp_path, changed("teams", scope=["*"])).teams[0].scope.unrestricted


def test_lookup_cache_and_record_context_defaults_and_bounds(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base())
    assert cfg.upstream.lookup_cache == 10_000
    assert cfg.audit.record_context is False
    message = load_error(tmp_path, changed("upstream", lookup_cache=-1))
    assert "upstream.lookup_cache must be a whole number" in message
    message = load_error(tmp_path, changed("audit", record_context="yes"))
    assert "audit.record_context must be true or false" in message


# --- workload identity: [[issuers]] and teams.service_accounts -----------------------------

ISSUER = {"name": "prod", "issuer": "https://kubernetes.default.svc", "audience": "csg",
          "jwks_file": "jwks.json"}


def with_identity(accounts: Any = DELETE, **team: Any) -> dict[str, Any]:
    data = changed("teams", service_accounts=accounts, **team)
    data["issuers"] = [dict(ISSUER)]
    return data


def test_issuers_and_service_accounts_parse_into_frozen_values(tmp_path: Path) -> None:
    data = with_identity(["billing/worker", "billing/cron.v2"])
    data["issuers"].append({**ISSUER, "name": "dr", "issuer": "https://dr.example"})
    cfg = load_ok(tmp_path, data)
    assert cfg.issuers == (
        model.IssuerConfig("prod", "https://kubernetes.default.svc", "csg",
                           str(tmp_path / "jwks.json")),
        model.IssuerConfig("dr", "https://dr.example", "csg", str(tmp_path / "jwks.json")),
    )
    assert cfg.teams[0].service_accounts == ("billing/worker", "billing/cron.v2")
    assert cfg.teams[0].keys == (KEY_A,)


def test_a_team_may_have_service_accounts_and_no_keys(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, with_identity(["billing/worker"], keys=DELETE))
    assert cfg.teams[0].keys == ()
    assert cfg.teams[0].service_accounts == ("billing/worker",)


def test_a_team_with_neither_keys_nor_service_accounts_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, with_identity(keys=DELETE))
    assert message.startswith("teams[0].keys must be a non-empty array of stored keys")


def test_no_issuers_means_none(tmp_path: Path) -> None:
    assert load_ok(tmp_path, base()).issuers == ()
    assert load_ok(tmp_path, base()).teams[0].service_accounts == ()


@pytest.mark.parametrize("account", [
    "worker", "billing/", "/worker", "Billing/worker", "billing/worker/x", "bill_ing/worker",
    "billing/-worker", "a" * 64 + "/worker", "billing/" + "w" * 254, "billing/wörker", 7,
])
def test_a_malformed_service_account_is_refused_naming_its_index(
    tmp_path: Path, account: Any
) -> None:
    message = load_error(tmp_path, with_identity(["billing/ok", account]))
    assert message.startswith('teams[0].service_accounts[1] must be "NAMESPACE/NAME"'), message


@pytest.mark.parametrize("value", [[], "billing/worker", 3])
def test_service_accounts_must_be_a_non_empty_array(tmp_path: Path, value: Any) -> None:
    message = load_error(tmp_path, with_identity(value))
    assert message.startswith("teams[0].service_accounts must be a non-empty array"), message


def test_a_service_account_listed_by_two_teams_is_refused(tmp_path: Path) -> None:
    data = with_identity(["billing/worker"])
    data["teams"].append({"name": "ops", "keys": [KEY_B], "scope": ["*"],
                          "service_accounts": ["ops/runner", "billing/worker"]})
    message = load_error(tmp_path, data)
    assert message == ('teams[1].service_accounts[1] repeats "billing/worker", already a '
                       'service account of team "billing"')


def test_service_accounts_without_an_issuer_are_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, changed("teams", service_accounts=["billing/worker"]))
    assert message == ("teams[0].service_accounts needs an [[issuers]] entry to verify the "
                       "accounts' tokens")


@pytest.mark.parametrize("missing", ["name", "issuer", "audience", "jwks_file"])
def test_an_issuer_missing_a_key_is_refused_naming_it(tmp_path: Path, missing: str) -> None:
    data = with_identity(["billing/worker"])
    del data["issuers"][0][missing]
    assert load_error(tmp_path, data) == f"issuers[0].{missing} is required"


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("jwks_file", "", 'must be a non-empty string, got ""'),
    ("audience", 7, "must be a non-empty string, got 7"),
    ("name", "bad name", 'must be 1 to 64 of [A-Za-z0-9._-], starting alphanumeric, got '
                         '"bad name"'),
    ("colour", "blue", "is not a known key"),
])
def test_a_bad_issuer_key_is_refused_naming_it(
    tmp_path: Path, key: str, value: Any, problem: str
) -> None:
    data = with_identity(["billing/worker"])
    data["issuers"][0][key] = value
    assert load_error(tmp_path, data) == f"issuers[0].{key} {problem}"


@pytest.mark.parametrize("key", ["name", "issuer"])
def test_a_repeated_issuer_name_or_iss_is_refused(tmp_path: Path, key: str) -> None:
    data = with_identity(["billing/worker"])
    other = {**ISSUER, "name": "other", "issuer": "https://other.example", key: ISSUER[key]}
    data["issuers"].append(other)
    assert load_error(tmp_path, data) == (
        f'issuers[1].{key} repeats "{ISSUER[key]}" of another issuer')


def test_issuers_that_are_not_an_array_of_tables_are_refused(tmp_path: Path) -> None:
    data = base()
    data["issuers"] = {"name": "x"}
    assert load_error(tmp_path, data).startswith("issuers must be one or more [[issuers]]")
