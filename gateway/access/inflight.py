"""Per-team bounds on concurrent cancels (`max_in_flight`): a dict of ints, cheap to check."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config.model import TeamConfig
from gateway.errors import RequestRejected


class InFlight:
    def __init__(self, teams: Sequence[TeamConfig], *, previous: InFlight | None = None) -> None:
        self._limits = {t.name: t.max_in_flight for t in teams}
        # Shared with the policy a reload replaces: its requests still in flight stay counted,
        # and leave through whichever policy they started with.
        self._counts: dict[str, int] = previous._counts if previous else {}

    def enter(self, team: str) -> None:
        """Count one more cancel of `team`, or raise 429 `rate_limited` when at its bound.

        Every successful `enter` must be followed by one `leave` (in a `finally`).
        """
        count = self._counts.get(team, 0)
        if count >= self._limits.get(team, TeamConfig.max_in_flight):
            raise RequestRejected(
                "too many cancels of this team in flight; retry later", status=429,
                code="rate_limited", outcome="rate_limited", headers={"retry-after": "1"},
            )
        self._counts[team] = count + 1

    def leave(self, team: str) -> None:
        self._counts[team] = self._counts.get(team, 1) - 1

    def count(self, team: str) -> int:
        return self._counts.get(team, 0)
