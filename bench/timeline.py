"""Where the wall time of one cancel goes, at one connection (a benchmark, not a test).

    python -m bench.timeline [--requests N] [--scope database:bench]

Starts the stand-in and a real `serve` (fsync on, every optional feature configured, as
`scripts/bench`'s budget rows), but the gateway runs under this module's hook (`--hook`),
which wraps a few methods to note `time.perf_counter()` at each step of a request. One
connection sends N cancels one after another (the load generator of `scripts/bench`); at
exit the gateway writes its notes, and this prints the median time between consecutive steps:

    recv      the request's bytes reach the gateway's protocol (`data_received`)
    app       the ASGI app is called (uvicorn parsed the request, made its task)
    queued    the attempt record is queued (checks done, record built)
    syncing   the flush begins (the next turn of the event loop)
    durable   the record is written and fdatasync'd
    put       the transport writes the PUT (the request task woke up, httpx.Request made)
    answer    the transport has the whole upstream answer (stand-in, network, parsing)
    answered  the caller's answer is written (httpx.Response, mapping, send)
    done      the app returns (result record written, access log, metrics)
    (next)    the next request's bytes arrive (the load generator's turnaround)

The sum of the medians is close to, not equal to, the median of the sums; both are printed.
The hook adds a few microseconds per step. Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import atexit
import contextvars
import itertools
import json
import runpy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS = ("recv", "app", "queued", "syncing", "durable", "put", "answer", "answered", "done")


def hook(out_path: str) -> None:
    """In the gateway process: wrap the steps, write the notes at exit."""
    from gateway.audit import files as audit_files
    from gateway.audit import writer as audit
    from gateway.server import protocol as server
    from gateway.server import router
    from gateway.upstream import transport

    notes: list[tuple[str, float, int]] = []
    clock = time.perf_counter
    atexit.register(lambda: Path(out_path).write_text(json.dumps(notes)))
    # Which request a step belongs to: set when its bytes arrive, inherited by the task
    # uvicorn makes for it there, and by the callbacks that task schedules (the flush).
    request = contextvars.ContextVar("request", default=-1)
    numbers = itertools.count()

    def note(step: str) -> None:
        notes.append((step, clock(), request.get()))

    received = server.GatewayHttpProtocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        if data.startswith(b"PUT "):
            request.set(next(numbers))
            note("recv")
        received(self, data)

    server.GatewayHttpProtocol.data_received = data_received  # type: ignore[method-assign]

    called = router.Router.__call__  # what the server is handed

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        note("app")
        await called(self, scope, receive, send)
        note("done")

    router.Router.__call__ = call  # type: ignore[method-assign]

    written = audit.AuditLog.write

    async def write(self: Any, body: dict[str, Any], **kwargs: Any) -> None:
        if body.get("event") == "cancel.attempt":
            note("queued")
        await written(self, body, **kwargs)

    audit.AuditLog.write = write  # type: ignore[method-assign]

    appended = audit_files.LogFile.append

    def append(self: Any, data: bytes, sync: bool) -> None:
        if sync:
            note("syncing")
        appended(self, data, sync)
        if sync:
            note("durable")

    audit_files.LogFile.append = append  # type: ignore[method-assign]

    exchanged = transport._Connection.exchange

    async def exchange(self: Any, head: bytes, body: bytes) -> bytes:
        note("put")
        content = await exchanged(self, head, body)
        note("answer")
        return content

    transport._Connection.exchange = exchange  # type: ignore[method-assign]

    wrote = server.OneWriteResponses.write

    def response_write(self: Any, data: bytes) -> None:
        if self._held is not None:
            note("answered")
        wrote(self, data)

    server.OneWriteResponses.write = response_write  # type: ignore[method-assign]


def requests_of(notes: list[tuple[str, float, int]]) -> list[dict[str, float]]:
    """Each request's steps (its first note of each), with the next request's arrival."""
    by_number: dict[int, dict[str, float]] = {}
    for step, at, number in notes:
        if number >= 0:
            by_number.setdefault(number, {}).setdefault(step, at)
    found = []
    for number, steps in sorted(by_number.items()):
        following = by_number.get(number + 1)
        if following is not None and set(STEPS) <= set(steps):
            found.append({**steps, "next": following["recv"]})
    return found


def report(requests: list[dict[str, float]], direct_p50_ms: float, p50_ms: float) -> None:
    print(f"{len(requests)} requests at one connection; the load generator's p50 {p50_ms:.3f} "
          f"ms, direct to the stand-in {direct_p50_ms:.3f} ms: {p50_ms - direct_p50_ms:.3f} ms "
          "added\n")
    print(f"  {'from':>9} -> {'to':<9} {'p50 us':>7} {'p90 us':>7}")

    def line(start: str, end: str) -> float:
        gaps = sorted((r[end] - r[start]) * 1e6 for r in requests)
        p50 = statistics.median(gaps)
        print(f"  {start:>9} -> {end:<9} {p50:7.1f} {gaps[int(len(gaps) * 0.9)]:7.1f}")
        return p50

    path = sum(line(start, end) for start, end in itertools.pairwise(STEPS[:-1]))
    print(f"  {'':>9}    {'':<9} {path:7.1f}  the sum: the caller's wait, less the network")
    print("  after the answer (the caller is already reading it):")
    line("answered", "done")
    line("done", "next")
    whole = statistics.median((r["answered"] - r["recv"]) * 1e6 for r in requests)
    print(f"\n  recv -> answered, median of the whole: {whole:.1f} us")


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--hook":
        out, rest = sys.argv[2], sys.argv[3:]
        if rest[:2] == ["-m", "gateway"]:
            rest = rest[2:]
        sys.argv = ["gateway", *rest]
        hook(out)
        runpy.run_module("gateway", run_name="__main__", alter_sys=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--scope", default="*")
    args = parser.parse_args(argv)

    from bench import procs
    from bench.run import Settings, measure

    settings = Settings(warmup=300, count=args.requests, seconds=30.0, fsync_iterations=0,
                        profile_seconds=0)
    ids = procs.invocation_ids(256)
    with tempfile.TemporaryDirectory(prefix="csg-timeline-") as tmp, \
            procs.standin_process(max_seconds=300) as standin:
        folder = Path(tmp)
        out = folder / "timeline.json"
        direct = measure("direct", standin.port, procs.direct_requests(standin.port, ids), 1,
                         settings)
        with procs.gateway_process(folder / "gateway", standin.base_url, fsync=True,
                                   transport="native", scope=[args.scope], everything=True,
                                   prefix=["-m", "bench.timeline", "--hook", str(out)]) as gw:
            row = measure("gateway", gw.port, procs.gateway_requests(gw.port, ids), 1,
                          settings)
        requests = requests_of(json.loads(out.read_text()))[-args.requests:]
        report(requests, direct.p50, row.p50)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
