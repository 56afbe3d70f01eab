"""Who is calling, and may they cancel.

`Authenticator` turns request headers into a `Principal` (or refuses); `Authorizer` decides
whether that principal may cancel. The handler calls one of each and never branches on the
kind of credential itself.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.access import keys
from gateway.config.model import TeamConfig
from gateway.errors import RequestRejected, unauthenticated

# A bearer key is 47 characters; anything far longer is not a key and is not worth hashing.
MAX_CREDENTIAL_BYTES = 1024
# A projected service-account token is ~1 to 1.5 KB; a JWT is refused past this, unparsed.
MAX_JWT_BYTES = 8192
# Three base64url segments (a team key has no dot): such a credential is a JWT's to check.
JWT_SHAPE = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Principal:
    team: str
    key_id: str


class Authenticator(Protocol):
    def authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> Principal:
        """Return the caller, or raise `RequestRejected` (401)."""


class Authorizer(Protocol):
    def authorize(self, principal: Principal) -> None:
        """Return if the principal may cancel, else raise `RequestRejected` (403)."""


def bearer_credential(
    headers: Sequence[tuple[bytes, bytes]], *, max_bytes: int = MAX_CREDENTIAL_BYTES
) -> bytes | None:
    """The one `Authorization: Bearer` credential, or None when absent, repeated or malformed."""
    found: bytes | None = None
    count = 0
    for name, value in headers:
        if name.lower() == b"authorization":
            count += 1
            found = value
    if count != 1 or found is None:
        return None
    scheme, _, credential = found.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    credential = credential.strip(b" \t")
    if not credential or len(credential) > max_bytes:
        return None
    return credential


class TeamKeyAuthenticator:
    """Bearer team keys checked against their stored SHA-256 digests.

    The presented key is hashed, and the digest is compared with *every* stored digest using
    `hmac.compare_digest`, so the time taken does not depend on which key (if any) matched.
    """

    def __init__(self, teams: Sequence[TeamConfig]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for team in teams:
            for stored in team.keys:
                raw = bytes.fromhex(stored.removeprefix("sha256:"))
                self._entries.append((raw, Principal(team.name, keys.key_id(stored))))

    def authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> Principal:
        return self.authenticate_credential(bearer_credential(headers))

    def authenticate_credential(self, credential: bytes | None) -> Principal:
        # Hash even a missing credential so that absent and wrong keys cost the same.
        presented = keys.digest(credential if credential is not None else b"")
        match: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, presented):
                match = principal
        if credential is None or match is None:
            raise unauthenticated()
        return match


class TokenAuthenticator(Protocol):
    def authenticate_credential(self, credential: bytes) -> Principal:
        """Return the caller a JWT names, or raise `RequestRejected` (401)."""


class CompositeAuthenticator:
    """Team keys and workload-identity JWTs side by side, told apart by their shape.

    The header is parsed once, with the JWT's larger cap; anything that isn't JWT-shaped gets
    exactly the team-key check (its 1 KiB cap and constant-time comparison included).
    """

    def __init__(self, team_keys: TeamKeyAuthenticator, tokens: TokenAuthenticator) -> None:
        self._team_keys = team_keys
        self._tokens = tokens

    def authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> Principal:
        credential = bearer_credential(headers, max_bytes=MAX_JWT_BYTES)
        if credential is not None and JWT_SHAPE.fullmatch(credential):
            return self._tokens.authenticate_credential(credential)
        if credential is not None and len(credential) > MAX_CREDENTIAL_BYTES:
            credential = None
        return self._team_keys.authenticate_credential(credential)


class TeamSwitchAuthorizer:
    """A team may cancel unless its kill switch (`enabled = false`) is set."""

    def __init__(self, teams: Sequence[TeamConfig]) -> None:
        self._disabled = frozenset(team.name for team in teams if not team.enabled)

    def authorize(self, principal: Principal) -> None:
        if principal.team in self._disabled:
            raise RequestRejected(
                f"team {principal.team!r} may not cancel invocations",
                status=403,
                code="forbidden",
                outcome="forbidden",
            )
