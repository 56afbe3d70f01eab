"""gateway.telemetry.logs.configure: one JSON object per line on stderr, for structlog and the
standard
library alike (uvicorn's records included), or a console form; noisy loggers kept quiet.

The tests log through loggers of their own, never the gateway's module-level ones: with
`cache_logger_on_first_use` a module logger used here would stay bound to this test's stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.telemetry import logs

FORGED = '\n{"event": "forged", "level": "critical"}\r\n'
QUIETED = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx")


@pytest.fixture(autouse=True)
def _restore_stdlib_logging() -> Iterator[None]:
    """configure() rewires the root logger and uvicorn's; put them back afterwards."""
    root = logging.getLogger()
    saved_level = root.level
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate,
               logging.getLogger(name).disabled, logging.getLogger(name).level)
        for name in QUIETED
    }
    before = set(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, (handlers, propagate, disabled, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled
        logger.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert all(lines), f"blank line in {text!r}"
    return [json.loads(line) for line in lines]


def test_json_output_is_one_object_per_line_with_event_level_and_timestamp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=True)
    log = structlog.get_logger("unit")
    log.info("gateway.started", teams=2, upstream="http://127.0.0.1:1")
    log.warning("upstream.failed", error="upstream_timeout")
    captured = capsys.readouterr()
    assert captured.out == ""
    first, second = json_lines(captured.err)
    assert first["event"] == "gateway.started"
    assert first["level"] == "info"
    assert (first["teams"], first["upstream"]) == (2, "http://127.0.0.1:1")
    assert first["timestamp"].endswith("Z")  # ISO 8601, UTC
    assert first["timestamp"][:4].isdigit() and "T" in first["timestamp"]
    assert (second["event"], second["level"]) == ("upstream.failed", "warning")


def test_json_output_drops_debug_at_the_default_info_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=True)
    structlog.get_logger("unit").debug("noise")
    assert capsys.readouterr().err == ""


def test_a_lower_level_lets_debug_through(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(json_output=True, level=logging.DEBUG)
    structlog.get_logger("unit").debug("detail")
    assert [e["event"] for e in json_lines(capsys.readouterr().err)] == ["detail"]


def test_an_exception_is_rendered_inside_its_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=True)
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        structlog.get_logger("unit").exception("cancel.internal_error")
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["event"] == "cancel.internal_error"
    assert entry["level"] == "error"
    assert "RuntimeError: kaboom" in entry["exception"]


def test_uvicorn_error_records_are_rendered_as_json_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=True)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 4242)
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["event"] == "Started server process [4242]"
    assert entry["level"] == "info"
    assert entry["logger"] == "uvicorn.error"
    assert entry["timestamp"].endswith("Z")


def test_uvicorn_access_is_silenced(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(json_output=True)
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "PUT", "/x", "1.1", 202)
    access.warning("even a warning")
    assert capsys.readouterr().err == ""


def test_httpx_info_is_suppressed_but_its_warnings_are_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=True)
    httpx_log = logging.getLogger("httpx")
    httpx_log.info('HTTP Request: PUT http://127.0.0.1/x "HTTP/1.1 202 Accepted"')
    httpx_log.warning("retrying")
    (entry,) = json_lines(capsys.readouterr().err)
    assert (entry["event"], entry["level"], entry["logger"]) == ("retrying", "warning", "httpx")


def test_console_output_is_a_readable_non_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=False)
    structlog.get_logger("unit").info("gateway.started", teams=2)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    with pytest.raises(ValueError):
        json.loads(err)
    assert "gateway.started" in err
    assert "teams=2" in err
    assert "\x1b[" not in err  # no colours


def test_output_form_follows_whether_stderr_is_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs.configure()  # captured stderr is not a terminal: JSON
    structlog.get_logger("unit").info("as_json")
    assert json_lines(capsys.readouterr().err)[0]["event"] == "as_json"

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    logs.configure()
    structlog.get_logger("unit").info("as_console")
    err = capsys.readouterr().err
    assert "as_console" in err
    with pytest.raises(ValueError):
        json.loads(err)


def test_a_value_with_a_newline_and_json_stays_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=True)
    structlog.get_logger("unit").info("access", request_id="abc" + FORGED, route=FORGED)
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["event"] == "access"
    assert entry["request_id"] == "abc" + FORGED
    assert entry["route"] == FORGED


def test_a_stdlib_message_with_a_newline_and_json_stays_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=True)
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request: %s", FORGED)
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["event"] == "Invalid HTTP request: " + FORGED
    assert entry["level"] == "warning"


def test_configure_twice_leaves_one_handler_on_the_root_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure(json_output=True)
    logs.configure(json_output=True)
    logging.getLogger("some.library").warning("once")
    assert [e["event"] for e in json_lines(capsys.readouterr().err)] == ["once"]


def test_each_line_reaches_stderr_in_one_write_newline_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One write a line: one syscall, and a full pipe drops a whole line, never its end."""
    monkeypatch.setattr(logs, "_stderr", logs._stderr)  # restored after the test
    with open(tmp_path / "stderr", "w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        logs.configure(json_output=True)
        writer = logs._stderr
        assert writer is not None
        writes: list[bytes] = []
        real_write = writer.write

        def spy(data: bytes, *, units: int = 1) -> bool:
            writes.append(bytes(data))
            return real_write(data, units=units)

        monkeypatch.setattr(writer, "write", spy)
        log = structlog.get_logger("unit.writes")
        log.info("access", status=202)
        log.warning("upstream.failed", error="upstream_timeout")
        logging.getLogger("some.library").warning("stdlib too")
    assert [w.count(b"\n") for w in writes] == [1, 1, 1], writes
    assert all(w.endswith(b"\n") for w in writes)
    events = [json.loads(w)["event"] for w in writes]
    assert events == ["access", "upstream.failed", "stdlib too"]
    assert (tmp_path / "stderr").read_bytes() == b"".join(writes)
