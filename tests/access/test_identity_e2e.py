"""End to end: workload identity on the real gateway (a subprocess) and the real stand-in.

Callers present real projected-service-account-style JWTs (signed with keys generated here),
the gateway reads the issuer's JWKS from a file and re-reads it while it runs.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access import keys
from gateway.demo.standin import StandIn
from tests.conftest import GatewayFactory
from tests.harness import BILLING_KEY, UPSTREAM_TOKEN, RunningGateway, wait_for
from tests.jwt_keys import AUDIENCE, ISSUER, SigningKey, claims, ec_key, hand_made, jwks, rsa_key

RSA = rsa_key("rsa-1")
EC = ec_key("ec-1")
NEXT = rsa_key("rsa-2")  # the key a rotation brings in
OPS = "system:serviceaccount:ops:runner"


def teams() -> list[dict[str, Any]]:
    return [
        {"name": "billing", "keys": [keys.stored_form(BILLING_KEY)], "scope": ["*"],
         "service_accounts": ["billing/worker"], "rate_limit": 10000.0, "burst": 10000},
        {"name": "ops", "scope": ["*"], "service_accounts": ["ops/runner"]},
        {"name": "frozen", "scope": ["*"], "service_accounts": ["frozen/job"],
         "enabled": False},
    ]


@pytest.fixture
def jwks_path(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(RSA, EC))
    return path


# The stand-in behind each gateway, so that `cancel` can make a pending invocation to cancel.
STANDINS: dict[int, StandIn] = {}


@pytest.fixture
def start(gateway_factory: GatewayFactory, standin: StandIn) -> GatewayFactory:
    def start(jwks_file: Path) -> RunningGateway:
        gateway = gateway_factory(teams=teams(), issuers=[{
            "name": "prod", "issuer": ISSUER, "audience": AUDIENCE,
            "jwks_file": str(jwks_file),
        }])
        STANDINS[gateway.port] = standin
        return gateway

    return start


@pytest.fixture
def gateway(start: GatewayFactory, jwks_path: Path) -> RunningGateway:
    return start(jwks_path)


def cancel(gateway: RunningGateway, credential: str) -> tuple[httpx.Response, str]:
    """Cancel a pending invocation of the stand-in with `credential` as the bearer."""
    request_id = f"test-{uuid.uuid4().hex}"
    response = gateway.cancel(STANDINS[gateway.port].add_pending(), key=credential,
                              headers={"x-request-id": request_id})
    return response, request_id


def results(gateway: RunningGateway, request_id: str, count: int = 1) -> list[dict[str, Any]]:
    def mine(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r.get("request_id") == request_id]

    found = mine(gateway.wait_for_records(lambda rs: len(mine(rs)) >= count))
    assert len(found) == count, found
    return found


def wrong_key_answer(gateway: RunningGateway) -> tuple[int, dict[str, str], bytes]:
    response, _ = cancel(gateway, keys.new_key())
    return shape(response)


def shape(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (less the per-request id) and body: what must not tell refusals apart."""
    headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
    return response.status_code, headers, response.content


@pytest.mark.parametrize("key", [RSA, EC], ids=["RS256", "ES256"])
def test_a_jwt_authenticated_cancel_is_forwarded_and_audited_with_its_service_account(
    gateway: RunningGateway, standin: StandIn, key: SigningKey
) -> None:
    response, request_id = cancel(gateway, key.token())
    assert response.status_code == 202, response.text
    attempt, result = results(gateway, request_id, count=2)
    for record in (attempt, result):
        assert (record["team"], record["key_id"]) == ("billing", "sa:billing/worker")
    assert (attempt["event"], result["event"], result["outcome"]) == (
        "cancel.attempt", "cancel.result", "cancelled")
    [received] = standin.requests
    assert received.header_values("x-chroma-token") == [UPSTREAM_TOKEN]
    assert received.header_values("authorization") == []
    access = [e for e in gateway.logs() if e.get("event") == "access"
              and e.get("request_id") == request_id]
    assert [e["team"] for e in access] == ["billing"]


def test_each_service_account_gets_its_own_team(gateway: RunningGateway) -> None:
    response, request_id = cancel(gateway, EC.token(sub=OPS))
    assert response.status_code == 202
    [_, result] = results(gateway, request_id, count=2)
    assert (result["team"], result["key_id"]) == ("ops", "sa:ops/runner")


