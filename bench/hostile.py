"""How long stalled connections live, and what an unauthenticated flood costs the audit disk.

    .venv/bin/python -m bench.hostile [--flood-seconds 5]

Loopback only, bounded in time (about a minute in all). It starts the real gateway with its
defaults (`server.header_timeout`, `audit.denied_per_second`, ...) and prints:

- the lifetime of a connection that sends nothing, one that sends a header byte every 2 s,
  and one that dribbles a cancel's body a byte a second (each given up on after 40 s);
- the audit bytes written per second while one client pipelines unauthenticated cancels
  over one connection for `--flood-seconds`, with the requests answered per second.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from tests.harness import BILLING_KEY, RunningGateway, free_port, start_gateway, write_config

GIVE_UP = 40.0
UUID = "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b"


def lifetime(port: int, first: bytes, then: bytes, every: float) -> float:
    """Seconds until the gateway closes a connection that sends `first`, then `then` slowly."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        if first:
            sock.sendall(first)
        sock.settimeout(0.2)
        next_send = start + every
        sent = 0
        while time.monotonic() - start < GIVE_UP:
            if then and time.monotonic() >= next_send and sent < len(then):
                try:
                    sock.sendall(then[sent:sent + 1])
                except OSError:
                    break
                sent += 1
                next_send += every
            try:
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
    return time.monotonic() - start


def flood(port: int, seconds: float) -> int:
    """Pipeline unauthenticated cancels on one connection, 50 at a time, for `seconds`."""
    head = (f"PUT /api/v1/invocations/{UUID} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Authorization: Bearer csg_wrong\r\n\r\n").encode()
    batch = 50
    answers = 0
    stop = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        while time.monotonic() < stop:
            sock.sendall(head * batch)
            data = b""
            while data.count(b"HTTP/1.1 401") < batch:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return answers
                data += chunk
            answers += batch
    return answers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        config = write_config(folder, upstream_url="http://127.0.0.1:9", port=port,
                              audit={"denied_per_second": 20})  # the default, not the tests'
        gateway: RunningGateway = start_gateway(config, port=port)
        try:
            time.sleep(0.5)
            cancel = (f"PUT /api/v1/invocations/{UUID} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {BILLING_KEY}\r\nContent-Length: 60\r\n\r\n")
            print(f"sends nothing:            closed after {lifetime(port, b'', b'', 1):5.1f} s")
            print("header byte every 2 s:    closed after "
                  f"{lifetime(port, b'', cancel.encode(), 2.0):5.1f} s")
            print("body byte every 1 s:      closed after "
                  f"{lifetime(port, cancel.encode(), b'x' * 60, 1.0):5.1f} s")
            before = gateway.audit_path.stat().st_size if gateway.audit_path.exists() else 0
            answers = flood(port, args.flood_seconds)
            time.sleep(1.5)  # the last second's summary
            after = gateway.audit_path.stat().st_size
            rate = (after - before) / args.flood_seconds
            print(f"unauthenticated flood:    {answers / args.flood_seconds:8.0f} answers/s, "
                  f"{rate:10.0f} audit bytes/s ({(after - before) / max(answers, 1):.1f} "
                  "bytes an answer)")
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
