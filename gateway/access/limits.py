"""Per-team rate limits: a token bucket for each team."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from gateway.config.model import TeamConfig


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def take(self) -> float:
        """Take one token; return 0 on success, else the seconds until one is available."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class TeamLimits:
    def __init__(
        self,
        teams: Sequence[TeamConfig],
        clock: Callable[[], float] = time.monotonic,
        *,
        previous: TeamLimits | None = None,
    ) -> None:
        """`previous`: on a reload, a team whose rate and burst are unchanged keeps its bucket,
        so a reload can't be used to refill it; a new or changed team starts full."""
        kept = previous._buckets if previous is not None else {}
        self._buckets: dict[str, TokenBucket] = {}
        for t in teams:
            old = kept.get(t.name)
            if old is None or old.rate != t.rate_limit or old.burst != float(t.burst):
                old = TokenBucket(t.rate_limit, t.burst, clock)
            self._buckets[t.name] = old

    def retry_after(self, team: str) -> int:
        """0 when the team may go ahead, else whole seconds to wait (at least 1)."""
        wait = self._buckets[team].take()
        return 0 if wait == 0 else max(1, math.ceil(wait))
