"""Signing keys on disk, and verifier keys given on the command line.

The signing key file (`audit.signing_key_file`) holds one signed-note private key,
``PRIVATE+KEY+NAME+HEXID+BASE64``, as `audit keygen` writes it. It is a secret like the HMAC
key: read with the same limits, never echoed, and refused when it holds the upstream token.
A verifier key argument (`--public-key VKEY`) is the key itself or a file holding it.
"""

from __future__ import annotations

import os

from gateway.audit import note
from gateway.secrets.sources import (
    MAX_SECRET_BYTES,
    FileSecret,
    InvalidSecret,
    validate_secret,
)

WHAT = "audit signing key"
_KEY_SHAPE = "a signed-note private key (PRIVATE+KEY+NAME+ID+BASE64, as `audit keygen` writes)"
_MAX_VERIFIER_FILE = 4096


def signer_from_text(text: str) -> note.Signer:
    """The signer in a key file's trimmed text; InvalidSecret (never quoting it) otherwise."""
    try:
        return note.parse_signer_key(text)
    except note.NoteError:
        raise InvalidSecret(f"{WHAT} is not {_KEY_SHAPE}") from None


def signer_from_bytes(raw: bytes) -> note.Signer:
    return signer_from_text(validate_secret(raw, what=WHAT))


def load_signer(path: str) -> note.Signer:
    """The key in `path` (by the rules the gateway reads it with); InvalidSecret otherwise."""
    source = SigningKeySource(path)
    source.refresh()
    if source.signer is None:
        raise InvalidSecret(source.problem or f"{WHAT} can't be read")
    return source.signer


class SigningKeySource(FileSecret):
    """`audit.signing_key_file`, watched like the HMAC key: `signer` is None while it is
    missing, unreadable or malformed (the writer then fails closed)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, what=WHAT)
        self.signer: note.Signer | None = None

    def update(self) -> bool:
        before = (self.value, self.problem)
        content, problem = self.file.content, self.file.problem
        try:
            if content is None:
                raise InvalidSecret(problem or f"{WHAT} file can't be read")
            if len(content) > MAX_SECRET_BYTES:
                raise InvalidSecret(f"{WHAT} is longer than {MAX_SECRET_BYTES} bytes")
            try:
                text = content.decode("utf-8").strip()  # a key name may be any UTF-8
            except UnicodeDecodeError:
                raise InvalidSecret(f"{WHAT} is not {_KEY_SHAPE}") from None
            self.signer = signer_from_text(text)
            self.value, self.problem = text, None
        except InvalidSecret as exc:
            self.signer, self.value, self.problem = None, None, str(exc)
        return (self.value, self.problem) != before


def strict_problem(path: str, token: str | None) -> str | None:
    """`check-config --strict`: why the gateway would fail closed on this key, or None."""
    source = SigningKeySource(path)
    source.refresh()
    if source.signer is None:
        return source.problem or f"{WHAT} can't be read"
    if token and source.value is not None and token in source.value:
        return "holds the upstream token"
    return None


def write_new_key(path: str, name: str) -> note.Signer:
    """A new key under `name`, written to a new file `path` (mode 0600; never overwrites).

    Raises ValueError for a bad name, FileExistsError / OSError for the file.
    """
    if not note.valid_key_name(name):
        raise ValueError("--name must be non-empty, with no spaces and no '+' (a key name of "
                         "the signed-note format, e.g. audit.example.com/billing-gateway)")
    signer = note.generate_key(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask says
        os.write(fd, (signer.encoded + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return signer


def verifier_from_arg(text: str) -> note.Verifier:
    """A `--public-key` value: a verifier key, or the path of a file holding one.

    Raises ValueError with a one-line message.
    """
    try:
        return note.parse_verifier_key(text.strip())
    except note.NoteError as exc:
        problem = str(exc)
    if os.path.isfile(text):
        try:
            with open(text, "rb") as handle:
                raw = handle.read(_MAX_VERIFIER_FILE + 1)
        except OSError as exc:
            raise ValueError(f"{text}: can't read ({exc.strerror})") from None
        if len(raw) > _MAX_VERIFIER_FILE:
            raise ValueError(f"{text}: not a verifier key file (over {_MAX_VERIFIER_FILE} "
                             f"bytes)")
        content = raw.decode("utf-8", "replace").strip()
        if content.startswith("PRIVATE+KEY+"):
            raise ValueError(f"{text}: holds a private key; give the verifier key (what "
                             f"`audit keygen` printed)")
        try:
            return note.parse_verifier_key(content)
        except note.NoteError as exc:
            raise ValueError(f"{text}: not a verifier key (NAME+ID+BASE64): {exc}") from None
    if text.startswith("PRIVATE+KEY+"):
        raise ValueError("that is a private key; give the verifier key (what `audit keygen` "
                         "printed)")
    shown = ascii(text[:60] + ("..." if len(text) > 60 else ""))
    raise ValueError(f"{shown} is neither a verifier key (NAME+ID+BASE64) nor a file holding "
                     f"one ({problem})")
