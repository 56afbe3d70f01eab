"""Real signing keys and real tokens for the workload-identity tests.

Keys are generated here with `cryptography`; tokens are signed with PyJWT exactly as a
Kubernetes API server signs projected service-account tokens (RS256 or ES256, `kid` header).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "chroma-sync-gateway"
ACCOUNT = "billing/worker"  # NAMESPACE/NAME, as a team lists it
SUBJECT = "system:serviceaccount:billing:worker"


@dataclass
class SigningKey:
    kid: str
    algorithm: str  # "RS256" or "ES256"
    private: Any = field(repr=False)

    def jwk(self, **extra: Any) -> dict[str, Any]:
        """The public JWK, as the cluster's /openid/v1/jwks serves it."""
        codec = RSAAlgorithm if self.algorithm == "RS256" else ECAlgorithm
        data: dict[str, Any] = codec.to_jwk(self.private.public_key(), as_dict=True)
        data.update({"kid": self.kid, "use": "sig", "alg": self.algorithm, **extra})
        return data

    def token(self, *, headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        """A token with the claims a projected volume gets; an override of None drops one."""
        payload = {k: v for k, v in claims(**overrides).items() if v is not None}
        return jwt.encode(payload, self.private, algorithm=self.algorithm,
                          headers={"kid": self.kid, **(headers or {})})


def rsa_key(kid: str = "rsa-1") -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537,
                                                             key_size=2048))


def ec_key(kid: str = "ec-1") -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def jwks(*keys: SigningKey | dict[str, Any]) -> bytes:
    return json.dumps(
        {"keys": [k.jwk() if isinstance(k, SigningKey) else k for k in keys]}).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand, for what PyJWT refuses to sign (`none`, HMAC confusion)."""
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}." + _b64(
        signature)


def hmac_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with `secret` (the classic attack: the RSA public key as secret)."""
    unsigned = hand_made(header, claims).rsplit(".", 1)[0]
    mac = hmac.new(secret, unsigned.encode("ascii"), hashlib.sha256).digest()
    return f"{unsigned}.{_b64(mac)}"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": [AUDIENCE], "sub": SUBJECT, "iat": now,
                            "nbf": now, "exp": now + 600}
    base.update(overrides)
    return base
