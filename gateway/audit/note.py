"""Signed notes (C2SP signed-note) with Ed25519, byte for byte as Go's golang.org/x/mod/sumdb/note.

A note is a text ending in a newline, a blank line, then one or more signature lines::

    <text, ending in "\\n">
    \\n
    — <key name> <base64(4-byte key ID || signature)>\\n

- A key name is non-empty UTF-8 with no Unicode space (White_Space) and no ``+``.
- key ID = the first 4 bytes (big-endian) of SHA-256(name || 0x0A || 0x01 || public key).
- verifier key: ``NAME+HEXID+BASE64(0x01 || 32-byte public key)``;
  private key: ``PRIVATE+KEY+NAME+HEXID+BASE64(0x01 || 32-byte seed)``.
- The whole note is valid UTF-8 with no control character but the newline; the text is
  everything up to the *last* blank line; the signature covers the text with its final newline.
- Opening a note: signatures by unknown keys are ignored; a signature by a known key that
  does not verify rejects the note; at least one known key must have signed it.

Error messages are Go's ("malformed note", "invalid signature for key NAME+HEXID", ...).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # cryptography is loaded to sign or verify, not to parse a note (audit prove)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

ALG_ED25519 = 1
SIGNATURE_PREFIX = "— "  # em dash (U+2014), space
MAX_SIGNATURES = 100  # as Go: parsing a note with more is refused
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
# Unicode White_Space (what Go's unicode.IsSpace reports): no key name may hold one.
_SPACE = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A key or note that is malformed, or a note that does not verify."""


class UnverifiedNote(NoteError):
    """The note is well formed, but no signature is by a key we know."""

    def __init__(self, note: Note) -> None:
        super().__init__("note has no verifiable signatures")
        self.note = note


def valid_key_name(name: str) -> bool:
    return bool(name) and "+" not in name and not _SPACE.search(name)


def key_id(name: str, public_key: bytes) -> int:
    """The key ID of an Ed25519 public key (32 bytes) under `name`."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode(text: str) -> bytes:
    """Standard base64 with padding, nothing else accepted."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_key(seed: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


class Verifier(NamedTuple):
    """A known public key: the name and key ID a signature line must carry, and the key."""

    name: str
    key_id: int
    public_key: bytes

    @property
    def encoded(self) -> str:
        """The verifier key: ``NAME+HEXID+BASE64(0x01 || key)``."""
        return f"{self.name}+{self.key_id:08x}+{_b64(bytes([ALG_ED25519]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer(NamedTuple):
    """A private key under a name. `repr` never shows the key."""

    name: str
    key_id: int
    seed: bytes

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id})"

    @property
    def verifier(self) -> Verifier:
        public = _raw_public(_private_key(self.seed).public_key())
        return Verifier(self.name, self.key_id, public)

    @property
    def encoded(self) -> str:
        """The private key: ``PRIVATE+KEY+NAME+HEXID+BASE64(0x01 || seed)``."""
        data = _b64(bytes([ALG_ED25519]) + self.seed)
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{data}"

    def sign(self, message: bytes) -> bytes:
        return _private_key(self.seed).sign(message)


def _split_key(text: str, parts: int) -> list[str]:
    """`text` cut at its first `parts - 1` pluses (the last part may hold more)."""
    pieces = text.split("+", parts - 1)
    return pieces + [""] * (parts - len(pieces))


def _key_material(name: str, hex_id: str, data64: str, what: str) -> tuple[int, bytes]:
    if not _HEX8.fullmatch(hex_id) or not valid_key_name(name):
        raise NoteError(f"malformed {what}")
    try:
        data = _b64decode(data64)
    except ValueError:
        raise NoteError(f"malformed {what}") from None
    if not data:
        raise NoteError(f"malformed {what}")
    if data[0] != ALG_ED25519:
        raise NoteError(f"unknown {what} algorithm")
    if len(data) != 33:
        raise NoteError(f"malformed {what}")
    return int(hex_id, 16), data[1:]


def parse_verifier_key(text: str) -> Verifier:
    """A verifier key ``NAME+HEXID+BASE64`` (as `audit keygen` prints it)."""
    name, hex_id, data64 = _split_key(text, 3)
    wanted, public = _key_material(name, hex_id, data64, "verifier key")
    if key_id(name, public) != wanted:
        raise NoteError("invalid verifier key hash")
    return Verifier(name, wanted, public)


