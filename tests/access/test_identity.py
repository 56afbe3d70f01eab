"""In-process tests of `gateway.access.identity`: JWKS parsing, token verification, the
authenticator.

Tokens are real: signed with RSA and EC keys generated for the test run (tests/jwt_keys.py).
Every refusal must end as the same 401 as a wrong team key, never another exception.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.access import keys
from gateway.access.auth import MAX_JWT_BYTES, CompositeAuthenticator, TeamKeyAuthenticator
from gateway.access.identity import (
    IssuerKeys,
    JwksProblem,
    ServiceAccount,
    ServiceAccountAuthenticator,
    TokenRefused,
    parse_jwks,
)
from gateway.config.model import IssuerConfig, TeamConfig
from gateway.errors import RequestRejected, render, unauthenticated
from gateway.secrets.watch import WatchedFile
from tests.jwt_keys import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    claims,
    ec_key,
    hand_made,
    hmac_signed,
    jwks,
    rsa_key,
)

RSA = rsa_key("rsa-1")
EC = ec_key("ec-1")
OTHER_RSA = rsa_key("rsa-other")  # never in the key set
TEAM_KEY = keys.new_key()
TEAMS = (
    TeamConfig("billing", (keys.stored_form(TEAM_KEY),), service_accounts=("billing/worker",)),
    TeamConfig("ops", (), service_accounts=("ops/runner",)),
)


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[IssuerKeys]:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(RSA, EC))
    keys_ = IssuerKeys(IssuerConfig("prod", ISSUER, AUDIENCE, str(path)),
                       WatchedFile(str(path), what="issuer prod JWKS"))
    keys_.file.load()
    keys_.adopt()
    yield keys_


@pytest.fixture
def accounts(issuer: IssuerKeys) -> ServiceAccountAuthenticator:
    return ServiceAccountAuthenticator([issuer], TEAMS)


def refusal(accounts: ServiceAccountAuthenticator, token: str | bytes) -> str:
    raw = token.encode() if isinstance(token, str) else token
    with pytest.raises(TokenRefused) as caught:
        accounts.verify(raw)
    return str(caught.value)


def rs(**overrides: Any) -> str:
    return RSA.token(**overrides)


# -- parse_jwks -----------------------------------------------------------------------------


def test_a_jwks_of_rsa_and_ec_keys_parses_into_keys_by_kid() -> None:
    key_set = parse_jwks(jwks(RSA, EC))
    assert {kid: k.algorithm for kid, k in key_set.keys.items()} == {
        "rsa-1": "RS256", "ec-1": "ES256"}
    assert key_set.skipped == ()


def test_a_jwk_without_alg_or_use_gets_the_algorithm_of_its_type() -> None:
    bare = [{k: v for k, v in key.jwk().items() if k not in ("alg", "use")} for key in (RSA, EC)]
    key_set = parse_jwks(jwks(*bare))
    assert {kid: k.algorithm for kid, k in key_set.keys.items()} == {
        "rsa-1": "RS256", "ec-1": "ES256"}


@pytest.mark.parametrize(("jwk", "why"), [
    (RSA.jwk(alg="ES256"), "alg is 'ES256', not RS256"),
    (EC.jwk(alg="RS256"), "alg is 'RS256', not ES256"),
    (RSA.jwk(alg="RS512"), "alg is 'RS512', not RS256"),
    (RSA.jwk(use="enc"), "use is 'enc', not sig"),
    ({"kty": "oct", "kid": "k", "k": "c2VjcmV0"}, "kty 'oct' is not RSA or EC P-256"),
    ({**EC.jwk(), "crv": "P-384"}, "kty 'EC' crv 'P-384' is not RSA or EC P-256"),
    (RSA.jwk(d="AQAB"), "holds private key material"),
    ({"kty": "RSA", "kid": "k", "n": "!!", "e": "AQAB"}, "malformed key parameters"),
    ({"kty": "RSA", "kid": "k"}, "malformed key parameters"),
])
def test_an_unusable_key_is_skipped_and_named_by_kid(jwk: dict[str, Any], why: str) -> None:
    key_set = parse_jwks(jwks(EC.jwk(kid="good"), jwk))
    assert list(key_set.keys) == ["good"]
    assert key_set.skipped == (f"{jwk['kid']!r}: {why}",)


def test_a_key_without_kid_is_skipped() -> None:
    jwk = RSA.jwk()
    del jwk["kid"]
    key_set = parse_jwks(jwks(EC, jwk))
    assert list(key_set.keys) == ["ec-1"]
    assert key_set.skipped == ("keys[1]: no kid",)


@pytest.mark.parametrize(("document", "problem"), [
    (b"not json", "not a JSON document"),
    (b"\xff\xfe", "not a JSON document"),
    (b"[]", 'not a JWKS: no "keys" array'),
    (b'{"keys": {}}', 'not a JWKS: no "keys" array'),
    (b'{"keys": [7]}', "keys[0] is not an object"),
    (b'{"keys": []}', "no usable RS256 or ES256 signing key"),
])
def test_an_unusable_document_is_a_problem(document: bytes, problem: str) -> None:
    with pytest.raises(JwksProblem) as caught:
        parse_jwks(document)
    assert str(caught.value) == problem


def test_a_set_with_only_unusable_keys_is_a_problem_naming_them() -> None:
    with pytest.raises(JwksProblem) as caught:
        parse_jwks(jwks(RSA.jwk(use="enc")))
    assert str(caught.value) == (
        "no usable RS256 or ES256 signing key ('rsa-1': use is 'enc', not sig)")


def test_a_kid_given_twice_is_a_problem() -> None:
    with pytest.raises(JwksProblem, match="kid 'same' appears twice"):
        parse_jwks(jwks(RSA.jwk(kid="same"), EC.jwk(kid="same")))


def test_a_problem_never_holds_key_material() -> None:
    private = RSA.jwk(d="c2VjcmV0LXByaXZhdGUtZXhwb25lbnQ")
    with pytest.raises(JwksProblem) as caught:
        parse_jwks(jwks(private))
    assert "c2VjcmV0" not in str(caught.value) and private["n"][:16] not in str(caught.value)


# -- verification: what is accepted ---------------------------------------------------------


@pytest.mark.parametrize("key", [RSA, EC], ids=["RS256", "ES256"])
def test_a_token_signed_by_a_key_of_the_set_names_its_service_account(
    accounts: ServiceAccountAuthenticator, key: SigningKey
) -> None:
    assert accounts.verify(key.token().encode()) == ServiceAccount("billing", "worker")


def test_an_audience_given_as_a_string_is_accepted(accounts: ServiceAccountAuthenticator) -> None:
    assert accounts.verify(rs(aud=AUDIENCE).encode()).key_id == "sa:billing/worker"


def test_the_audience_among_others_is_accepted(accounts: ServiceAccountAuthenticator) -> None:
    assert accounts.verify(rs(aud=["other", AUDIENCE]).encode()).name == "worker"


def test_expired_20_s_ago_is_within_the_leeway(accounts: ServiceAccountAuthenticator) -> None:
    now = int(time.time())
    assert accounts.verify(rs(iat=now - 600, nbf=now - 600, exp=now - 20).encode())


def test_valid_from_20_s_ahead_is_within_the_leeway(
    accounts: ServiceAccountAuthenticator,
) -> None:
    now = int(time.time())
    assert accounts.verify(rs(iat=now, nbf=now + 20).encode())


def test_a_token_without_nbf_is_accepted(accounts: ServiceAccountAuthenticator) -> None:
    assert accounts.verify(rs(nbf=None).encode())


def test_a_service_account_maps_to_its_team_with_an_sa_key_id(
    accounts: ServiceAccountAuthenticator,
) -> None:
    principal = accounts.authenticate_credential(EC.token(sub="system:serviceaccount:ops:runner")
                                                 .encode())
    assert (principal.team, principal.key_id) == ("ops", "sa:ops/runner")


# -- verification: every refusal ------------------------------------------------------------


def test_expired_40_s_ago_is_refused(accounts: ServiceAccountAuthenticator) -> None:
    now = int(time.time())
    assert refusal(accounts, rs(iat=now - 600, nbf=now - 600, exp=now - 40)) == "expired"


def test_valid_from_40_s_ahead_is_refused(accounts: ServiceAccountAuthenticator) -> None:
    now = int(time.time())
    assert refusal(accounts, rs(iat=now, nbf=now + 40)) == "not yet valid"


def test_alg_none_is_refused(accounts: ServiceAccountAuthenticator) -> None:
    token = hand_made({"alg": "none", "kid": "rsa-1", "typ": "JWT"}, claims())
    assert refusal(accounts, token) == "algorithm not allowed"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_as_secret_is_refused(
    accounts: ServiceAccountAuthenticator, alg: str
) -> None:
    # The classic confusion: the verifier's public key used as an HMAC secret.
    pem = RSA.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = hmac_signed({"alg": alg, "kid": "rsa-1"}, claims(), pem)
    assert refusal(accounts, token) == "algorithm not allowed"


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES384", "EdDSA"])
def test_other_asymmetric_algorithms_are_refused(
    accounts: ServiceAccountAuthenticator, alg: str
) -> None:
    token = hand_made({"alg": alg, "kid": "rsa-1"}, claims(), b"x" * 64)
    assert refusal(accounts, token) == "algorithm not allowed"


def test_an_rsa_kid_with_an_es256_token_is_refused(accounts: ServiceAccountAuthenticator) -> None:
    # Signed by an EC key, naming the RSA key of the set.
    forged = SigningKey("rsa-1", "ES256", ec.generate_private_key(ec.SECP256R1()))
    assert refusal(accounts, forged.token()) == "algorithm does not match the key"


def test_an_ec_kid_with_an_rs256_token_is_refused(accounts: ServiceAccountAuthenticator) -> None:
    forged = SigningKey("ec-1", "RS256", OTHER_RSA.private)
    assert refusal(accounts, forged.token()) == "algorithm does not match the key"


def test_a_jwk_whose_alg_says_otherwise_is_never_used(tmp_path: Path) -> None:
    # The set marks the RSA key ES256: it is skipped, so its genuine RS256 token is refused.
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(RSA.jwk(alg="ES256"), EC))
    issuer = IssuerKeys(IssuerConfig("prod", ISSUER, AUDIENCE, str(path)),
                        WatchedFile(str(path), what="JWKS"))
    issuer.file.load()
    issuer.adopt()
    accounts = ServiceAccountAuthenticator([issuer], TEAMS)
    assert refusal(accounts, RSA.token()) == "unknown kid"


def test_an_unknown_kid_is_refused(accounts: ServiceAccountAuthenticator) -> None:
    assert refusal(accounts, OTHER_RSA.token()) == "unknown kid"


def test_a_token_without_kid_is_refused_even_if_one_key_would_verify_it(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(RSA))  # a single key: still chosen by kid only
    issuer = IssuerKeys(IssuerConfig("prod", ISSUER, AUDIENCE, str(path)),
                        WatchedFile(str(path), what="JWKS"))
    issuer.file.load()
    issuer.adopt()
    token = jwt.encode(claims(), RSA.private, algorithm="RS256")
    assert refusal(ServiceAccountAuthenticator([issuer], TEAMS), token) == "no kid"


def test_a_kid_of_the_wrong_key_fails_the_signature(
    accounts: ServiceAccountAuthenticator,
) -> None:
    forged = SigningKey("rsa-1", "RS256", OTHER_RSA.private)
    assert refusal(accounts, forged.token()) == "bad signature"


def test_a_changed_payload_fails_the_signature(accounts: ServiceAccountAuthenticator) -> None:
    header, _, signature = rs().split(".")
    payload = base64.urlsafe_b64encode(json.dumps(
        claims(sub="system:serviceaccount:ops:runner")).encode()).rstrip(b"=").decode()
    assert refusal(accounts, f"{header}.{payload}.{signature}") == "bad signature"


def test_another_issuer_is_refused(accounts: ServiceAccountAuthenticator) -> None:
    assert refusal(accounts, rs(iss="https://elsewhere.example")) == "wrong issuer"


def test_another_audience_is_refused(accounts: ServiceAccountAuthenticator) -> None:
    assert refusal(accounts, rs(aud=["kubernetes"])) == "wrong audience"


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_a_token_missing_a_required_claim_is_refused(
    accounts: ServiceAccountAuthenticator, claim: str
) -> None:
    assert refusal(accounts, rs(**{claim: None})) == "invalid (MissingRequiredClaimError)"


@pytest.mark.parametrize("sub", [
    "billing:worker", "system:serviceaccount:billing", "system:serviceaccount:billing:worker:x",
    "system:serviceaccount:Billing:worker", "system:node:billing:worker",
    "system:serviceaccount::worker",
])
def test_a_sub_that_is_not_a_service_account_is_refused(
    accounts: ServiceAccountAuthenticator, sub: str
) -> None:
    assert refusal(accounts, rs(sub=sub)) == "sub is not a service account"


def test_an_oversized_token_is_refused_before_it_is_parsed(
    accounts: ServiceAccountAuthenticator,
) -> None:
    # Well-formed and genuinely signed, only too large: the size alone refuses it.
    token = rs(padding="p" * MAX_JWT_BYTES)
    assert refusal(accounts, token) == "oversized"


@pytest.mark.parametrize("token", [
    b"a.b.c", b"e30.e30.", b"eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", b"...", b"\xff.\xfe.\xfd",
])
def test_malformed_tokens_are_refused(accounts: ServiceAccountAuthenticator, token: bytes) -> None:
    assert refusal(accounts, token) in {"malformed", "algorithm not allowed", "no kid"}


def test_a_verified_account_no_team_lists_gets_the_team_key_401(
    accounts: ServiceAccountAuthenticator,
) -> None:
    with pytest.raises(RequestRejected) as caught:
        accounts.authenticate_credential(rs(sub="system:serviceaccount:billing:other").encode())
    assert render(caught.value) == render(unauthenticated())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_credential_is_a_principal_or_the_team_key_401(tmp_path_factory: Any,
                                                           credential: bytes) -> None:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_bytes(jwks(RSA))
    issuer = IssuerKeys(IssuerConfig("p", ISSUER, AUDIENCE, str(path)),
                        WatchedFile(str(path), what="JWKS"))
    issuer.file.load()
    issuer.adopt()
    composite = CompositeAuthenticator(TeamKeyAuthenticator(TEAMS),
                                       ServiceAccountAuthenticator([issuer], TEAMS))
    for value in (credential, b"eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0." + credential + b".x"):
        with pytest.raises(RequestRejected) as caught:
            composite.authenticate([(b"authorization", b"Bearer " + value)])
        assert render(caught.value) == render(unauthenticated())


# -- the composite authenticator ------------------------------------------------------------


def bearer(value: str | bytes) -> list[tuple[bytes, bytes]]:
    raw = value.encode() if isinstance(value, str) else value
    return [(b"host", b"gw"), (b"authorization", b"Bearer " + raw)]


@pytest.fixture
def composite(accounts: ServiceAccountAuthenticator) -> CompositeAuthenticator:
    return CompositeAuthenticator(TeamKeyAuthenticator(TEAMS), accounts)


def test_team_keys_still_work_beside_tokens(composite: CompositeAuthenticator) -> None:
    principal = composite.authenticate(bearer(TEAM_KEY))
    assert principal.team == "billing" and principal.key_id == keys.key_id(
        keys.stored_form(TEAM_KEY))


def test_a_token_longer_than_the_team_key_cap_is_accepted(
    composite: CompositeAuthenticator,
) -> None:
    token = rs(padding="p" * 1200)  # a projected token is ~1 to 1.5 KB
    assert len(token) > 1024
    assert composite.authenticate(bearer(token)).key_id == "sa:billing/worker"


@pytest.mark.parametrize("credential", [
    "", "csg_" + "x" * 43, "csg_" + "x" * 2000, "x" * 9000, "a.b", "a.b.c.d",
])
def test_anything_else_gets_the_same_401_as_a_wrong_team_key(
    composite: CompositeAuthenticator, credential: str
) -> None:
    with pytest.raises(RequestRejected) as caught:
        composite.authenticate(bearer(credential))
    assert render(caught.value) == render(unauthenticated())


def test_an_oversized_token_gets_the_same_401(composite: CompositeAuthenticator) -> None:
    token = rs(padding="p" * MAX_JWT_BYTES)
    with pytest.raises(RequestRejected) as caught:
        composite.authenticate(bearer(token))
    assert render(caught.value) == render(unauthenticated())


def test_every_token_refusal_has_the_shape_of_a_wrong_team_key(
    composite: CompositeAuthenticator,
) -> None:
    now = int(time.time())
    refused = [
        rs(exp=now - 40, nbf=now - 600, iat=now - 600), rs(aud="other"), OTHER_RSA.token(),
        hand_made({"alg": "none", "kid": "rsa-1"}, claims()),
        rs(sub="system:serviceaccount:nobody:lists-me"),
    ]
    expected = render(unauthenticated())
    for token in refused:
        with pytest.raises(RequestRejected) as caught:
            composite.authenticate(bearer(token))
        assert render(caught.value) == expected


# -- the key set's life: rotation and bad files ---------------------------------------------


def test_a_rewritten_jwks_is_adopted_and_the_old_keys_go(issuer: IssuerKeys) -> None:
    new = rsa_key("rsa-2")
    Path(issuer.file.path).write_bytes(jwks(new))
    issuer.file.load()
    issuer.adopt()
    accounts = ServiceAccountAuthenticator([issuer], TEAMS)
    assert accounts.verify(new.token().encode()).name == "worker"
    assert refusal(accounts, RSA.token()) == "unknown kid"


@pytest.mark.parametrize("content", [b"{not json", b'{"keys": []}', jwks(RSA.jwk(use="enc"))])
def test_a_bad_jwks_keeps_the_last_good_one(
    issuer: IssuerKeys, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    Path(issuer.file.path).write_bytes(content)
    issuer.file.load()
    issuer.adopt()
    assert sorted(issuer.keys) == ["ec-1", "rsa-1"]
    assert ServiceAccountAuthenticator([issuer], TEAMS).verify(RSA.token().encode())
    assert "identity.jwks_rejected" in capsys.readouterr().out


def test_a_missing_jwks_keeps_the_last_good_one(
    issuer: IssuerKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    Path(issuer.file.path).unlink()
    issuer.file.load()
    issuer.adopt()
    assert sorted(issuer.keys) == ["ec-1", "rsa-1"]
    assert "identity.jwks_unavailable" in capsys.readouterr().out


def test_a_jwks_missing_at_start_refuses_every_token(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    issuer = IssuerKeys(IssuerConfig("prod", ISSUER, AUDIENCE, str(path)),
                        WatchedFile(str(path), what="JWKS"))
    issuer.file.load()
    issuer.adopt()
    assert refusal(ServiceAccountAuthenticator([issuer], TEAMS), RSA.token()) == "unknown kid"


def test_the_policy_loads_each_jwks_once_and_a_reload_keeps_them(tmp_path: Path) -> None:
    from gateway.access.policy import build_policy
    from gateway.config.load import parse
    from gateway.telemetry.metrics import Metrics

    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(EC))

    def config(accounts: list[str]) -> Any:
        return parse({
            "upstream": {"token_env": "T"}, "audit": {"path": "a"},
            "teams": [{"name": "ops", "scope": ["*"], "service_accounts": accounts}],
            "issuers": [{"name": "prod", "issuer": ISSUER, "audience": AUDIENCE,
                         "jwks_file": str(path)}],
        })

    metrics = Metrics()
    policy = build_policy(config(["ops/runner"]), metrics)
    runner = bearer(EC.token(sub="system:serviceaccount:ops:runner"))
    cron = bearer(EC.token(sub="system:serviceaccount:ops:cron"))
    assert policy.authenticator.authenticate(runner).key_id == "sa:ops/runner"
    with pytest.raises(RequestRejected):
        policy.authenticator.authenticate(cron)
    # A reload swaps the teams' accounts and keeps the (watched) key sets as they are.
    reloaded = build_policy(config(["ops/cron"]), metrics, previous=policy)
    assert reloaded.issuers == policy.issuers and len(policy.issuers) == 1
    assert reloaded.authenticator.authenticate(cron).key_id == "sa:ops/cron"
    with pytest.raises(RequestRejected):
        reloaded.authenticator.authenticate(runner)
    reloaded.key_used(reloaded.authenticator.authenticate(cron))
    assert b'key_id="sa:ops/cron",team="ops"} 1.0' in metrics.render()


def test_without_issuers_the_policy_checks_team_keys_only() -> None:
    from gateway.access.policy import build_policy
    from gateway.config.load import parse
    from gateway.telemetry.metrics import Metrics

    policy = build_policy(parse({
        "upstream": {"token_env": "T"}, "audit": {"path": "a"},
        "teams": [{"name": "ops", "scope": ["*"], "keys": [keys.stored_form(TEAM_KEY)]}],
    }), Metrics())
    assert policy.issuers == ()
    assert isinstance(policy.authenticator, TeamKeyAuthenticator)


# -- check-config ---------------------------------------------------------------------------


def test_check_config_lists_issuers_with_their_kids_and_each_teams_accounts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main as cli
    from tests.harness import render_toml

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(jwks(RSA, EC))
    bad.write_bytes(b'{"keys": []}')
    path = tmp_path / "config.toml"
    path.write_text(render_toml({
        "upstream": {"token_env": "CSG_TEST_TOKEN"}, "audit": {"path": str(tmp_path / "a")},
        "teams": [{"name": "ops", "scope": ["*"], "service_accounts": ["ops/runner", "ops/b"]}],
        "issuers": [
            {"name": "prod", "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(good)},
            {"name": "dr", "issuer": "https://dr", "audience": AUDIENCE, "jwks_file": str(bad)},
        ],
    }))
    assert cli.main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  ops: 0 key(s) [], " in out
    assert "    service accounts: ops/runner, ops/b\n" in out
    assert f"  prod: iss {ISSUER}, audience {AUDIENCE}, jwks {good}: kids ec-1, rsa-1\n" in out
    assert f"jwks {bad}: NOT USABLE: no usable RS256 or ES256 signing key\n" in out
    assert RSA.jwk()["n"][:20] not in out
