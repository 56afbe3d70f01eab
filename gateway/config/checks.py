"""The one-line checks every part of the config file goes through.

Every problem is reported as one line that names the file, the key and what is wrong, e.g.
`config.toml: upstream.timeout must be a positive number, got "ten"`. Unknown keys are errors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from gateway.errors import ConfigError

BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

T = TypeVar("T")


def shown(value: object) -> str:
    """A value as a message shows it: TOML's spelling, short, on one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = str(value)  # as TOML spells it: nan, inf, -inf
    elif isinstance(value, str | int | float):
        text = json.dumps(value)
    elif isinstance(value, list):
        text = "an array"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def key_name(name: str) -> str:
    """A key as written in the file; quoted and escaped unless bare (keeps messages one line)."""
    return name if BARE_KEY_RE.fullmatch(name) else shown(name)


class Checks:
    """Tables, keys and the basic value types, checked against `source` (the file's name)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key} {problem}")

    def table(self, data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
        value = data.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {shown(value)}")
        for name in value:
            if name not in allowed:
                raise self.fail(f"{key}.{key_name(name)}", "is not a known key")
        return value

    def get(
        self,
        table: Mapping[str, Any],
        prefix: str,
        name: str,
        convert: Callable[[str, object], T],
        default: T,
    ) -> T:
        if name not in table:
            return default
        return convert(f"{prefix}.{name}", table[name])

    # Converters: each takes the full key name and the raw TOML value.

    def string(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {shown(value)}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise self.fail(key, "must not hold control characters")
        return value

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {shown(value)}")
        return value

    def positive(self, key: str, value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.fail(key, f"must be a positive number, got {shown(value)}")
        return float(value)

    def count(self, key: str, value: object, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(
                key, f"must be a whole number from {low} to {high}, got {shown(value)}"
            )
        return value
