"""Secret values: validation, the upstream token from a file or the environment, HMAC keys."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

from gateway.secrets.sources import (
    MAX_SECRET_BYTES,
    MIN_HMAC_KEY_CHARS,
    EnvSecret,
    FileSecret,
    InvalidSecret,
    fingerprint,
    load_hmac_key,
    read_secret_file,
    validate_secret,
)

TOKEN = "chroma-token-1f2e3d4c5b6a"
TOKEN_2 = "chroma-token-rotated-9a8b7c"


# --- validate_secret -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw", [b"  tok \n", b"\ttok\r\n", b"tok\n\n", b"\r\n tok", b"\x0b\x0ctok\x0c"]
)
def test_validate_secret_trims_surrounding_whitespace(raw: bytes) -> None:
    assert validate_secret(raw, what="token") == "tok"


def test_validate_secret_keeps_inner_spaces_and_printable_ascii() -> None:
    value = "a b!~#$%&'()*+,-./:;<=>?@[]^_`{|}"
    assert validate_secret(value.encode(), what="token") == value


@pytest.mark.parametrize("raw", [b"", b" ", b"\n", b"\r\n\t  \n"])
def test_validate_secret_refuses_an_empty_value(raw: bytes) -> None:
    with pytest.raises(InvalidSecret, match=r"^token is empty$"):
        validate_secret(raw, what="token")


@pytest.mark.parametrize(
    "inner",
    [b"\r", b"\n", b"\r\n", b"\x00", b"\t", b"\x01", b"\x1b", b"\x7f", b"\x85",
     "é".encode(), "\u2028".encode(), b"\xff"],
    ids=["CR", "LF", "CRLF", "NUL", "TAB", "SOH", "ESC", "DEL", "NEL-byte", "e-acute",
         "line-separator", "invalid-utf8"],
)
def test_validate_secret_refuses_control_and_non_ascii_characters_inside(inner: bytes) -> None:
    raw = b"secret-start" + inner + b"secret-end"
    with pytest.raises(InvalidSecret) as info:
        validate_secret(raw, what="upstream token")
    message = str(info.value)
    assert message == "upstream token holds a control or non-ASCII character"
    assert "secret-start" not in message and "secret-end" not in message


def test_validate_secret_refuses_a_value_longer_than_the_limit() -> None:
    with pytest.raises(InvalidSecret, match="longer than 8192 bytes") as info:
        validate_secret(b"x" * (MAX_SECRET_BYTES + 1), what="token")
    assert "xxxx" not in str(info.value)


def test_validate_secret_accepts_a_value_at_the_limit() -> None:
    assert validate_secret(b"x" * MAX_SECRET_BYTES, what="token") == "x" * MAX_SECRET_BYTES


def test_validate_secret_enforces_a_minimum_length() -> None:
    with pytest.raises(InvalidSecret, match="shorter than 5 characters"):
        validate_secret(b"abcd", what="key", min_chars=5)
    assert validate_secret(b"abcde", what="key", min_chars=5) == "abcde"


# --- reading files -------------------------------------------------------------------------

def test_read_secret_file_of_a_missing_file_says_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidSecret, match=r"^upstream token file is missing$"):
        read_secret_file(str(tmp_path / "absent"), what="upstream token")


def test_read_secret_file_of_an_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"y" * (MAX_SECRET_BYTES * 4))
    with pytest.raises(InvalidSecret, match="longer than"):
        read_secret_file(str(path), what="upstream token")


def test_read_secret_file_of_a_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidSecret) as info:
        read_secret_file(str(tmp_path), what="upstream token")
    assert str(info.value).startswith("upstream token file can't be read")
    assert "\n" not in str(info.value)


# --- FileSecret ----------------------------------------------------------------------------

def replace_file(path: Path, content: str) -> None:
    """An atomic replacement: a new inode under the same name."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(content)
    os.replace(tmp, path)


