"""How many bulk cancels of one team run at once (`bulk.max_batches`).

A batch holds its place from its checks to its result record; one more is refused with 429
`rate_limited` and `Retry-After: 1`, like a cancel over `max_in_flight`. The bound is a
`[bulk]` key (it takes effect on restart), so the counts live as long as the gateway.
"""

from __future__ import annotations

from gateway.errors import RequestRejected


class BatchSlots:
    def __init__(self, max_batches: int) -> None:
        self.max_batches = max_batches
        self._running: dict[str, int] = {}

    def take(self, team: str) -> None:
        """One more running batch of `team`, or 429 `rate_limited`; each `take` is followed
        by one `give_back` (in a `finally`)."""
        running = self._running.get(team, 0)
        if running >= self.max_batches:
            raise RequestRejected(
                f"{running} bulk cancels of this team are running already; retry later",
                status=429, code="rate_limited", outcome="rate_limited",
                headers={"retry-after": "1"},
            )
        self._running[team] = running + 1

    def give_back(self, team: str) -> None:
        left = self._running.get(team, 1) - 1
        if left > 0:
            self._running[team] = left
        else:
            self._running.pop(team, None)

    def running(self, team: str) -> int:
        return self._running.get(team, 0)
