"""Workload identity: Kubernetes projected service-account tokens as credentials.

A caller may present, instead of a team key, the JWT its kubelet projects into the pod. It is
verified against the public keys of an `[[issuers]]` entry (a JSON Web Key Set read from a
file), and its `sub`, `system:serviceaccount:NAMESPACE:NAME`, names the service account a team
lists. The principal's `key_id` is `sa:NAMESPACE/NAME`.

Only RS256 and ES256 are accepted, each only with a key of its own type; the key is chosen by
the token's `kid`. Keys are parsed once per JWKS load, so a request costs one signature check.
Every refusal is the same 401 as a wrong team key; the reason is logged (never the token).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
import structlog
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.access.auth import MAX_JWT_BYTES, Principal
from gateway.config.model import Config, IssuerConfig, TeamConfig
from gateway.errors import unauthenticated
from gateway.secrets.watch import WatchedFile

log = structlog.get_logger("gateway.identity")

LEEWAY_SECONDS = 30
SUBJECT_RE = re.compile(
    r"system:serviceaccount:([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
    r":([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)")
# The private members of RSA and EC JWKs: a public key set holding one is refused.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


_REASONS: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "expired",
    jwt.ImmatureSignatureError: "not yet valid",
    jwt.InvalidAudienceError: "wrong audience",
    jwt.InvalidSignatureError: "bad signature",
    jwt.DecodeError: "malformed",
}


class JwksProblem(ValueError):
    """A key set can't be used. The message names at most `kid`s, never key material."""


class TokenRefused(Exception):
    """Why a token was refused: a short reason for the log, never any of the token."""


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    algorithm: str  # "RS256" or "ES256": the only one this key verifies
    key: Any  # a cryptography public key object, parsed once


@dataclass(frozen=True)
class KeySet:
    keys: Mapping[str, VerificationKey]
    skipped: tuple[str, ...] = ()  # "kid: why", for keys the set holds that can't be used


def parse_jwks(raw: bytes) -> KeySet:
    """Parse a JWKS document into verification keys by `kid`, or raise `JwksProblem`."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise JwksProblem("not a JSON document") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksProblem('not a JWKS: no "keys" array')
    keys: dict[str, VerificationKey] = {}
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise JwksProblem(f"keys[{index}] is not an object")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256 or not kid.isprintable():
            # Tokens choose their key by kid; one without a (sane) kid could never be chosen.
            skipped.append(f"keys[{index}]: no kid")
            continue
        if kid in keys or any(s.startswith(f"{kid!r}:") for s in skipped):
            raise JwksProblem(f"kid {kid!r} appears twice")
        try:
            keys[kid] = _verification_key(kid, entry)
        except JwksProblem as exc:
            skipped.append(f"{kid!r}: {exc}")
    if not keys:
        raise JwksProblem("no usable RS256 or ES256 signing key"
                          + (f" ({'; '.join(skipped)})" if skipped else ""))
    return KeySet(keys, tuple(skipped))


def _verification_key(kid: str, jwk: Mapping[str, Any]) -> VerificationKey:
    kty, crv, alg, use = jwk.get("kty"), jwk.get("crv"), jwk.get("alg"), jwk.get("use")
    if use is not None and use != "sig":
        raise JwksProblem(f"use is {use!r}, not sig")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise JwksProblem("holds private key material")
    parse: Callable[[dict[str, Any]], Any]
    if kty == "RSA":
        algorithm, parse = "RS256", RSAAlgorithm.from_jwk
    elif kty == "EC" and crv == "P-256":
        algorithm, parse = "ES256", ECAlgorithm.from_jwk
    else:
        raise JwksProblem(f"kty {kty!r}{f' crv {crv!r}' if kty == 'EC' else ''} is not "
                          "RSA or EC P-256")
    if alg is not None and alg != algorithm:
        # The key's own `alg` restricts it: an RSA key marked RS512 is not an RS256 key.
        raise JwksProblem(f"alg is {alg!r}, not {algorithm}")
    try:
        key = parse(dict(jwk))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, binascii.Error):
        raise JwksProblem("malformed key parameters") from None
    return VerificationKey(kid, algorithm, key)


def _unverified_header(token: bytes) -> dict[str, Any]:
    """The JOSE header, only to choose the key: PyJWT checks the whole token strictly after.

    Parsed here rather than by PyJWT, whose segment checks cost more than the RS256
    signature itself; doing them once (in `jwt.decode`) is enough.
    """
    segment = token.partition(b".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):  # UnicodeDecodeError and JSONDecodeError included
        raise TokenRefused("malformed") from None
    if not isinstance(header, dict):
        raise TokenRefused("malformed")
    return header


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str

    @property
    def key_id(self) -> str:
        return f"sa:{self.namespace}/{self.name}"


class IssuerKeys:
    """One `[[issuers]]` entry and its current key set (the last good one, if any)."""

    def __init__(self, config: IssuerConfig, file: WatchedFile) -> None:
        self.config = config
        self.file = file
        self.keys: Mapping[str, VerificationKey] = {}
        self._loaded: bytes | None = None

    def adopt(self) -> None:
        """Take the file's current content as the key set; on a problem keep the last good."""
        name = self.config.name
        content = self.file.content
        if content is None:
            log.error("identity.jwks_unavailable", issuer=name, problem=self.file.problem,
                      kept_kids=sorted(self.keys))
            return
        if content == self._loaded:
            return
        try:
            key_set = parse_jwks(content)
        except JwksProblem as exc:
            log.error("identity.jwks_rejected", issuer=name, problem=str(exc),
                      kept_kids=sorted(self.keys))
            return
        self.keys, self._loaded = key_set.keys, content
        log.info("identity.jwks_loaded", issuer=name, kids=sorted(key_set.keys),
                 skipped=list(key_set.skipped))


