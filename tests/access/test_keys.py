"""Team keys: the new-key format, the stored form, and the key_id handle."""

from __future__ import annotations

import base64
import hashlib
import re

from gateway.access import keys
from gateway.config.teams import STORED_KEY_RE

URLSAFE_43 = re.compile(r"csg_[A-Za-z0-9_-]{43}")


def test_new_key_is_csg_prefix_and_43_url_safe_characters() -> None:
    key = keys.new_key()
    assert URLSAFE_43.fullmatch(key), key


def test_new_key_carries_at_least_256_random_bits() -> None:
    body = keys.new_key().removeprefix("csg_")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert len(raw) * 8 >= 256


def test_new_keys_are_unique_across_1000() -> None:
    made = {keys.new_key() for _ in range(1000)}
    assert len(made) == 1000
    assert len({keys.stored_form(k) for k in made}) == 1000
    assert len({keys.key_id(keys.stored_form(k)) for k in made}) == 1000


def test_stored_form_matches_a_known_vector() -> None:
    # sha256 of the UTF-8 bytes of "csg_abc", prefix included.
    assert keys.stored_form("csg_abc") == (
        "sha256:4db527f970abac16ad8260e3f67783a51bebdb32a4379cf2294a8ce0d1dc2472"
    )


def test_stored_form_is_sha256_of_the_whole_key_including_the_prefix() -> None:
    key = keys.new_key()
    stored = keys.stored_form(key)
    assert stored == "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    assert stored != "sha256:" + hashlib.sha256(key[4:].encode("utf-8")).hexdigest()


def test_stored_form_encodes_the_key_as_utf8() -> None:
    key = "csg_clé-ключ"
    assert keys.stored_form(key) == "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def test_stored_form_is_what_the_config_accepts() -> None:
    assert STORED_KEY_RE.fullmatch(keys.stored_form(keys.new_key()))


def test_digest_is_the_raw_sha256_of_the_bytes() -> None:
    key = keys.new_key().encode()
    assert keys.digest(key) == hashlib.sha256(key).digest()
    assert keys.digest(key).hex() == keys.stored_form(key.decode()).removeprefix("sha256:")


def test_key_id_is_the_first_12_hex_digits_of_the_stored_form() -> None:
    stored = keys.stored_form("csg_abc")
    assert keys.key_id(stored) == "4db527f970ab"
    key = keys.new_key()
    key_id = keys.key_id(keys.stored_form(key))
    assert re.fullmatch(r"[0-9a-f]{12}", key_id)
    assert key_id == hashlib.sha256(key.encode()).hexdigest()[:12]


def test_key_id_does_not_reveal_the_key() -> None:
    key = keys.new_key()
    key_id = keys.key_id(keys.stored_form(key))
    assert key_id not in key and key[4:16] != key_id