def test_file_secret_loads_on_first_refresh(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    secret = FileSecret(str(path), what="upstream token")
    assert not secret.available and secret.problem
    assert secret.refresh() is True
    assert secret.value == TOKEN and secret.problem is None and secret.available


def test_file_secret_refresh_without_a_change_reports_no_change(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    secret = FileSecret(str(path), what="upstream token")
    secret.refresh()
    assert secret.refresh() is False
    assert secret.value == TOKEN


def test_file_secret_sees_an_atomic_replacement(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    secret = FileSecret(str(path), what="upstream token")
    secret.refresh()
    replace_file(path, TOKEN_2 + "\n")
    assert secret.refresh() is True
    assert secret.value == TOKEN_2


def test_file_secret_sees_an_in_place_rewrite_of_the_same_size(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("aaaa-token")
    secret = FileSecret(str(path), what="upstream token")
    secret.refresh()
    before = path.stat().st_mtime_ns
    path.write_text("bbbb-token")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))
    assert secret.refresh() is True
    assert secret.value == "bbbb-token"


def make_kubernetes_mount(folder: Path, generation: str, value: str) -> None:
    """The kubelet's layout: ..<ts>/token, ..data -> ..<ts>, token -> ..data/token."""
    version = folder / f"..{generation}"
    version.mkdir()
    (version / "token").write_text(value + "\n")
    link = folder / "..data_tmp"
    link.symlink_to(version.name)
    os.replace(link, folder / "..data")  # the atomic swap


def test_file_secret_follows_a_kubernetes_data_symlink_swap(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    make_kubernetes_mount(mount, "2026_a", TOKEN)
    (mount / "token").symlink_to("..data/token")
    secret = FileSecret(str(mount / "token"), what="upstream token")
    assert secret.refresh() is True and secret.value == TOKEN

    make_kubernetes_mount(mount, "2026_b", TOKEN_2)
    shutil.rmtree(mount / "..2026_a")  # the kubelet removes the old generation
    assert secret.refresh() is True
    assert secret.value == TOKEN_2 and secret.problem is None
    assert secret.refresh() is False


def test_file_secret_swap_to_same_length_value_is_seen(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    make_kubernetes_mount(mount, "2026_a", "token-AAAA")
    (mount / "token").symlink_to("..data/token")
    secret = FileSecret(str(mount / "token"), what="upstream token")
    secret.refresh()
    make_kubernetes_mount(mount, "2026_b", "token-BBBB")
    assert secret.refresh() is True
    assert secret.value == "token-BBBB"


def test_missing_file_clears_the_value_and_the_problem_hides_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    secret = FileSecret(str(path), what="upstream token")
    secret.refresh()
    path.unlink()
    assert secret.refresh() is True
    assert secret.value is None and not secret.available
    assert secret.problem == "upstream token file is missing"
    assert TOKEN not in secret.problem
    assert secret.refresh() is False  # still missing: nothing new


def test_file_secret_recovers_when_a_valid_token_appears(tmp_path: Path) -> None:
    path = tmp_path / "token"
    secret = FileSecret(str(path), what="upstream token")
    secret.refresh()
    assert secret.value is None and secret.problem == "upstream token file is missing"
    path.write_text(TOKEN_2)
    assert secret.refresh() is True
    assert secret.value == TOKEN_2 and secret.problem is None


def test_file_secret_with_an_invalid_value_is_unavailable_and_not_echoed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    secret = FileSecret(str(path), what="upstream token")
    secret.refresh()
    replace_file(path, "leaked-part\r\nX-Evil: 1")
    assert secret.refresh() is True
    assert secret.value is None
    assert secret.problem is not None
    assert "leaked-part" not in secret.problem and "X-Evil" not in secret.problem
    assert TOKEN not in secret.problem
    replace_file(path, TOKEN)
    assert secret.refresh() is True and secret.value == TOKEN


def test_file_secret_that_becomes_empty_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    secret = FileSecret(str(path), what="upstream token")
    secret.refresh()
    replace_file(path, "  \n")
    assert secret.refresh() is True
    assert secret.value is None and secret.problem == "upstream token is empty"


def test_file_secret_min_chars_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "hmac"
    path.write_text("short")
    secret = FileSecret(str(path), what="audit HMAC key", min_chars=32)
    secret.refresh()
    assert secret.value is None and secret.problem and "shorter than 32" in secret.problem


# --- EnvSecret -----------------------------------------------------------------------------

def test_env_secret_reads_and_trims_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSG_TEST_TOKEN", f"  {TOKEN}\n")
    secret = EnvSecret("CSG_TEST_TOKEN", what="upstream token")
    assert secret.value == TOKEN and secret.problem is None and secret.available
    assert secret.refresh() is False


def test_env_secret_unset_variable_is_unavailable_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CSG_TEST_TOKEN", raising=False)
    secret = EnvSecret("CSG_TEST_TOKEN", what="upstream token")
    assert secret.value is None and not secret.available
    assert secret.problem == "upstream token environment variable CSG_TEST_TOKEN is not set"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("tok\nen-hidden", "upstream token holds a control or non-ASCII character"),
        ("tok\x1ben-hidden", "upstream token holds a control or non-ASCII character"),
        ("tökén-hidden", "upstream token holds a control or non-ASCII character"),
        ("   ", "upstream token is empty"),
    ],
)
def test_env_secret_invalid_value_is_unavailable_and_not_echoed(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("CSG_TEST_TOKEN", value)
    secret = EnvSecret("CSG_TEST_TOKEN", what="upstream token")
    assert secret.value is None and not secret.available
    assert secret.problem == problem


# --- fingerprint and the HMAC key ----------------------------------------------------------

def test_fingerprint_is_12_hex_digits_of_sha256_and_not_the_value() -> None:
    fp = fingerprint(TOKEN)
    assert re.fullmatch(r"[0-9a-f]{12}", fp)
    assert fp == hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
    assert fp not in TOKEN and TOKEN not in fp
    assert fingerprint(TOKEN.encode()) == fp
    assert fingerprint(TOKEN_2) != fp


def test_load_hmac_key_returns_the_trimmed_key_as_bytes(tmp_path: Path) -> None:
    path = tmp_path / "hmac"
    key = "k" * MIN_HMAC_KEY_CHARS
    path.write_text(f"\n{key}\n")
    assert load_hmac_key(str(path)) == key.encode()


def test_load_hmac_key_refuses_a_key_under_32_characters(tmp_path: Path) -> None:
    path = tmp_path / "hmac"
    path.write_text("k" * (MIN_HMAC_KEY_CHARS - 1) + "\n")
    with pytest.raises(InvalidSecret, match="shorter than 32 characters") as info:
        load_hmac_key(str(path))
    assert "kkkk" not in str(info.value)


def test_load_hmac_key_of_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSecret, match="audit HMAC key file is missing"):
        load_hmac_key(str(tmp_path / "absent"))
