"""Whether an upstream text holds the gateway's token, in any of the forms an echo could take.

An upstream that echoes the `X-Chroma-Token` it got (a debug page, a proxy's error) must not
hand it to a caller, not even disguised: the token counts in any letter case, any
16-character piece of it, its base64 and its hex. The forms are worked out once per token
value (`forms_of`, cached on the value, so a rotation gets new ones) and each text is then
lowered once and searched with `in`, which is C speed; upstream bodies are at most 64 KiB.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

PIECE = 16  # characters: a piece this long of a 40-character token is too much to show
_MAX_SEARCHED_PIECES = 64  # beyond this, a longer token's text windows are looked up instead


@dataclass(frozen=True)
class Forms:
    pieces: frozenset[str]  # lowercase: every PIECE-character piece (or the whole short token)
    encoded: tuple[str, ...]  # base64 cores, case kept: standard and URL-safe alphabets
    hex: str  # lowercase hex of the token
    shortest: int  # no shorter text can hold any form (a cancel's `{}` is checked at once)
    blocks: tuple[str, ...]  # lowercase 8-character blocks at offsets 0, 8, 16, ...

    def found_in(self, text: str) -> bool:
        if len(text) < self.shortest:
            return False
        if any(core in text for core in self.encoded):
            return True
        lowered = text.lower()
        if self.hex in lowered:
            return True
        if len(self.pieces) <= _MAX_SEARCHED_PIECES:
            return any(piece in lowered for piece in self.pieces)
        # A long token: any 16-character piece holds one of its 8-aligned 8-character blocks,
        # so the windows are looked up only in a text where such a block shows.
        if not any(block in lowered for block in self.blocks):
            return False
        return any(lowered[i:i + PIECE] in self.pieces for i in range(len(lowered) - PIECE + 1))


@functools.lru_cache(maxsize=8)
def forms_of(token: str) -> Forms:
    lowered = token.lower()
    size = min(PIECE, len(lowered))
    pieces = frozenset(lowered[i:i + size] for i in range(len(lowered) - size + 1))
    raw = token.encode("utf-8")
    encoded: list[str] = []
    for shift in range(3):
        # The token's base64 inside a longer encoded string (`Bearer <token>`, JSON, ...)
        # depends on its offset modulo 3: keep the characters that only the token decides.
        text = base64.b64encode(b"\0" * shift + raw).decode("ascii")
        lead = (shift * 8 + 5) // 6  # characters touched by the prefix bytes
        end = (shift + len(raw)) * 8 // 6  # and after this, by whatever follows
        core = text[lead:end]
        if len(core) >= PIECE:
            encoded.append(core)
            encoded.append(core.replace("+", "-").replace("/", "_"))
    if not encoded:  # a very short token: its plain encoding is all there is
        encoded.append(base64.b64encode(raw).decode("ascii").rstrip("="))
    forms = tuple(dict.fromkeys(encoded))
    shortest = min(size, *(len(core) for core in forms))
    blocks = tuple(lowered[i:i + PIECE // 2] for i in range(0, len(lowered) - PIECE // 2 + 1,
                                                             PIECE // 2))
    return Forms(pieces, forms, raw.hex(), shortest, blocks)


def holds(text: str, secrets: tuple[str, ...]) -> bool:
    """Whether `text` holds any of `secrets` in any of its forms."""
    for secret in secrets:  # a loop, not any(): this runs on every 202's `{}`
        if secret and forms_of(secret).found_in(text):
            return True
    return False
