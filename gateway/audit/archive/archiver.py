"""The gateway's side of the archive: the worker process, what it is told, what it reports.

The audit writer calls `checkpoint_durable(chain, seq)` after a checkpoint record is durable
(and `durable(chain, seq)` once at start with the head it found). Both only queue a short line
to the worker's stdin: archiving never waits in a cancel's path, and never makes the gateway
unready. The worker's reports keep `archived_through(chain)` (for the lag metric and for
`audit.keep_files`, which must not delete a file whose records are not archived) and count
uploads by result.

A worker that exits is started again after a backoff, and told again how far each chain is
durable; it resumes from what the archive holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("gateway.audit.archive")

RESTART_START = 1.0
RESTART_MAX = 30.0
CLOSE_SECONDS = 6.0  # the worker's own drain (5 s) and a little more


def log_report(event: dict[str, Any]) -> None:
    """The gateway's log line for a worker's report (the worker itself logs nothing)."""
    upload = event.get("upload")
    if "unavailable" in event:
        log.error("audit.archive_unavailable", problem=str(event["unavailable"]))
    elif upload == "conflict":
        log.error("audit.archive_conflict", object_problem=event.get("problem"),
                  chain=event.get("chain"))
    elif upload == "failure":
        log.warning("audit.archive_failed", problem=event.get("problem"),
                    chain=event.get("chain"), retry_in=event.get("retry_in"),
                    failures=event.get("failures"))
    elif event.get("resumed"):
        log.info("audit.archive_resumed", chain=event.get("chain"),
                 archived_seq=event.get("archived"))
    elif "archived" in event:
        log.info("audit.archived", chain=event.get("chain"), object=event.get("object"),
                 archived_seq=event.get("archived"), outcome=event.get("outcome"))


class Archiver:
    def __init__(
        self, url: str, audit_path: str, *,
        on_upload: Callable[[str], None] | None = None,
        on_progress: Callable[[], None] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.url = url
        self.audit_path = audit_path
        self._on_upload = on_upload
        self._on_progress = on_progress
        self._current: str | None = None  # the chain last heard of: the one being written
        self._written: dict[str, int] = {}  # chain -> the last seq written
        self._command = command or [sys.executable, "-m", "gateway.audit.archive.worker"]
        self._durable: dict[str, int] = {}
        self._archived: dict[str, int] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    # -- what the writer calls -------------------------------------------------------------

    def durable(self, chain: str, seq: int) -> None:
        """Records of `chain` are durable up to `seq`: archive each checkpoint within."""
        self._current = chain
        if seq <= self._durable.get(chain, 0):
            return
        self._durable[chain] = seq
        self._send(chain, seq)

    checkpoint_durable = durable

    def written(self, chain: str, seq: int) -> None:
        """Records of `chain` are written up to `seq` (durable or not): for the lag."""
        self._current = chain
        self._written[chain] = seq

    def archived_through(self, chain: str) -> int:
        """The last seq of `chain` known to be in the archive (0: none yet, or not known)."""
        return self._archived.get(chain, 0)

    def lag(self, chain: str | None = None) -> int:
        """Records of `chain` (default: the one being written) written, not archived yet."""
        chain = chain or self._current
        if chain is None:
            return 0
        written = max(self._written.get(chain, 0), self._durable.get(chain, 0))
        return max(0, written - self.archived_through(chain))

    def covers(self, seq: int) -> bool:
        """Whether records up to `seq` of the chain being written are in the archive (what
        `audit.keep_files` asks before it deletes a file)."""
        return self._current is not None and self.archived_through(self._current) >= seq

    @property
    def worker_pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    # -- the worker ------------------------------------------------------------------------

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Let the worker put what is due (up to CLOSE_SECONDS), then stop it."""
        self._closing = True
        process = self._process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), CLOSE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def _run(self) -> None:
        delay = RESTART_START
        while not self._closing:
            started = asyncio.get_running_loop().time()
            try:
                self._process = await asyncio.create_subprocess_exec(
                    *self._command, "--audit-path", self.audit_path, "--archive", self.url,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                )
            except OSError as exc:
                log.error("audit.archive_unavailable", problem=f"worker not started: {exc}")
            else:
                for chain, seq in self._durable.items():
                    self._send(chain, seq)
                await self._read_reports(self._process)
                code = await self._process.wait()
                if self._closing:
                    return
                log.error("audit.archive_unavailable",
                          problem=f"the archive worker exited ({code}); started again")
            if asyncio.get_running_loop().time() - started > RESTART_MAX:
                delay = RESTART_START
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)

    async def _read_reports(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            try:
                report: Any = json.loads(line)
            except ValueError:
                continue
            if isinstance(report, dict):
                self._take(report)

    def _take(self, report: dict[str, Any]) -> None:
        log_report(report)
        chain, archived = report.get("chain"), report.get("archived")
        if isinstance(chain, str) and isinstance(archived, int):
            if archived > self._archived.get(chain, 0):
                self._archived[chain] = archived
                if self._on_progress is not None:
                    self._on_progress()
            if self._current is None:
                self._current = chain
        result = report.get("upload")
        if isinstance(result, str) and self._on_upload is not None:
            self._on_upload(result)

    def _send(self, chain: str, seq: int) -> None:
        process = self._process
        if process is None or process.stdin is None or process.returncode is not None:
            return  # told again when it (re)starts
        line = json.dumps({"chain": chain, "seq": seq}, separators=(",", ":")) + "\n"
        with contextlib.suppress(ConnectionError, RuntimeError):
            process.stdin.write(line.encode("ascii"))
