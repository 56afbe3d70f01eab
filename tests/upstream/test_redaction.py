"""gateway.upstream.redaction: which texts hold the token, in process.

SPEC (0.2, "Hostile callers"): an upstream text holding the token in any letter case, any
16-character piece of it, or its base64 or hex is not passed on. Each form is checked here,
and so is the other side: texts that merely resemble the token are not withheld.
"""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Iterator

import pytest

from gateway.upstream.redaction import PIECE, forms_of, holds

TOKEN = "chroma-test-token-7f3a9c1e5b2d4f6a8c0e"  # 38 characters, like the harness's
# Long enough (over 64 pieces) that the windows are looked up only where an 8-aligned block shows.
LONG = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(200))


@pytest.fixture(autouse=True)
def _forms_worked_out_afresh() -> Iterator[None]:
    """Each test works the forms out itself, not from a cache another test filled."""
    forms_of.cache_clear()
    yield
    forms_of.cache_clear()


def held(text: str, token: str = TOKEN) -> bool:
    return holds(text, (token,))


@pytest.mark.parametrize("text", [
    TOKEN, f"upstream said: {TOKEN}!", TOKEN.upper(), TOKEN.title(),
    f"x-chroma-token={TOKEN[5:5 + PIECE]}", TOKEN[-PIECE:],
])
def test_the_token_or_a_16_character_piece_in_any_case_is_held(text: str) -> None:
    assert held(text)


@pytest.mark.parametrize("text", [
    "{}", "", "Invocation not found", TOKEN[:PIECE - 1], f"{TOKEN[:15]} and {TOKEN[16:31]}",
    "chroma-test-", TOKEN[::-1], TOKEN[-(PIECE - 1):], f"ends: {TOKEN[-(PIECE - 1):]}",
])
def test_texts_without_a_16_character_piece_are_not_held(text: str) -> None:
    assert not held(text)


@pytest.mark.parametrize("prefix", [b"", b"B", b"Be", b"Bearer "])
def test_the_tokens_base64_at_any_offset_is_held(prefix: bytes) -> None:
    encoded = base64.b64encode(prefix + TOKEN.encode() + b"\x00tail").decode()
    assert held(f"debug: authorization={encoded}")
    urlsafe = base64.urlsafe_b64encode(prefix + TOKEN.encode()).decode()
    assert held(urlsafe)


def test_the_url_safe_base64_of_a_token_whose_base64_has_plus_and_slash_is_held() -> None:
    token = "tok~~~en???key-with-more-characters-0123"
    standard = base64.b64encode(token.encode()).decode()
    assert "+" in standard and "/" in standard  # so the URL-safe form differs
    for prefix in (b"", b"B", b"Be"):
        assert held(base64.urlsafe_b64encode(prefix + token.encode()).decode(), token)
        assert held(base64.b64encode(prefix + token.encode()).decode(), token)


def test_the_tokens_base64_is_matched_with_its_letter_case() -> None:
    """base64 is case-sensitive: lowering it would be another string (and is not held)."""
    encoded = base64.b64encode(TOKEN.encode()).decode()
    assert not held(encoded.swapcase())


@pytest.mark.parametrize("form", [str.lower, str.upper])
def test_the_tokens_hex_is_held_in_either_case(form: object) -> None:
    assert callable(form)
    assert held(f"token bytes: {form(TOKEN.encode().hex())}")


def test_the_base64_of_an_unrelated_value_is_not_held() -> None:
    assert not held(base64.b64encode(b"some other credential of 40 bytes.......").decode())


def test_a_short_token_is_held_whole_and_only_whole() -> None:
    short = "s3cr3t-k"  # shorter than a piece: the whole of it is the piece
    assert held(f"echo {short}!", short)
    assert held(short.upper(), short)
    assert not held(short[:-1], short)
    assert not held("s3cr3t", short)
    assert held(base64.b64encode(short.encode()).decode().rstrip("="), short)
    assert forms_of(short).shortest == len(short)


def test_a_text_exactly_as_long_as_the_shortest_form_is_still_searched() -> None:
    assert forms_of(TOKEN).shortest == PIECE
    assert held(TOKEN[3:3 + PIECE])
    assert not held("x" * (PIECE - 1))


def test_an_empty_secret_holds_nothing() -> None:
    """`secret and ...`: an unset secret must not withhold every text."""
    assert not holds("any upstream message", ("",))
    assert holds(f"... {TOKEN} ...", ("", TOKEN))
    assert not holds("any upstream message", ())


def test_any_of_several_secrets_is_found() -> None:
    assert holds(f"echo {TOKEN}", ("another-secret-that-is-long-enough", TOKEN))


# -- a long token: the block index path ------------------------------------------------------


def test_a_long_token_has_more_pieces_than_are_searched_one_by_one() -> None:
    forms = forms_of(LONG)
    assert len(forms.pieces) > 64
    assert forms.blocks[0] == LONG[:8].lower() and forms.blocks[1] == LONG[8:16].lower()


@pytest.mark.parametrize("offset", [0, 1, 7, 8, 13, 100, len(LONG) - PIECE])
def test_a_16_character_piece_of_a_long_token_is_held_at_any_offset(offset: int) -> None:
    piece = LONG[offset:offset + PIECE]
    assert held(piece, LONG)  # the text is exactly the piece: one window
    assert held(f"prefix {piece.upper()} suffix", LONG)
    assert held(f"ends with {piece}", LONG)


def test_a_long_tokens_block_without_a_whole_piece_is_not_held() -> None:
    block = LONG[8:16]  # one 8-aligned block, shown, but no 16 characters of the token
    assert not held(f"xx {block} yy {LONG[40:52]} zz", LONG)
    assert not held(LONG[:PIECE - 1], LONG)


def test_a_long_token_itself_is_held() -> None:
    assert held(LONG, LONG)
    assert held(f"<pre>{LONG.upper()}</pre>", LONG)


def test_a_long_tokens_base64_and_hex_are_held() -> None:
    assert held(base64.b64encode(b"Bearer " + LONG.encode()).decode(), LONG)
    assert held(LONG.encode().hex(), LONG)
    assert not held("a text with nothing of it, long enough to be searched for blocks", LONG)
