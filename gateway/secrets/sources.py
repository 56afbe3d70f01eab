"""Reading and validating secret values: the upstream token and the audit HMAC key.

Both come from files that operators mount (or, for the token, an environment variable), and
both follow the same rules: surrounding whitespace is trimmed, and a value that is empty, holds
a control character (CR, LF, NUL, ...) or is not printable ASCII is refused. A refused value is
never echoed back: errors say what is wrong, not what was read.
"""

from __future__ import annotations

import hashlib
import os

from gateway.secrets.watch import WatchedFile, read_problem, read_regular_file

MAX_SECRET_BYTES = 8192
MAX_READ_BYTES = 65536  # read past MAX_SECRET_BYTES, so that an oversized secret says so
MIN_HMAC_KEY_CHARS = 32


class InvalidSecret(ValueError):
    """A secret value is missing, empty or malformed. The message never holds the value."""


def validate_secret(raw: bytes, *, what: str, min_chars: int = 1) -> str:
    """Trim `raw` and check it is a usable secret; return it as text."""
    if len(raw) > MAX_SECRET_BYTES:
        raise InvalidSecret(f"{what} is longer than {MAX_SECRET_BYTES} bytes")
    value = raw.strip(b" \t\r\n\f\v")
    if not value:
        raise InvalidSecret(f"{what} is empty")
    # Visible ASCII and inner spaces only: anything else could split or smuggle a header.
    if any(b < 0x20 or b > 0x7E for b in value):
        raise InvalidSecret(f"{what} holds a control or non-ASCII character")
    if len(value) < min_chars:
        raise InvalidSecret(f"{what} is shorter than {min_chars} characters")
    return value.decode("ascii")


def read_secret_file(path: str, *, what: str, min_chars: int = 1) -> str:
    """Read and validate a secret file (following symlinks, as Kubernetes mounts need)."""
    try:
        raw = read_regular_file(path, what=what, max_bytes=MAX_READ_BYTES)
    except OSError as exc:
        raise InvalidSecret(read_problem(what, exc)) from None
    return validate_secret(raw, what=what, min_chars=min_chars)


def load_hmac_key(path: str) -> bytes:
    """The audit HMAC key: the file's trimmed text, at least 32 characters, as bytes."""
    return read_secret_file(path, what="audit HMAC key", min_chars=MIN_HMAC_KEY_CHARS).encode(
        "ascii"
    )


def fingerprint(secret: str | bytes) -> str:
    """A non-secret handle for logs: the first 12 hex digits of the value's SHA-256."""
    data = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hashlib.sha256(data).hexdigest()[:12]


class SecretSource:
    """The current value of a secret, or why there is none. Fails closed: no value, no use."""

    what: str = "secret"

    def __init__(self) -> None:
        self.value: str | None = None
        self.problem: str | None = "not loaded yet"

    @property
    def available(self) -> bool:
        return self.value is not None

    def refresh(self) -> bool:
        """Re-check the source; return True when the value or its state changed."""
        return False


class EnvSecret(SecretSource):
    """A secret from an environment variable, read once (the environment can't change)."""

    def __init__(self, name: str, *, what: str) -> None:
        super().__init__()
        self.what = what
        raw = os.environ.get(name)
        try:
            if raw is None:
                raise InvalidSecret(f"{what} environment variable {name} is not set")
            self.value = validate_secret(raw.encode("utf-8", "surrogateescape"), what=what)
            self.problem = None
        except InvalidSecret as exc:
            self.problem = str(exc)


class FileSecret(SecretSource):
    """A secret from a mounted file, re-read while the gateway runs (see `gateway.secrets.watch`).

    `refresh()` reads and adopts at once (start-up, `check-config`); the gateway's `Watcher`
    polls `file`, which adopts a change only once two reads agree, then calls `update()`.
    """

    def __init__(self, path: str, *, what: str, min_chars: int = 1) -> None:
        super().__init__()
        self.path = path
        self.what = what
        self._min_chars = min_chars
        self.file = WatchedFile(path, what=what, max_bytes=MAX_READ_BYTES)

    def refresh(self) -> bool:
        self.file.load()
        return self.update()

    def update(self) -> bool:
        """Derive the value from the file's adopted content; True when it changed."""
        before = (self.value, self.problem)
        content, problem = self.file.content, self.file.problem
        try:
            if content is None:
                raise InvalidSecret(problem or f"{self.what} file can't be read")
            self.value = validate_secret(content, what=self.what, min_chars=self._min_chars)
            self.problem = None
        except InvalidSecret as exc:
            self.value = None
            self.problem = str(exc)
        return (self.value, self.problem) != before


def upstream_token_source(token_file: str | None, token_env: str | None) -> SecretSource:
    """The upstream token's source: `upstream.token_file`, else `upstream.token_env`."""
    if token_file:
        return FileSecret(token_file, what="upstream token")
    return EnvSecret(token_env or "", what="upstream token")
