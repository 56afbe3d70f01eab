"""gateway.audit.suppression: what an `audit.suppressed` summary says, and when it is written."""

from __future__ import annotations

from typing import Any

from gateway.audit.suppression import DeniedSuppression


class Clock:
    def __init__(self, now: float = 1000.2) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def denied(status: int, ts: str, *, client: str | None = "10.0.0.7",
           outcome: str | None = "unauthenticated") -> dict[str, Any]:
    record: dict[str, Any] = {"ts": ts, "status": status, "client": client}
    if outcome is not None:
        record["outcome"] = outcome
    return record


def make(per_second: int = 1) -> tuple[DeniedSuppression, list[dict[str, Any]], Clock,
                                       list[None]]:
    written: list[dict[str, Any]] = []
    noticed: list[None] = []
    clock = Clock()
    suppression = DeniedSuppression(per_second, write=written.append, clock=clock,
                                    on_suppressed=lambda: noticed.append(None))
    return suppression, written, clock, noticed


def test_a_summary_names_the_first_and_last_suppressed_and_counts_each_outcome() -> None:
    suppression, written, clock, noticed = make(per_second=1)
    assert suppression.admit(denied(401, "T0"), authenticated=False)  # written itself
    for record in (denied(401, "T1"), denied(400, "T2", outcome="invalid_request"),
                   denied(413, "T3", outcome=None), denied(401, "T4", outcome=None)):
        assert not suppression.admit(record, authenticated=False)
    assert len(noticed) == 4
    clock.now = 1001.0
    suppression.sweep()
    [summary] = written
    assert set(summary) == {"ts", "event", "client", "count", "outcomes", "first_ts",
                            "last_ts"}
    assert summary["ts"].endswith("Z")
    assert (summary["event"], summary["client"], summary["count"]) == (
        "audit.suppressed", "10.0.0.7", 4)
    # An outcome the record lacks (a bulk's batch.result) is the status's denial.
    assert summary["outcomes"] == {"invalid_request": 2, "unauthenticated": 2}
    assert (summary["first_ts"], summary["last_ts"]) == ("T1", "T4")


def test_a_client_denied_again_in_a_later_second_gets_its_summary_at_once() -> None:
    """Before any sweep: the new second's first denial closes the old window."""
    suppression, written, clock, _ = make(per_second=1)
    for ts in ("A0", "A1", "A2"):
        suppression.admit(denied(401, ts), authenticated=False)
    clock.now = 1003.5
    assert suppression.admit(denied(401, "B0"), authenticated=False)  # a fresh allowance
    assert [(r["client"], r["count"], r["first_ts"], r["last_ts"]) for r in written] == [
        ("10.0.0.7", 2, "A1", "A2")]
    assert not suppression.admit(denied(401, "B1"), authenticated=False)
    suppression.sweep(everything=True)  # at shutdown: the current second too
    assert [(r["count"], r["first_ts"], r["last_ts"]) for r in written] == [
        (2, "A1", "A2"), (1, "B1", "B1")]


def test_a_second_with_nothing_suppressed_writes_no_summary() -> None:
    suppression, written, clock, noticed = make(per_second=2)
    suppression.admit(denied(401, "A0"), authenticated=False)
    clock.now = 1005.0
    suppression.admit(denied(401, "B0"), authenticated=False)
    suppression.sweep(everything=True)
    assert (written, noticed) == ([], [])


def test_clients_are_counted_apart_and_an_unknown_client_is_null() -> None:
    suppression, written, clock, _ = make(per_second=1)
    for client in ("10.0.0.7", "10.0.0.8", None):
        assert suppression.admit(denied(401, "X", client=client), authenticated=False)
        assert not suppression.admit(denied(401, "Y", client=client), authenticated=False)
    clock.now = 1001.0
    suppression.sweep()
    assert sorted((r["client"] or "", r["count"]) for r in written) == [
        ("", 1), ("10.0.0.7", 1), ("10.0.0.8", 1)]
    assert [r["client"] for r in written if not r["client"]] == [None]


def test_authenticated_refusals_and_other_statuses_are_always_written() -> None:
    suppression, written, _, noticed = make(per_second=1)
    for status in (400, 401, 413):
        assert suppression.admit(denied(status, "A"), authenticated=True)
    for status in (403, 404, 429, 503):
        assert suppression.admit(denied(status, "A", outcome="forbidden"),
                                 authenticated=False)
    assert (written, noticed) == ([], [])


def test_a_records_own_outcome_is_the_one_counted() -> None:
    suppression, written, clock, _ = make(per_second=1)
    suppression.admit(denied(401, "A0"), authenticated=False)
    suppression.admit(denied(400, "A1", outcome="unauthenticated"), authenticated=False)
    clock.now = 1001.0
    suppression.sweep()
    assert written[0]["outcomes"] == {"unauthenticated": 1}