def parse_signer_key(text: str) -> Signer:
    """A private key ``PRIVATE+KEY+NAME+HEXID+BASE64``; its key ID is checked."""
    private, key, name, hex_id, data64 = _split_key(text, 5)
    if private != "PRIVATE" or key != "KEY":
        raise NoteError("malformed private key")
    wanted, seed = _key_material(name, hex_id, data64, "private key")
    public = _raw_public(_private_key(seed).public_key())
    if key_id(name, public) != wanted:
        raise NoteError("invalid private key hash")
    return Signer(name, wanted, seed)


def generate_key(name: str) -> Signer:
    if not valid_key_name(name):
        raise NoteError("invalid key name: empty, or holds a space or a plus")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return Signer(name, key_id(name, _raw_public(private.public_key())), seed)


class Signature(NamedTuple):
    name: str
    key_id: int
    base64: str


class Note(NamedTuple):
    text: str
    sigs: tuple[Signature, ...]
    """Verified signatures."""
    unverified_sigs: tuple[Signature, ...] = ()
    """Signatures by keys not known (ignored, kept for re-signing)."""


def sign(text: str, signers: Sequence[Signer]) -> str:
    """The signed note of `text` (which must end in a newline) by every signer."""
    # Control characters would make a note no one can open (Go's Sign lets them through).
    if not text.endswith("\n") or _CONTROL.search(text):
        raise NoteError("malformed note")
    message = text.encode("utf-8")
    lines = []
    for signer in signers:
        if not valid_key_name(signer.name):
            raise NoteError("invalid signer")
        raw = signer.key_id.to_bytes(4, "big") + signer.sign(message)
        lines.append(f"{SIGNATURE_PREFIX}{signer.name} {_b64(raw)}\n")
    return text + "\n" + "".join(lines)


def _check_note_bytes(message: bytes) -> str:
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("malformed note") from None
    if _CONTROL.search(text):
        raise NoteError("malformed note")
    return text


def _index(verifiers: Iterable[Verifier]) -> dict[tuple[str, int], list[Verifier]]:
    known: dict[tuple[str, int], list[Verifier]] = {}
    for verifier in verifiers:
        known.setdefault((verifier.name, verifier.key_id), []).append(verifier)
    return known


def open_note(message: bytes | str, verifiers: Iterable[Verifier]) -> Note:
    """Parse a signed note and check its signatures against the known `verifiers`.

    Raises NoteError ("malformed note", "invalid signature for key ...", "ambiguous key ...")
    or UnverifiedNote (well formed, but no known key signed it).
    """
    raw = message.encode("utf-8") if isinstance(message, str) else message
    whole = _check_note_bytes(raw)
    split = whole.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note")
    text, block = whole[: split + 1], whole[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("malformed note")
    signed = text.encode("utf-8")
    known = _index(verifiers)
    sigs: list[Signature] = []
    unverified: list[Signature] = []
    seen: set[tuple[str, int]] = set()
    seen_unverified: set[str] = set()
    for count, line in enumerate(block[:-1].split("\n"), start=1):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("malformed note")
        body = line[len(SIGNATURE_PREFIX) :]
        name, _, data64 = body.partition(" ")
        try:
            data = _b64decode(data64)
        except ValueError:
            raise NoteError("malformed note") from None
        if not valid_key_name(name) or not data64 or len(data) < 5:
            raise NoteError("malformed note")
        if count > MAX_SIGNATURES:
            raise NoteError("malformed note")
        kid = int.from_bytes(data[:4], "big")
        signature = Signature(name, kid, data64)
        candidates = known.get((name, kid))
        if not candidates:
            if body not in seen_unverified:
                seen_unverified.add(body)
                unverified.append(signature)
            continue
        if len(candidates) > 1:
            raise NoteError(f"ambiguous key {name}+{kid:08x}")
        if (name, kid) in seen:
            continue
        seen.add((name, kid))
        if not candidates[0].verify(signed, data[4:]):
            raise NoteError(f"invalid signature for key {name}+{kid:08x}")
        sigs.append(signature)
    note = Note(text, tuple(sigs), tuple(unverified))
    if not sigs:
        raise UnverifiedNote(note)
    return note


def parse_note(message: bytes | str) -> Note:
    """A note's text and signature lines, with nothing verified (all in `unverified_sigs`)."""
    try:
        return open_note(message, ())
    except UnverifiedNote as exc:
        return exc.note
