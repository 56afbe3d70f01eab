"""Per-team bounds on concurrent cancels (`max_in_flight`): a dict of ints, cheap to check.

Single cancels over the bound are refused (429); a bulk cancel's cancels wait for room."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.config.model import TeamConfig
from gateway.errors import RequestRejected


class InFlight:
    def __init__(self, teams: Sequence[TeamConfig], *, previous: InFlight | None = None) -> None:
        self._limits = {t.name: t.max_in_flight for t in teams}
        # Shared with the policy a reload replaces: its requests still in flight stay counted,
        # and leave through whichever policy they started with.
        self._counts: dict[str, int] = previous._counts if previous else {}
        # Bulk cancels waiting for room, by team: set (and dropped) when one of its cancels leaves.
        self._room: dict[str, asyncio.Event] = previous._room if previous else {}

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

    async def enter_when_room(self, team: str) -> None:
        """As `enter`, but wait for room rather than refuse: a bulk cancel's cancels count
        like single ones, and the batch waits for its turn instead of failing its items."""
        while self._counts.get(team, 0) >= self._limits.get(team, TeamConfig.max_in_flight):
            await self._room.setdefault(team, asyncio.Event()).wait()
        self._counts[team] = self._counts.get(team, 0) + 1

    def leave(self, team: str) -> None:
        self._counts[team] = self._counts.get(team, 1) - 1
        room = self._room.pop(team, None)
        if room is not None:
            room.set()  # every waiter looks again; those that find no room wait anew

    def count(self, team: str) -> int:
        return self._counts.get(team, 0)
