"""A bare uvicorn server (same loop and HTTP parser as the gateway) that answers 202 `{}`.

    python -m bench.bare_server --port P [--max-seconds 300]

The floor under the gateway: what uvicorn + httptools + uvloop cost per request with an ASGI
app that does nothing. Used by `bench.micro`; stops by itself after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import threading

import uvicorn

BODY = b"{}"
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2")]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, http="httptools",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        lifespan="off", access_log=False, log_level="warning", server_header=False,
    )
    server = uvicorn.Server(config)
    timer = threading.Timer(args.max_seconds, lambda: setattr(server, "should_exit", True))
    timer.daemon = True
    timer.start()
    server.run()
    asyncio.set_event_loop(None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
