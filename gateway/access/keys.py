"""Team keys: generation, the stored form, and the non-secret `key_id` handle."""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "csg_"
KEY_BYTES = 32  # 256 bits of randomness
KEY_RE = re.compile(r"csg_[A-Za-z0-9_-]{43}")  # what `new_key` makes, and nothing else


def new_key() -> str:
    """A fresh team key: `csg_` and 43 URL-safe base64 characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def is_team_key(text: str) -> bool:
    return KEY_RE.fullmatch(text) is not None


def digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def stored_form(key: str) -> str:
    """`sha256:` and the lowercase hex SHA-256 of the whole key (prefix included), as UTF-8."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id(stored: str) -> str:
    """The first 12 hex digits of the stored form: safe for logs, metrics and audit."""
    return stored.removeprefix("sha256:")[:12]
