"""The audit HMAC key: what records are MACed with, and why it can't be used when it can't.

Auditors get this key, so a key that holds the upstream (Chroma) token is never used.
"""

from __future__ import annotations

from gateway.secrets.sources import SecretSource


class MacKey:
    """`audit.hmac_key_file` as read now (`configured` is False without one)."""

    def __init__(self, source: SecretSource | None, token: SecretSource | None) -> None:
        self.configured = source is not None
        self._source = source
        self._token = token  # the HMAC key must never be (or hold) it

    def current(self) -> bytes | None:
        """The key to MAC with now; None without a usable one."""
        if self._source is None or self._source.value is None:
            return None
        key = self._source.value
        token = self._token.value if self._token is not None else None
        if token and token in key:
            return None  # auditors get this key: it must never hand them the Chroma token
        return key.encode("ascii")

    def problem(self) -> str:
        """Why `current()` is None."""
        if self._source is None:
            return "no key"
        if self._source.value is not None:
            return "the audit HMAC key file holds the upstream token; it is not used"
        return self._source.problem or "no key"
