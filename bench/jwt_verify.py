"""The cost of verifying one workload-identity token, with its issuer's key already parsed.

    python -m bench.jwt_verify [--number N]

Prints microseconds per call (best of 5 runs of N calls) for RS256 (2048-bit) and ES256
(P-256) tokens shaped like projected service-account tokens: the whole authentication the
gateway does for a JWT (`authenticate_credential`), PyJWT's verification alone, and the
signature check alone. Nothing here is a test; the figures guide decisions.
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

import jwt

from gateway.access.identity import (
    LEEWAY_SECONDS,
    IssuerKeys,
    ServiceAccountAuthenticator,
    VerificationKey,
)
from gateway.config.model import IssuerConfig, TeamConfig
from gateway.secrets.watch import WatchedFile
from tests.jwt_keys import AUDIENCE, ISSUER, ec_key, jwks, rsa_key

# What a kubelet puts beside iss/sub/aud/exp, so the token has a real one's size (~1 KB).
K8S_CLAIMS = {
    "namespace": "billing",
    "node": {"name": "ip-10-0-12-34.eu-west-1.compute.internal",
             "uid": "5d3c1f0e-8a4b-4c2d-9e6f-7a8b9c0d1e2f"},
    "pod": {"name": "billing-worker-7c9f8d6b5-x2k4q",
            "uid": "0b8e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4"},
    "serviceaccount": {"name": "worker", "uid": "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"},
    "warnafter": 1700000600,
}


def best_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per run (default 2000)")
    number = parser.parse_args().number
    signers = [rsa_key("rsa-1"), ec_key("ec-1")]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jwks.json"
        path.write_bytes(jwks(*signers))
        issuer = IssuerKeys(IssuerConfig("bench", ISSUER, AUDIENCE, str(path)),
                            WatchedFile(str(path), what="JWKS"))
        issuer.file.load()
        issuer.adopt()
    teams = [TeamConfig("billing", (), service_accounts=("billing/worker",))]
    accounts = ServiceAccountAuthenticator([issuer], teams)
    print(f"{'algorithm':<10} {'token bytes':>11} {'gateway us':>11} {'pyjwt us':>9} "
          f"{'signature us':>13}")
    for signer in signers:
        token = signer.token(**{"kubernetes.io": K8S_CLAIMS}).encode()
        assert accounts.authenticate_credential(token).key_id == "sa:billing/worker"
        gateway, library, check = measure(accounts, issuer.keys[signer.kid], token, number)
        print(f"{signer.algorithm:<10} {len(token):>11} {gateway:>11.1f} {library:>9.1f} "
              f"{check:>13.1f}")


def measure(accounts: ServiceAccountAuthenticator, key: VerificationKey, token: bytes,
            number: int) -> tuple[float, float, float]:
    signing_input, _, signature = token.rpartition(b".")
    raw_signature = jwt.utils.base64url_decode(signature)
    algorithm = jwt.get_algorithm_by_name(key.algorithm)
    return (
        best_us(lambda: accounts.authenticate_credential(token), number),
        best_us(lambda: jwt.decode(token, key.key, algorithms=[key.algorithm],
                                   audience=AUDIENCE, issuer=ISSUER, leeway=LEEWAY_SECONDS),
                number),
        best_us(lambda: algorithm.verify(signing_input, key.key, raw_signature), number),
    )

if __name__ == "__main__":
    main()
