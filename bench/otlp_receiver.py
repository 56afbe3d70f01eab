"""An OTLP/HTTP trace receiver in its own process, for the benchmark.

    python -m bench.otlp_receiver [--max-seconds 900]

Prints `port N` on stdout once listening on loopback, then answers every `POST /v1/traces`
as a collector does: the body decoded (gzip, then the protobuf `ExportTraceServiceRequest`),
its spans counted, an empty `ExportTraceServiceResponse` sent back. `GET /bench/stats` answers
`{"posts": N, "spans": M}` so the benchmark can show the spans really arrived. It stops on
SIGTERM/SIGINT or after `--max-seconds`. Its own process, so that decoding never takes CPU
from the load generator (the gateway's exporter runs in the gateway, where it belongs).
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ANSWER = ExportTraceServiceResponse().SerializeToString()


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts = 0
        self.spans = 0


def handler(counts: Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
            spans = sum(len(scope.spans) for resource in request.resource_spans
                        for scope in resource.scope_spans)
            with counts.lock:
                counts.posts += 1
                counts.spans += spans
            self._answer(200, "application/x-protobuf", ANSWER)

        def do_GET(self) -> None:
            with counts.lock:
                stats = {"posts": counts.posts, "spans": counts.spans}
            self._answer(200, "application/json", json.dumps(stats).encode())

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_receiver")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(Counts()))
    server.daemon_threads = True
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"port {server.server_address[1]}", flush=True)
    stop.wait(args.max_seconds)
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