def test_team_keys_keep_working_beside_identity(gateway: RunningGateway) -> None:
    response, request_id = cancel(gateway, BILLING_KEY)
    assert response.status_code == 202
    [_, result] = results(gateway, request_id, count=2)
    assert result["key_id"] == keys.key_id(keys.stored_form(BILLING_KEY))


def test_a_service_account_of_a_disabled_team_is_forbidden(gateway: RunningGateway) -> None:
    response, request_id = cancel(gateway, RSA.token(sub="system:serviceaccount:frozen:job"))
    assert response.status_code == 403
    [result] = results(gateway, request_id)
    assert (result["outcome"], result["key_id"]) == ("forbidden", "sa:frozen/job")


def refused_tokens() -> dict[str, str]:
    now = int(time.time())
    other = rsa_key("rsa-unknown")
    return {
        "expired 40 s ago": RSA.token(iat=now - 700, nbf=now - 700, exp=now - 40),
        "valid 40 s from now": RSA.token(nbf=now + 40),
        "alg none": hand_made({"alg": "none", "kid": "rsa-1"}, claims()),
        "HS256": hand_made({"alg": "HS256", "kid": "rsa-1"}, claims(), b"m" * 32),
        "RSA kid with ES256": SigningKey("rsa-1", "ES256", EC.private).token(),
        "unknown kid": other.token(),
        "wrong audience": RSA.token(aud=["kubernetes"]),
        "wrong issuer": RSA.token(iss="https://elsewhere.example"),
        "not a service account": RSA.token(sub="system:node:n1"),
        "no team lists it": RSA.token(sub="system:serviceaccount:billing:intruder"),
        "oversized": RSA.token(padding="p" * 9000),
        "garbage": "eyJhbGciOiJSUzI1NiJ9.e30.AAAA",
    }


def test_every_refused_token_gets_the_wrong_team_key_answer_and_nothing_is_forwarded(
    gateway: RunningGateway, standin: StandIn
) -> None:
    expected = wrong_key_answer(gateway)
    assert expected[0] == 401
    for label, token in refused_tokens().items():
        response, request_id = cancel(gateway, token)
        assert shape(response) == expected, label
        [result] = results(gateway, request_id)
        assert (result["outcome"], result["team"], result["key_id"]) == (
            "unauthenticated", None, None), label
    assert standin.requests == []
    reasons = {e.get("reason") for e in gateway.logs() if e.get("event") == "identity.refused"}
    assert {"expired", "not yet valid", "algorithm not allowed", "unknown kid",
            "algorithm does not match the key", "wrong audience", "wrong issuer",
            "service account not listed by a team"} <= reasons
    assert gateway.process.poll() is None


def test_the_jwt_appears_in_no_audit_record_log_line_or_metric(
    gateway: RunningGateway, standin: StandIn
) -> None:
    accepted = RSA.token()
    refused = RSA.token(sub="system:serviceaccount:billing:intruder")
    now = int(time.time())
    expired = EC.token(exp=now - 60, nbf=now - 700, iat=now - 700)
    for token in (accepted, refused, expired):
        response, request_id = cancel(gateway, token)
        assert response.status_code == (202 if token is accepted else 401)
        results(gateway, request_id, count=2 if token is accepted else 1)
    metrics = gateway.client.get("/metrics").text
    assert 'team="billing"' in metrics
    gateway.stop()
    haystacks = {
        "audit": gateway.audit_path.read_bytes(),
        "stderr": gateway.stderr_path.read_bytes(),
        "stdout": gateway.stdout_path.read_bytes(),
        "metrics": metrics.encode(),
        "upstream": repr(standin.requests).encode(),
    }
    assert b"sa:billing/worker" in haystacks["audit"]
    for token in (accepted, refused, expired):
        signature = token.rsplit(".", 1)[1]
        for where, data in haystacks.items():
            for needle in (token, signature, token.split(".")[1]):
                assert needle.encode() not in data, where


