"""Team changes without a restart: `[[teams]]` reloaded on SIGHUP or a changed config file.

The config file is a `WatchedFile`, polled like the secrets (a change is adopted once two
polls agree, so a file caught half-written is never parsed). SIGHUP reads it at once. The new
file is parsed and validated in full, exactly as at start; a file that is refused leaves the
running config serving and is logged with the same one-line message `check-config` prints.

From an accepted file only `[[teams]]` is adopted: a new `Policy` (see `gateway.access.policy`) is
built and swapped in with one assignment, between requests. Other changed keys need a restart
and are logged as `config.restart_required`. Every reload is recorded in the audit chain as an
`audit.config` record and counted in `chroma_sync_gateway_config_reloads_total{result}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import structlog

from gateway.access import keys
from gateway.access.policy import build_policy
from gateway.audit.timestamps import utc_timestamp
from gateway.audit.writer import AuditUnavailable
from gateway.cancel.pipeline import CancelPipeline
from gateway.config import load as config_module
from gateway.config.model import Config, TeamConfig
from gateway.errors import ConfigError
from gateway.secrets.watch import WatchedFile, Watcher

log = structlog.get_logger("gateway.reload")

SIGNAL, FILE = "sighup", "file"


def restart_keys(old: Config, new: Config) -> list[str]:
    """The keys outside `[[teams]]` whose values differ: `upstream.timeout`, `server`, ..."""
    changed: list[str] = []
    for top in dataclasses.fields(old):
        if top.name in ("source", "teams"):
            continue
        before, after = getattr(old, top.name), getattr(new, top.name)
        if dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after):
            changed.extend(
                f"{top.name}.{f.name}" for f in dataclasses.fields(before)
                if getattr(before, f.name) != getattr(after, f.name)
            )
        elif before != after:
            changed.append(top.name)
    return changed


def team_changes(
    old: Sequence[TeamConfig], new: Sequence[TeamConfig]
) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """`added` and `removed` (teams and key_ids), and the teams kept whose settings changed."""
    old_teams = {t.name: t for t in old}
    new_teams = {t.name: t for t in new}
    old_keys = {keys.key_id(k) for t in old for k in t.keys}
    new_keys = {keys.key_id(k) for t in new for k in t.keys}
    added = {"teams": sorted(new_teams.keys() - old_teams.keys()),
             "key_ids": sorted(new_keys - old_keys)}
    removed = {"teams": sorted(old_teams.keys() - new_teams.keys()),
               "key_ids": sorted(old_keys - new_keys)}
    changed = sorted(name for name in old_teams.keys() & new_teams.keys()
                     if old_teams[name] != new_teams[name])
    return added, removed, changed


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class Reloader:
    """Reloads the gateway's teams; one reload at a time, in the order they were asked for."""

    def __init__(self, pipeline: CancelPipeline, watcher: Watcher) -> None:
        self._pipeline = pipeline  # its `config` and `policy` are what a reload swaps
        self._watcher = watcher
        self.path = pipeline.config.source
        self.file = WatchedFile(self.path, what="config")
        self._sha256: str | None = None  # of the file the running teams came from
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def start(self) -> None:
        """Note the running file's digest and watch it (called once the loop runs)."""
        self._loop = asyncio.get_running_loop()
        self.file.load()
        if self.file.content is not None:
            self._sha256 = hashlib.sha256(self.file.content).hexdigest()
        self._watcher.add(self.file, lambda: self.request(FILE))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def request_threadsafe(self, trigger: str) -> None:
        """From a signal handler: schedule a reload on the gateway's loop."""
        if self._loop is None:
            log.warning("config.reload_ignored", trigger=trigger, reason="not started yet")
            return
        self._loop.call_soon_threadsafe(self.request, trigger)

    def request(self, trigger: str) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, trigger: str) -> bool:
        """Adopt the file's `[[teams]]`; False (and the old teams still serving) if refused."""
        async with self._lock:
            if trigger == FILE:
                raw = self.file.content
                if raw is None:
                    return self._refuse(trigger, f"{self.path}: {self.file.problem}")
            else:
                try:
                    raw = await asyncio.to_thread(_read, self.path)
                except FileNotFoundError:
                    return self._refuse(trigger, f"{self.path}: file not found")
                except OSError as exc:
                    return self._refuse(trigger, f"{self.path}: can't be read ({exc.strerror})")
            digest = hashlib.sha256(raw).hexdigest()
            if trigger == FILE and digest == self._sha256:
                return True  # already running (SIGHUP read it first, or it changed back)
            try:
                new = config_module.loads(raw, source=self.path)
            except ConfigError as exc:
                return self._refuse(trigger, str(exc))
            await self._adopt(new, digest, trigger)
            return True

    def _refuse(self, trigger: str, problem: str) -> bool:
        log.error("config.reload_failed", trigger=trigger, problem=problem)
        self._pipeline.metrics.config_reloads.labels("failure").inc()
        return False

    async def _adopt(self, new: Config, digest: str, trigger: str) -> None:
        pipeline = self._pipeline
        old = pipeline.config
        restart = restart_keys(old, new)
        if restart:
            log.warning("config.restart_required", keys=restart,
                        message="these keys take effect only after a restart")
        added, removed, changed = team_changes(old.teams, new.teams)
        adopted = dataclasses.replace(old, teams=new.teams)
        policy = build_policy(adopted, pipeline.metrics, previous=pipeline.policy)
        record: dict[str, Any] = {
            "ts": utc_timestamp(), "event": "audit.config", "trigger": trigger,
            "config_sha256": digest, "added": added, "removed": removed, "changed": changed,
            "restart_required": restart,
        }
        # The record goes first, so that it precedes every request served under the new teams;
        # a log that can't be written keeps it in memory, and the reload still happens (a
        # kill switch must work while cancels are refused for want of an audit log).
        with contextlib.suppress(AuditUnavailable):
            await pipeline.audit.write(record, retain=True)
        pipeline.config, pipeline.policy = adopted, policy
        self._sha256 = digest
        for team in old.teams:
            for stored in team.keys:
                if keys.key_id(stored) in removed["key_ids"]:
                    with contextlib.suppress(KeyError):
                        pipeline.metrics.key_requests.remove(team.name, keys.key_id(stored))
        pipeline.metrics.config_reloads.labels("success").inc()
        log.info("config.reloaded", trigger=trigger, config_sha256=digest, added=added,
                 removed=removed, changed=changed, teams=len(new.teams))
