"""The text of a transparency-log checkpoint (C2SP tlog-checkpoint), the body of a signed note.

::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <root hash, standard base64 of 32 bytes>\\n
    [<extension line>\\n ...]

The origin names the log (here: one chain) and never changes for it. Extension lines are
opaque; this gateway writes none, but parses notes that carry them.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import NamedTuple

from gateway.audit.merkle import HASH_SIZE

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_SIZE = 2**63 - 1


class CheckpointError(ValueError):
    """The note text is not a checkpoint."""


class Checkpoint(NamedTuple):
    origin: str
    tree_size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """The note text of this checkpoint (to be signed)."""
        lines = [self.origin, str(self.tree_size), base64.b64encode(self.root).decode("ascii")]
        return "".join(f"{line}\n" for line in (*lines, *self.extensions))


def encode(origin: str, tree_size: int, root: bytes) -> str:
    """The note text of a checkpoint; raises CheckpointError on an impossible one."""
    checkpoint = Checkpoint(origin, tree_size, root)
    text = checkpoint.text()
    if parse(text) != checkpoint:  # one set of rules for writing and reading
        raise CheckpointError("checkpoint origin holds a newline")
    return text


def parse(text: str) -> Checkpoint:
    """A checkpoint from a (verified) note's text."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint text has fewer than 3 lines")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin is empty")
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > _MAX_SIZE:
        raise CheckpointError("checkpoint tree size is not a decimal number without leading zeros")
    try:
        root = base64.b64decode(root_text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        root = b""
    if len(root) != HASH_SIZE:
        raise CheckpointError("checkpoint root is not the base64 of 32 bytes")
    if any(not line for line in extensions):
        raise CheckpointError("checkpoint has an empty extension line")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))
