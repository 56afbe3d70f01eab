"""`chroma-sync-gateway standin`: the embedded Chroma Sync stand-in on its own, on loopback, so
that `serve` can be tried with one's own config before there is a Chroma account.

The token the stand-in accepts is read from `--token-file` when that file holds one, else a new
one is made and written there (mode 0600): point `upstream.token_file` at the same file. The
invocations it holds are seeded from `--seed`, so the same seed gives the same ids.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import threading
from typing import TextIO

from gateway.demo.seed import SOURCES, seed
from gateway.demo.standin import StandIn
from gateway.secrets.sources import InvalidSecret, read_secret_file

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def token_for(path: str | None, err: TextIO) -> str:
    """The token in `path`, or a new one written there (0600); a new one if there is no path."""
    if path is None:
        return f"standin-{secrets.token_urlsafe(24)}"
    if os.path.exists(path):
        return read_secret_file(path, what="upstream token")
    token = f"standin-{secrets.token_urlsafe(24)}"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    print(f"wrote a new token to {path} (mode 0600)", file=err)
    return token


def run(*, host: str, port: int, token_file: str | None, seed_value: int, out: TextIO,
        err: TextIO, stop: threading.Event | None = None) -> int:
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"standin: --host must be a loopback address, got {host!r}", file=err)
        return EXIT_USAGE
    if not 0 <= port <= 65535:
        print(f"standin: --port must be from 0 to 65535, got {port}", file=err)
        return EXIT_USAGE
    try:
        token = token_for(token_file, err)
    except (InvalidSecret, OSError) as exc:
        print(f"standin: --token-file: {exc}", file=err)
        return EXIT_USAGE
    standin = StandIn(token=token, host=host, port=port)
    stop = stop or _stop_on_signals()
    try:
        with standin.run_in_thread():
            seeded = seed(standin, random.Random(seed_value))  # noqa: S311 - ids, not secrets
            out.write(f"Chroma Sync stand-in serving on {standin.base_url}\n"
                      f"token: {'in ' + token_file if token_file else token}\n"
                      f"seed: {seed_value}\n"
                      "pending invocations:\n")
            for database, ids in (("docs", seeded.docs_pending),
                                  ("search", seeded.search_pending)):
                for invocation in ids:
                    job = standin.job_of(invocation) or {}
                    metadata = job.get("metadata", {})
                    out.write(f"  {invocation}  database {database}, collection "
                              f"{metadata.get('collection_name')}, source {job.get('source_id')}\n")
            out.write("sources: " + ", ".join(f"{name} {source}" for name, source
                                              in SOURCES.items()) + "\n")
            out.write("Press Ctrl-C to stop.\n")
            out.flush()
            stop.wait()
    except OSError as exc:
        print(f"standin: can't listen on {host}:{port} ({exc.strerror or exc})", file=err)
        return EXIT_FAILURE
    return EXIT_OK


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop

