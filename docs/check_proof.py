#!/usr/bin/env python3
"""Check a chroma-sync-gateway audit proof without the gateway: Python 3.9+ and `cryptography`.

    python3 check_proof.py PROOF.json VERIFIER_KEY [VERIFIER_KEY...]

PROOF.json is the output of `chroma-sync-gateway audit prove`; VERIFIER_KEY is the key the
log's operators published (NAME+ID+BASE64, as `audit keygen` prints it) or a file holding it.
Exit 0 with one `ok:` line, 1 naming what failed, 2 for bad input.

Everything it relies on is written out below, from the public specifications, so that it can
be read and checked on its own:

- signed notes: https://c2sp.org/signed-note (Ed25519, key ID = first 4 bytes of
  SHA-256(name || 0x0A || 0x01 || public key));
- checkpoints: https://c2sp.org/tlog-checkpoint (origin, tree size, base64 root);
- Merkle trees and proofs: RFC 9162 section 2.1 (leaf = SHA-256(0x00 || line),
  node = SHA-256(0x01 || left || right); inclusion 2.1.3.2, consistency 2.1.4.2).
"""

import base64
import binascii
import hashlib
import json
import os
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Bad(Exception):
    """The proof does not hold (exit 1)."""


class Usage(Exception):
    """Bad input (exit 2)."""


# --- Signed notes -------------------------------------------------------------------------------

SPACES = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def b64(text):
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None


def valid_name(name):
    return bool(name) and "+" not in name and not SPACES.search(name)


def verifier_key(text):
    """(name, key id, 32-byte public key) of a verifier key NAME+HEXID+BASE64."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as handle:
            text = handle.read(4096)
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not re.fullmatch(r"[0-9a-fA-F]{8}", parts[1]):
        raise Usage("not a verifier key (NAME+ID+BASE64)")
    name, hex_id, data64 = parts
    try:
        data = b64(data64)
    except ValueError:
        raise Usage("not a verifier key (its key is not base64)") from None
    if not valid_name(name) or len(data) != 33 or data[0] != 1:
        raise Usage("not an Ed25519 verifier key (NAME+ID+BASE64)")
    digest = hashlib.sha256(name.encode() + b"\n" + data).digest()
    if int(hex_id, 16) != int.from_bytes(digest[:4], "big"):
        raise Usage("verifier key: its ID does not match its name and key")
    return name, int(hex_id, 16), data[1:]


def open_note(msg, keys):
    """The text of a signed note that at least one known key signed; Bad otherwise."""
    if re.search("[\x00-\x09\x0b-\x1f]", msg):
        raise Bad("malformed note (a control character)")
    split = msg.rfind("\n\n")
    if split < 0 or not msg.endswith("\n"):
        raise Bad("malformed note (no signature block)")
    text, block = msg[: split + 1], msg[split + 2 :]
    signed_by = []
    for line in block[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise Bad("malformed note (a signature line does not start with an em dash)")
        name, _, data64 = line[2:].partition(" ")
        try:
            sig = b64(data64)
        except ValueError:
            raise Bad("malformed note (a signature is not base64)") from None
        if not valid_name(name) or len(sig) < 5:
            raise Bad("malformed note (bad signature line)")
        key_id = int.from_bytes(sig[:4], "big")
        for known_name, known_id, public in keys:
            if (known_name, known_id) != (name, key_id):
                continue  # signatures by other keys are ignored
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(sig[4:], text.encode())
            except InvalidSignature:
                raise Bad(f"invalid signature for key {name}+{key_id:08x}") from None
            signed_by.append(name)
    if not signed_by:
        raise Bad("not signed by any key given")
    return text, signed_by


def checkpoint(text):
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not lines[0] or not re.fullmatch(r"0|[1-9][0-9]*", lines[1]):
        raise Bad("the note is not a checkpoint")
    try:
        root = b64(lines[2])
    except ValueError:
        root = b""
    if len(root) != 32:
        raise Bad("the checkpoint's root is not 32 bytes")
    return lines[0], int(lines[1]), root


# --- RFC 9162 -----------------------------------------------------------------------------------


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(index, size, leaf, path):
    if not 0 <= index < size:
        raise Bad("the leaf is not in the tree")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise Bad("the inclusion proof is too long")
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Bad("the inclusion proof is too short")
    return r


def check_consistency(size1, size2, root1, root2, path):
    if size1 > size2:
        raise Bad("the old tree is larger than the new one")
    if size1 == size2:
        if path or root1 != root2:
            raise Bad("two trees of one size differ")
        return
    if size1 == 0:
        if path:
            raise Bad("the empty tree needs an empty proof")
        return
    if not path:
        raise Bad("the consistency proof is empty")
    path = list(path)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise Bad("the consistency proof is too long")
        if fn % 2 == 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != root1 or sr != root2:
        raise Bad("the new tree does not extend the old one")


# --- The two proofs -----------------------------------------------------------------------------


def hashes(doc):
    path = doc.get("proof")
    if not isinstance(path, list) or not all(
        isinstance(h, str) and re.fullmatch("[0-9a-f]{64}", h) for h in path
    ):
        raise Usage("'proof' is not a list of 64-hex-digit hashes")
    return [bytes.fromhex(h) for h in path]


def check(doc, keys):
    if "record" in doc:
        text, signers = open_note(doc["checkpoint"], keys)
        origin, size, root = checkpoint(text)
        record = json.loads(doc["record"])
        seq = doc["seq"]
        if doc["tree_size"] != size:
            raise Bad("the proof's tree size is not its checkpoint's")
        if not isinstance(record, dict) or record.get("seq") != seq or (
                record.get("chain") != doc["chain"]):
            raise Bad("the record is not the seq and chain the proof names")
        leaf = hashlib.sha256(b"\x00" + doc["record"].encode("utf-8")).digest()
        if root_from_inclusion(seq - 1, size, leaf, hashes(doc)) != root:
            raise Bad("the record is not in the signed tree")
        return (f"ok: seq {seq} of chain {doc['chain']} is in the tree of size {size} of "
                f"{origin}, signed by {', '.join(signers)}")
    old_text, old_signers = open_note(doc["old"], keys)
    new_text, new_signers = open_note(doc["new"], keys)
    old, new = checkpoint(old_text), checkpoint(new_text)
    if old[0] != new[0]:
        raise Bad("the two checkpoints are of different logs")
    check_consistency(old[1], new[1], old[2], new[2], hashes(doc))
    signers = ", ".join(dict.fromkeys(old_signers + new_signers))
    return (f"ok: the tree of size {new[1]} of {new[0]} extends the tree of size {old[1]}, "
            f"signed by {signers}")


def main(argv):
    if len(argv) < 3:
        print("usage: check_proof.py PROOF.json VERIFIER_KEY [VERIFIER_KEY...]", file=sys.stderr)
        return 2
    try:
        keys = [verifier_key(k) for k in argv[2:]]
        with open(argv[1], encoding="utf-8") as handle:
            doc = json.load(handle)
        if not isinstance(doc, dict):
            raise Usage("not a proof")
        print(check(doc, keys))
        return 0
    except Bad as exc:
        print(f"{argv[1]}: {exc}")
        return 1
    except Usage as exc:
        print(f"check_proof.py: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"check_proof.py: {exc.filename}: can't read ({exc.strerror})", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError):
        print(f"check_proof.py: {argv[1]}: not a proof from `audit prove`", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
