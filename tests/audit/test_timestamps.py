"""`utc_timestamp`: the records' RFC 3339 form, formatted once a second, exactly as datetime."""

from __future__ import annotations

import random

from gateway.audit.timestamps import utc_timestamp


def test_utc_timestamp_is_datetimes_millisecond_form_within_and_across_seconds() -> None:
    from datetime import UTC, datetime

    def expected(now: float) -> str:
        moment = datetime.fromtimestamp(now, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    rng = random.Random(12)
    moments = [1764333749.123, 1764333749.9999996, 1764333750.0, 1764333749.5004, 1.0]
    for _ in range(20_000):
        second = rng.randrange(1_700_000_000, 1_900_000_000)
        moments += [second + rng.random(), second + rng.randrange(1_000_000) / 1e6 + 5e-7]
    assert [utc_timestamp(t) for t in moments] == [expected(t) for t in moments]
    assert utc_timestamp(1764333749.123) == "2025-11-28T12:42:29.123Z"
    now = utc_timestamp()  # the clock's own
    assert now.endswith("Z") and len(now) == len("2026-11-28T12:42:29.123Z")