def test_a_rewritten_jwks_is_used_without_a_restart(
    gateway: RunningGateway, jwks_path: Path
) -> None:
    assert cancel(gateway, RSA.token())[0].status_code == 202
    assert cancel(gateway, NEXT.token())[0].status_code == 401
    jwks_path.write_bytes(jwks(NEXT, EC))
    rewritten = time.monotonic()
    # Within two polls (about 1 s) the new key's tokens work; 5 s is only the test's patience.
    assert wait_for(lambda: cancel(gateway, NEXT.token())[0].status_code == 202)
    took = time.monotonic() - rewritten
    assert cancel(gateway, RSA.token())[0].status_code == 401
    assert cancel(gateway, EC.token())[0].status_code == 202
    loaded = [e for e in gateway.logs() if e.get("event") == "identity.jwks_loaded"]
    assert [e["kids"] for e in loaded] == [["ec-1", "rsa-1"], ["ec-1", "rsa-2"]]
    print(f"new JWKS in use {took:.2f} s after the rewrite")


@pytest.mark.parametrize("content", [b'{"keys": [', b'{"keys": []}', b""])
def test_a_bad_jwks_keeps_the_last_good_one(
    gateway: RunningGateway, jwks_path: Path, content: bytes
) -> None:
    jwks_path.write_bytes(content)

    def rejected() -> bool:
        return any(e.get("event") == "identity.jwks_rejected" for e in gateway.logs())

    assert wait_for(rejected)
    [event] = [e for e in gateway.logs() if e.get("event") == "identity.jwks_rejected"]
    assert event["kept_kids"] == ["ec-1", "rsa-1"] and event["issuer"] == "prod"
    assert cancel(gateway, RSA.token())[0].status_code == 202
    # And a good file after the bad one is taken again.
    jwks_path.write_bytes(jwks(NEXT))
    assert wait_for(lambda: cancel(gateway, NEXT.token())[0].status_code == 202)


def test_a_deleted_jwks_keeps_the_last_good_one(
    gateway: RunningGateway, jwks_path: Path
) -> None:
    jwks_path.unlink()
    assert wait_for(lambda: any(e.get("event") == "identity.jwks_unavailable"
                                  for e in gateway.logs()))
    assert cancel(gateway, EC.token())[0].status_code == 202


def test_a_gateway_started_without_its_jwks_refuses_tokens_until_it_appears(
    start: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "later.json"
    gateway = start(path)
    assert cancel(gateway, RSA.token())[0].status_code == 401
    assert cancel(gateway, BILLING_KEY)[0].status_code == 202  # team keys are unaffected
    path.write_bytes(jwks(RSA))
    assert wait_for(lambda: cancel(gateway, RSA.token())[0].status_code == 202)


# -- service accounts per issuer (issue 17, finding 8) ----------------------------------------

STAGING = rsa_key("rsa-staging")
STAGING_ISSUER = "https://staging.cluster.example"


def test_a_second_clusters_account_of_the_same_name_is_not_the_teams(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    """As reproduced: a second cluster's `billing/worker` got team `billing`. Now the entry
    `prod/billing/worker` trusts prod's tokens only, and records say which issuer."""
    (tmp_path / "prod.json").write_bytes(jwks(RSA))
    (tmp_path / "staging.json").write_bytes(jwks(STAGING))
    gateway = gateway_factory(
        teams=[{"name": "billing", "keys": [keys.stored_form(BILLING_KEY)], "scope": ["*"],
                "service_accounts": ["prod/billing/worker"]},
               {"name": "ops", "scope": ["*"], "service_accounts": ["ops/runner"]}],
        issuers=[{"name": "prod", "issuer": ISSUER, "audience": AUDIENCE,
                  "jwks_file": str(tmp_path / "prod.json")},
                 {"name": "staging", "issuer": STAGING_ISSUER, "audience": AUDIENCE,
                  "jwks_file": str(tmp_path / "staging.json")}])
    STANDINS[gateway.port] = standin

    impostor, _ = cancel(gateway, STAGING.token(iss=STAGING_ISSUER))
    assert impostor.status_code == 401
    response, request_id = cancel(gateway, RSA.token())
    assert response.status_code == 202
    for record in results(gateway, request_id, count=2):
        assert (record["team"], record["key_id"], record["issuer"]) == (
            "billing", "sa:billing/worker", "prod")
    response, request_id = cancel(gateway, STAGING.token(iss=STAGING_ISSUER, sub=OPS))
    assert response.status_code == 202  # unqualified: any issuer's ops/runner
    assert {r["issuer"] for r in results(gateway, request_id, count=2)} == {"staging"}
    response, request_id = cancel(gateway, BILLING_KEY)
    assert {r["issuer"] for r in results(gateway, request_id, count=2)} == {None}
