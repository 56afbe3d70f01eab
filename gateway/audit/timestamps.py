"""The timestamp every record carries: RFC 3339, UTC, milliseconds, formatted fast."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime


def utc_timestamp(now: float | None = None) -> str:
    """RFC 3339, UTC, milliseconds: `2026-11-28T12:42:29.123Z`."""
    global _stamp
    fraction, whole = math.modf(time.time() if now is None else now)
    second, micro = int(whole), round(fraction * 1_000_000)  # as `datetime` rounds it
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    # Every cancel stamps two records or more: the date and time are formatted once a second.
    stamped, text = _stamp
    if second != stamped:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _stamp = (second, text)
    return f"{text}{micro // 1000:03d}Z"


_stamp = (-1, "")  # the last second formatted, and its text (one tuple: swapped whole)
