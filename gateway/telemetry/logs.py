"""Operational logs: structlog, one JSON object per line on stderr (console form on a tty).

uvicorn's and the standard library's log records are routed through the same renderer, so
every line on stderr has one shape. Secrets are never passed to a logger in the first place.

stderr is written through a `gateway.telemetry.pipes.BoundedWriter`: a log reader that stops
draining
costs dropped lines (counted in `chroma_sync_gateway_log_lines_dropped_total`), never a
stalled cancel.
"""

from __future__ import annotations

import atexit
import logging
import sys
from collections.abc import Callable
from typing import IO, Any

import structlog

from gateway.telemetry.pipes import BoundedWriter, TextStream, writer_for

_stderr: BoundedWriter | None = None


def count_dropped_lines(callback: Callable[[int], None]) -> None:
    """Call `callback(n)` when log lines are dropped (the gateway's metric)."""
    if _stderr is not None:
        _stderr.on_drop = callback


def _fileno(stream: IO[str]) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError):
        return None


def configure(*, json_output: bool | None = None, level: int = logging.INFO) -> None:
    global _stderr
    if json_output is None:
        json_output = not sys.stderr.isatty()
    if _stderr is None or _stderr.source != _fileno(sys.stderr):
        _stderr = writer_for(sys.stderr)
        if _stderr is not None:
            atexit.register(_stderr.close)
    stream: IO[str] | TextStream = sys.stderr if _stderr is None else TextStream(_stderr)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write a line, newline included (`print` writes it apart): one syscall, and a
        # full pipe drops whole lines, never a line without its end.
        logger_factory=structlog.WriteLoggerFactory(stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the gateway logs its own access
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one access event is ours
