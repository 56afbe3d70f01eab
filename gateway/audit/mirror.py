"""The `audit.stdout` mirror: every written batch, the same bytes, on stdout too.

The process's stdout is written without blocking (`gateway.telemetry.pipes`): when its reader
stops draining, records are dropped from the mirror (counted), never from the file. A stream
handed in (tests) is written as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO

import structlog

from gateway.telemetry.pipes import BoundedWriter, writer_for

log = structlog.get_logger("gateway.audit")


class StdoutMirror:
    def __init__(self, stream: IO[bytes], bounded: BoundedWriter | None) -> None:
        self._stream = stream
        self._bounded = bounded

    def write(self, data: bytes, records: int) -> None:
        if self._bounded is not None:
            self._bounded.write(data, units=records)
            return
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            log.warning("audit.stdout_failed")

    def close(self) -> None:
        if self._bounded is not None:
            self._bounded.close()


def mirror_for(
    stream: IO[bytes] | None, *, enabled: bool, on_drop: Callable[[int], None] | None = None,
) -> StdoutMirror | None:
    """`stream` if given, else the process's stdout when `audit.stdout` is on, else none."""
    if stream is not None:
        return StdoutMirror(stream, None)
    if not enabled:
        return None
    return StdoutMirror(sys.stdout.buffer, writer_for(sys.stdout.buffer, on_drop=on_drop))
