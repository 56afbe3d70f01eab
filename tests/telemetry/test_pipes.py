"""gateway.telemetry.pipes.BoundedWriter over a real pipe that nobody reads;
gateway.audit.suppression."""

from __future__ import annotations

import os
from typing import Any

from gateway.audit.suppression import DeniedSuppression
from gateway.telemetry.pipes import BoundedWriter


def test_full_pipe_never_blocks_buffers_then_drops_whole_lines_and_counts_them() -> None:
    read_end, write_end = os.pipe()
    dropped: list[int] = []
    try:
        writer = BoundedWriter(write_end, limit=4096, on_drop=dropped.append)
        line = b"x" * 99 + b"\n"
        results = [writer.write(line) for _ in range(2000)]  # 200 KB into a 64 KiB pipe
        assert not all(results)
        assert writer.dropped == results.count(False) == sum(dropped)
        data = b""
        while True:
            os.set_blocking(read_end, False)
            try:
                chunk = os.read(read_end, 1 << 16)
            except BlockingIOError:
                writer.flush()
                try:
                    chunk = os.read(read_end, 1 << 16)
                except BlockingIOError:
                    break
            data += chunk
        assert data and data.endswith(b"\n")
        assert set(data.split(b"\n")[:-1]) == {b"x" * 99}  # whole lines only
    finally:
        os.close(read_end)
        os.close(write_end)


def result(status: int, client: str = "10.0.0.7", outcome: str = "unauthenticated") -> dict[
        str, Any]:
    return {"ts": "2026-01-01T00:00:00.000Z", "status": status, "client": client,
            "outcome": outcome}


def test_suppression_admits_per_second_per_client_and_sums_up_the_rest() -> None:
    written: list[dict[str, Any]] = []
    now = [1000.2]
    denied = DeniedSuppression(3, write=written.append, clock=lambda: now[0])
    admitted = [denied.admit(result(401), authenticated=False) for _ in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert denied.admit(result(401, client="10.0.0.8"), authenticated=False)
    assert denied.admit(result(403), authenticated=True)
    assert denied.admit(result(429), authenticated=False)  # not a denial before auth
    denied.sweep()
    assert written == []  # the second is not over yet
    now[0] = 1001.0
    denied.sweep()
    assert [(r["event"], r["client"], r["count"], r["outcomes"]) for r in written] == [
        ("audit.suppressed", "10.0.0.7", 7, {"unauthenticated": 7})]
