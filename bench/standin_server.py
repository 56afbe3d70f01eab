"""The Chroma Sync stand-in in its own process, for the benchmark.

    BENCH_STANDIN_TOKEN=... python -m bench.standin_server [--port 0] [--max-seconds 900]

Prints `port N` on stdout once listening, then serves until SIGTERM/SIGINT or until
`--max-seconds` have passed (it always stops by itself). Every correctly authenticated
`PUT /api/v1/invocations/<anything>` is answered 202 `{}`, so each benchmark request takes
the full success path through the gateway (a real pending invocation cancels only once), and
every `GET /api/v1/invocations/<uuid>` (`get_job`) with a pending Job of database `bench`;
`GET /bench/stats` answers `{"connections": N, "requests": M}`: connections accepted and
requests seen so far (how many upstream connections a gateway opened during a run). Anything
else falls through to the stand-in's normal Chroma-like answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from gateway.demo.standin import ReceivedRequest, Respond, StandIn, json_response

ACCEPTED = json_response(202, {})
PREFIX = "/api/v1/invocations/"


def always_accept(token: str, standin: StandIn):  # type: ignore[no-untyped-def]
    seen = 0

    def behaviour(request: ReceivedRequest) -> Respond | None:
        nonlocal seen
        seen += 1
        if request.method == "GET" and request.target == "/bench/stats":
            return json_response(
                200, {"connections": standin.connection_count, "requests": seen})
        if request.target.startswith(PREFIX) and request.header_values("x-chroma-token") == [
            token
        ]:
            if request.method == "PUT":
                return ACCEPTED
            if request.method == "GET":
                return json_response(200, {
                    "id": request.target[len(PREFIX):], "source_id": None, "status": "pending",
                    "created_at": "2026-11-20T09:14:03Z",
                    "metadata": {"database_name": "bench", "collection_name": "load",
                                 "web_scrape": {}},
                })
        return None

    return behaviour


async def serve(token: str, port: int, max_seconds: float) -> None:
    standin = StandIn(token, port=port, max_recorded=1)
    standin.behaviour = always_accept(token, standin)
    await standin.start()
    print(f"port {standin.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    await standin.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standin_server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    token = os.environ.get("BENCH_STANDIN_TOKEN", "")
    if not token:
        print("BENCH_STANDIN_TOKEN must be set", file=sys.stderr)
        return 2
    # Plain asyncio: the stand-in's protocol insists on asyncio.Transport (uvloop's isn't one).
    asyncio.run(serve(token, args.port, args.max_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
