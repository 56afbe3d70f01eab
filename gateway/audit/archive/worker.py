"""The archive's own process: `python -m gateway.audit.archive.worker --audit-path P --archive URL`.

The gateway starts it when `audit.archive` is set and talks to it over two pipes, one JSON
object a line: on its stdin `{"chain", "seq"}` (records of the chain are durable up to seq),
on its stdout what happened (`gateway.audit.archive.uploader` reports, and `{"unavailable"}`
when the archive can't be opened), which the gateway logs. It imports no logging library:
structlog alone would double its memory, which counts against the pod's with the gateway's.

A process of its own, not a thread: the object-store client (and its TLS and async runtime)
costs ~10 MiB and ~50 ms to import, which the gateway's 60 MiB budget has no room for; and
an upload that blocks, or a client that crashes, never touches the event loop that serves
cancels. When its stdin closes (the gateway stopping, or gone) it puts what is due for up
to `DRAIN_SECONDS`, then exits.
"""

from __future__ import annotations

import json
import os
import selectors
import sys
import time
from typing import Any

from gateway.audit.archive import opening, store
from gateway.audit.archive.location import BadArchiveUrl
from gateway.audit.archive.segments import LocalLines
from gateway.audit.archive.uploader import Uploader

DRAIN_SECONDS = 5.0


def _report(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class _Commands:
    """Lines from stdin, read without blocking the uploads."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        os.set_blocking(self.fd, False)
        self._buffer = b""
        self.closed = False

    def read(self) -> list[dict[str, Any]]:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        if not chunk:
            self.closed = True
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        commands = []
        for line in lines:
            try:
                command = json.loads(line)
            except ValueError:
                continue
            if isinstance(command, dict):
                commands.append(command)
        return commands


def run(audit_path: str, archive_url: str) -> int:
    try:
        archive = opening.open_store(archive_url)
    except (BadArchiveUrl, store.StoreError) as exc:
        _report({"unavailable": str(exc)})
        return 2
    local = LocalLines(audit_path)
    uploader = Uploader(archive, local, _report)
    head = local.head()
    if head is not None:
        uploader.durable(*head)  # what the last run left: every checkpoint within it
    commands = _Commands()
    selector = selectors.DefaultSelector()
    selector.register(commands.fd, selectors.EVENT_READ)
    deadline: float | None = None
    while True:
        for command in commands.read():
            chain, seq = command.get("chain"), command.get("seq")
            if isinstance(chain, str) and isinstance(seq, int):
                uploader.durable(chain, seq)
        if commands.closed and deadline is None:
            deadline = time.monotonic() + DRAIN_SECONDS
            selector.unregister(commands.fd)
        while uploader.step():
            if deadline is not None and time.monotonic() > deadline:
                return 0
            if not commands.closed:
                break  # between puts, take new commands in
        wait = uploader.wait()
        if deadline is not None:
            if wait is None or time.monotonic() + (wait or 0) > deadline:
                return 0
            time.sleep(wait)
        elif wait != 0:
            selector.select(wait)


USAGE = "usage: python -m gateway.audit.archive.worker --audit-path PATH --archive URL"


def main(argv: list[str] | None = None) -> int:
    # The gateway starts it with exactly these two options; argparse would cost memory.
    given = sys.argv[1:] if argv is None else argv
    options = dict(zip(given[::2], given[1::2], strict=False))
    if len(given) != 4 or set(options) != {"--audit-path", "--archive"}:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        return run(options["--audit-path"], options["--archive"])
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
