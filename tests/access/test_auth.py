"""In-process tests of `gateway.access.auth`: bearer parsing, team keys, the kill switch.

What a caller can send in `Authorization` is hostile input: every malformed, odd or oversized
value must end as a plain 401, never another exception, and the comparison must look at every
stored digest whatever the outcome.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Sequence

import pytest

from gateway.access import keys
from gateway.access.auth import (
    MAX_CREDENTIAL_BYTES,
    Principal,
    TeamKeyAuthenticator,
    TeamSwitchAuthorizer,
    bearer_credential,
)
from gateway.config.model import TeamConfig
from gateway.errors import RequestRejected

KEY_A1 = keys.new_key()
KEY_A2 = keys.new_key()
KEY_A3 = keys.new_key()
KEY_B = keys.new_key()
KEY_OFF = keys.new_key()
TEAMS = (
    TeamConfig("alpha", tuple(keys.stored_form(k) for k in (KEY_A1, KEY_A2, KEY_A3))),
    TeamConfig("beta", (keys.stored_form(KEY_B),)),
    TeamConfig("off", (keys.stored_form(KEY_OFF),), enabled=False),
)
STORED_DIGESTS = sum(len(team.keys) for team in TEAMS)


def key_id(key: str) -> str:
    return keys.key_id(keys.stored_form(key))


def authorization(value: bytes | str) -> list[tuple[bytes, bytes]]:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return [(b"host", b"gateway"), (b"authorization", raw)]


def authenticate(headers: Sequence[tuple[bytes, bytes]]) -> Principal:
    return TeamKeyAuthenticator(TEAMS).authenticate(headers)


def assert_unauthenticated(headers: Sequence[tuple[bytes, bytes]]) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        authenticate(headers)
    error = caught.value
    assert (error.status, error.code, error.outcome) == (401, "unauthenticated", "unauthenticated")
    assert error.headers == {"www-authenticate": "Bearer"}
    return error


# -- bearer parsing -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    b"Bearer KEY", b"bearer KEY", b"BEARER KEY", b"BeArEr KEY", b"Bearer   KEY",
    b"  Bearer KEY  ", b"Bearer KEY\t",
])
def test_bearer_scheme_in_any_case_and_spacing_yields_the_credential(value: bytes) -> None:
    assert bearer_credential(authorization(value)) == b"KEY"


def test_authorization_header_name_is_matched_in_any_case() -> None:
    assert bearer_credential([(b"Authorization", b"Bearer KEY")]) == b"KEY"


@pytest.mark.parametrize("value", [
    b"", b" ", b"Bearer", b"Bearer ", b"Bearer \t ", b"Basic KEY", b"Token KEY", b"KEY",
    b"Bearer: KEY", b"Bearerish KEY", b"\xffBearer KEY", b"Bearer\x00 KEY",
    b"Bearer " + b"k" * (MAX_CREDENTIAL_BYTES + 1),
])
def test_malformed_authorization_yields_no_credential(value: bytes) -> None:
    assert bearer_credential(authorization(value)) is None


def test_missing_authorization_yields_no_credential() -> None:
    assert bearer_credential([(b"host", b"gateway"), (b"x-chroma-token", b"Bearer KEY")]) is None


@pytest.mark.parametrize("values", [
    (b"Bearer KEY", b"Bearer KEY"),
    (b"Bearer KEY", b"Bearer OTHER"),
    (b"Bearer OTHER", b"Bearer KEY"),
    (b"Bearer KEY", b""),
])
def test_repeated_authorization_header_yields_no_credential(values: tuple[bytes, ...]) -> None:
    assert bearer_credential([(b"authorization", v) for v in values]) is None


def test_credential_of_exactly_the_maximum_length_is_kept() -> None:
    credential = b"k" * MAX_CREDENTIAL_BYTES
    assert bearer_credential(authorization(b"Bearer " + credential)) == credential


# -- team keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "team"), [
    (KEY_A1, "alpha"), (KEY_A2, "alpha"), (KEY_A3, "alpha"), (KEY_B, "beta"), (KEY_OFF, "off"),
])
def test_every_key_of_every_team_authenticates_as_its_team(key: str, team: str) -> None:
    assert authenticate(authorization(f"Bearer {key}")) == Principal(team, key_id(key))


def test_uppercase_bearer_scheme_authenticates() -> None:
    assert authenticate(authorization(f"BEARER {KEY_B}")).team == "beta"


def test_key_differing_only_in_its_last_character_is_401() -> None:
    last = KEY_A2[-1]
    assert_unauthenticated(authorization(f"Bearer {KEY_A2[:-1]}{'A' if last != 'A' else 'B'}"))


@pytest.mark.parametrize("value", [
    KEY_A1[:-1], KEY_A1 + "x", KEY_A1.upper(), KEY_A1.removeprefix("csg_"), " " + KEY_A1 + "x",
    keys.new_key(), "csg_",
])
def test_near_miss_key_is_401(value: str) -> None:
    assert_unauthenticated(authorization(f"Bearer {value}"))


def test_stored_form_or_digest_presented_as_a_key_is_401() -> None:
    stored = keys.stored_form(KEY_A1)
    assert_unauthenticated(authorization(f"Bearer {stored}"))
    assert_unauthenticated(authorization(f"Bearer {stored.removeprefix('sha256:')}"))


def test_two_authorization_headers_are_401_even_when_both_are_valid() -> None:
    assert_unauthenticated([(b"authorization", f"Bearer {KEY_A1}".encode())] * 2)
    assert_unauthenticated([(b"authorization", f"Bearer {KEY_A1}".encode()),
                            (b"authorization", f"Bearer {KEY_B}".encode())])


@pytest.mark.parametrize("value", [
    b"", b"Bearer", b"Bearer \xff\xfe\xfd", "Bearer ключ".encode(), b"Bearer \x00",
    ("Bearer " + KEY_A1).encode() + b"\xff", ("Bearer " + KEY_A1).encode() + b"\x00",
    b"Bearer " + b"k" * 10_240, b"Bearer " + b"k" * 1_000_000, b"Bearer " + b"\xff" * 100_000,
    b"Basic " + KEY_A1.encode(), KEY_A1.encode(),
], ids=["empty", "scheme_only", "non_ascii", "cyrillic", "nul", "key_then_ff", "key_then_nul",
        "10_kb", "1_mb", "100_kb_of_ff", "basic", "no_scheme"])
def test_odd_credential_is_401_without_another_exception(value: bytes) -> None:
    error = assert_unauthenticated(authorization(value))
    assert KEY_A1 not in error.message


def test_random_bytes_as_authorization_are_always_401() -> None:
    rng = random.Random(20240601)
    for _ in range(500):
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        prefix = b"Bearer " if rng.random() < 0.5 else b""
        assert_unauthenticated(authorization(prefix + value))


def test_no_configured_team_authenticates_nobody() -> None:
    with pytest.raises(RequestRejected) as caught:
        TeamKeyAuthenticator(()).authenticate(authorization(f"Bearer {KEY_A1}"))
    assert caught.value.status == 401


@pytest.mark.parametrize("headers", [
    authorization(f"Bearer {KEY_A1}"),  # the first stored digest matches
    authorization(f"Bearer {KEY_OFF}"),  # the last one matches
    authorization(f"Bearer {keys.new_key()}"),  # none matches
    [(b"host", b"gateway")],  # no credential at all
    authorization(b"Bearer \xff" * 3000),  # not even a credential
], ids=["first", "last", "unknown", "missing", "oversized"])
def test_presented_key_is_compared_with_every_stored_digest(
    monkeypatch: pytest.MonkeyPatch, headers: list[tuple[bytes, bytes]]
) -> None:
    """No early exit: the work done does not tell which key (or whether one) matched."""
    compared: list[tuple[int, int]] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    authenticator = TeamKeyAuthenticator(TEAMS)
    try:
        authenticator.authenticate(headers)
    except RequestRejected:
        pass
    assert compared == [(32, 32)] * STORED_DIGESTS


# -- the kill switch ------------------------------------------------------------------------


def test_disabled_team_is_403_forbidden() -> None:
    principal = authenticate(authorization(f"Bearer {KEY_OFF}"))
    with pytest.raises(RequestRejected) as caught:
        TeamSwitchAuthorizer(TEAMS).authorize(principal)
    error = caught.value
    assert (error.status, error.code, error.outcome) == (403, "forbidden", "forbidden")
    assert KEY_OFF not in error.message
    assert "www-authenticate" not in error.headers


@pytest.mark.parametrize("key", [KEY_A1, KEY_A3, KEY_B])
def test_enabled_team_is_authorized(key: str) -> None:
    TeamSwitchAuthorizer(TEAMS).authorize(authenticate(authorization(f"Bearer {key}")))