class ServiceAccountAuthenticator:
    """Verifies projected service-account tokens and maps their account to its team."""

    def __init__(self, issuers: Sequence[IssuerKeys], teams: Sequence[TeamConfig]) -> None:
        self.issuers = tuple(issuers)
        self._teams = {account: team.name for team in teams for account in team.service_accounts}

    def verify(self, token: bytes) -> ServiceAccount:
        """The token's service account, or raise `TokenRefused` naming why."""
        if len(token) > MAX_JWT_BYTES:  # before any parsing
            raise TokenRefused("oversized")
        header = _unverified_header(token)
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ("RS256", "ES256"):
            raise TokenRefused("algorithm not allowed")
        if not isinstance(kid, str):
            raise TokenRefused("no kid")
        # Kubernetes kids are key hashes, so one issuer holds a kid; should two, `iss` decides.
        candidates = [(i, i.keys[kid]) for i in self.issuers if kid in i.keys]
        if not candidates:
            raise TokenRefused("unknown kid")
        refusal = TokenRefused("unknown kid")
        for issuer, key in candidates:
            if key.algorithm != algorithm:
                refusal = TokenRefused("algorithm does not match the key")
                continue
            try:
                verified = jwt.decode(
                    token, key.key, algorithms=[key.algorithm],
                    audience=issuer.config.audience, issuer=issuer.config.issuer,
                    leeway=LEEWAY_SECONDS, options={"require": ["exp", "iss", "aud", "sub"]},
                )
            except jwt.InvalidIssuerError:
                refusal = TokenRefused("wrong issuer")
                continue
            except jwt.PyJWTError as exc:
                raise TokenRefused(_REASONS.get(type(exc), f"invalid ({type(exc).__name__})")
                                   ) from None
            subject = SUBJECT_RE.fullmatch(str(verified["sub"]))
            if subject is None:
                raise TokenRefused("sub is not a service account")
            return ServiceAccount(subject[1], subject[2])
        raise refusal

    def authenticate_credential(self, credential: bytes) -> Principal:
        try:
            account = self.verify(credential)
        except TokenRefused as exc:
            log.info("identity.refused", reason=str(exc))
            raise unauthenticated() from None
        except Exception as exc:
            # A library surprise on hostile input is still a refusal, never a 500.
            log.warning("identity.refused", reason=f"unexpected {type(exc).__name__}")
            raise unauthenticated() from None
        team = self._teams.get(f"{account.namespace}/{account.name}")
        if team is None:
            log.info("identity.refused", reason="service account not listed by a team",
                     key_id=account.key_id)
            raise unauthenticated()
        return Principal(team, account.key_id)


def jwks_state(path: str) -> str:
    """For `check-config`: the kids a JWKS file offers, or why it can't be used (no key data)."""
    file = WatchedFile(path, what="JWKS")
    file.load()
    if file.content is None:
        return f"NOT USABLE: {file.problem}"
    try:
        key_set = parse_jwks(file.content)
    except JwksProblem as exc:
        return f"NOT USABLE: {exc}"
    skipped = f"; skipped {'; '.join(key_set.skipped)}" if key_set.skipped else ""
    return f"kids {', '.join(sorted(key_set.keys))}{skipped}"


def load_issuers(config: Config) -> tuple[IssuerKeys, ...]:
    """Each `[[issuers]]` entry with its JWKS read once.

    The gateway registers each `file` with its `Watcher`, `adopt` as the callback, so a
    changed JWKS is taken without a restart.
    """
    issuers = []
    for entry in config.issuers:
        keys = IssuerKeys(entry, WatchedFile(entry.jwks_file, what=f"issuer {entry.name} JWKS"))
        keys.file.load()
        keys.adopt()
        issuers.append(keys)
    return tuple(issuers)
