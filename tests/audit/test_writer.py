"""The audit log writer (gateway.audit.writer.AuditLog), in process: chain, group commit,
readiness after a failed write, checkpoints, stdout mirror and HMAC. Its helpers serve the
other in-process audit tests (test_files, test_recovery, test_retention) too."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import itertools
import json
import os
import random
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.audit import chain as audit_chain
from gateway.audit import files as audit_files
from gateway.audit import verify as audit_verify
from gateway.audit.timestamps import utc_timestamp
from gateway.audit.writer import AuditLog, AuditUnavailable
from gateway.config.model import AuditConfig
from gateway.secrets.sources import FileSecret

HMAC_KEY = "k" * 16 + "0123456789abcdef0123"  # >= 32 characters
FRAME = 2  # a new log begins with `audit.chain` (seq 1) and `audit.opened`


@contextlib.contextmanager
def patched_os(**overrides: Callable[..., Any]) -> Iterator[None]:
    """Replace functions of `os` as gateway.audit.files (the log's I/O) sees them (nowhere else)."""
    saved = audit_files.os
    audit_files.os = _OsProxy(**overrides)  # type: ignore[assignment]
    try:
        yield
    finally:
        audit_files.os = saved


class _OsProxy:
    """`os` as gateway.audit.files sees it, with some functions replaced (only there)."""

    def __init__(self, **overrides: Callable[..., Any]) -> None:
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(os, name)


class CountedSync:
    """`os.fdatasync` that counts its calls (pass it to `patched_os(fdatasync=...)`)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        os.fdatasync(fd)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def config(tmp_path: Path, **overrides: Any) -> AuditConfig:
    return AuditConfig(path=str(tmp_path / "audit.jsonl"), **overrides)


def body(n: int | str, event: str = "cancel.attempt") -> dict[str, Any]:
    return {
        "ts": utc_timestamp(),
        "event": event,
        "request_id": f"req-{n}",
        "invocation_id": "3f2a1c9e-8b7d-4e6f-9a1b-2c3d4e5f6a7b",
        "team": "billing",
        "key_id": "0123456789ab",
        "client": "127.0.0.1",
        "outcome": "pending",
        "status": None,
        "upstream_status": None,
        "error": None,
        "duration_ms": 1.5,
    }


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(path)]


def assert_verifies(paths: list[Path], **kwargs: Any) -> audit_verify.VerifyOk:
    result = audit_verify.verify([str(p) for p in paths], **kwargs)
    assert isinstance(result, audit_verify.VerifyOk), result
    return result


async def write_some(log: AuditLog, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        await log.write(body(n))


def make_log(tmp_path: Path, count: int, **overrides: Any) -> Path:
    """A closed log of `count` cancel records (and the final checkpoint close() writes)."""

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, **overrides))
        await log.start()
        await write_some(log, count)
        await log.close()

    run(scenario())
    return tmp_path / "audit.jsonl"



# -- the chain ----------------------------------------------------------------------------------


def test_records_are_chained_seq_prev_hash_and_verify(tmp_path: Path) -> None:
    path = make_log(tmp_path, 5)
    records = records_of(path)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["prev"] == audit_chain.GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    for record, line in zip(records, lines_of(path), strict=True):
        assert line == audit_chain.canonical(record) + b"\n"
        assert record["hash"] == audit_chain.record_hash(
            audit_chain.canonical(audit_chain.body_of(record)))
    assert [r["event"] for r in records[:FRAME]] == ["audit.chain", "audit.opened"]
    assert [r["request_id"] for r in records[FRAME:FRAME + 5]] == [f"req-{n}" for n in range(5)]
    assert {r["chain"] for r in records} == {records[0]["chain"]}
    ok = assert_verifies([path])
    assert ok.records == len(records)
    assert ok.head_hash == records[-1]["hash"]


# -- group commit -------------------------------------------------------------------------------


def test_group_commit_200_concurrent_writes_share_few_fsyncs_and_each_waits_for_disk(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    fsyncs = 0
    synced_size = 0  # bytes of the log known to be on disk (as of the last fsync)

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs, synced_size
        size = os.fstat(fd).st_size
        os.fsync(fd)
        fsyncs += 1
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            synced_size = max(synced_size, size)

    premature: list[str] = []

    async def one(log: AuditLog, n: int) -> None:
        await asyncio.sleep(random.random() * 0.01)
        await log.write(body(n))
        # Returned: this record must already be whole in the file and covered by an fsync.
        data = path.read_bytes()
        marker = f'"request_id":"req-{n}"'.encode()
        at = data.find(marker)
        end = data.find(b"\n", at) + 1
        if at < 0 or end == 0 or end > synced_size:
            premature.append(f"req-{n}")

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, fsync=True))
        await log.start()
        with patched_os(fdatasync=counting_fsync):
            await asyncio.gather(*(one(log, n) for n in range(200)))
        await log.close()

    run(scenario())
    assert premature == []
    assert 1 <= fsyncs <= 40, f"{fsyncs} fsyncs for 200 records: no group commit"
    records = [r for r in records_of(path) if r["event"] == "cancel.attempt"]
    assert sorted(r["request_id"] for r in records) == sorted(f"req-{n}" for n in range(200))
    assert_verifies([path])


def test_without_fsync_config_no_fsync_is_made(tmp_path: Path) -> None:
    syncs = CountedSync()

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, fsync=False))
        await log.start()
        with patched_os(fdatasync=syncs):
            await write_some(log, 10)
        await log.close()

    run(scenario())
    assert syncs.calls == 0
    assert len(records_of(tmp_path / "audit.jsonl")) == FRAME + 11


def completes_without_waiting(coro: Coroutine[Any, Any, None]) -> bool:
    """Whether `coro` finished in one step: it never yielded to the event loop."""
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()
    return False


def test_a_result_record_written_alone_is_written_in_the_call_and_not_fsynced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    syncs = CountedSync()

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, fsync=True))
        await log.start()
        with patched_os(fdatasync=syncs):
            await log.write(body(1))  # one attempt at a time: writes are not concurrent
            assert syncs.calls == 1
            result = body(1, "cancel.result")
            assert completes_without_waiting(log.write(result, durable=False))
            assert [r["event"] for r in records_of(path)][-2:] == [
                "cancel.attempt", "cancel.result"]
            assert syncs.calls == 1  # written at once, fsynced with the next attempt
            await log.write(body(2))
            assert syncs.calls == 2
        await log.close()

    run(scenario())
    assert_verifies([path])


def test_an_attempt_written_alone_is_durable_within_the_call(tmp_path: Path) -> None:
    syncs = CountedSync()

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, fsync=True))
        await log.start()
        with patched_os(fdatasync=syncs):
            assert completes_without_waiting(log.write(body(1), alone=True))
            assert syncs.calls == 1
            assert records_of(tmp_path / "audit.jsonl")[-1]["request_id"] == "req-1"
        await log.close()

    run(scenario())


def test_an_attempt_alone_still_joins_a_flush_already_due_and_shares_its_fsync(
    tmp_path: Path,
) -> None:
    syncs = CountedSync()

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, fsync=True))
        await log.start()
        with patched_os(fdatasync=syncs):
            waiting = log.write(body(1))  # queued for the flush at the end of this turn
            assert not completes_without_waiting(waiting)
            await log.write(body(2), alone=True)
        assert syncs.calls == 1
        await log.close()

    run(scenario())


def test_while_attempts_are_concurrent_a_result_record_shares_the_next_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, fsync=True))
        await log.start()
        await asyncio.gather(log.write(body(1)), log.write(body(2)))  # one batch of two
        writes: list[bytes] = []

        def counting_write(fd: int, data: Any) -> int:
            writes.append(bytes(data))
            return os.write(fd, data)

        with patched_os(write=counting_write):
            # It waits for the flush at the end of this turn (the record stays queued)...
            waiting = log.write(body(1, "cancel.result"), durable=False)
            assert not completes_without_waiting(waiting)
            # ...which this one joins: both leave in one write.
            await log.write(body(2, "cancel.result"), durable=False)
        assert len(writes) == 1 and writes[0].count(b"\n") == 2
        await log.close()

    run(scenario())
    assert_verifies([path])


# -- readiness after a failed write -------------------------------------------------------------


def test_probe_writes_retained_records_once_the_disk_accepts_writes_again(
    tmp_path: Path,
) -> None:
    """Readiness must be able to recover without a cancel (a not-ready pod gets none)."""
    path = tmp_path / "audit.jsonl"

    def enospc(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def scenario() -> None:
        log = AuditLog(config(tmp_path))
        await log.start()
        await write_some(log, 2)
        with patched_os(write=enospc):
            await log.write(body("kept", "cancel.result"), retain=True)
            assert await log.probe() is False
        assert await log.probe() is True
        assert "req-kept" in path.read_text()
        await log.close()

    run(scenario())
    assert_verifies([path])


# -- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_record_after_every_n_records_names_the_head(tmp_path: Path) -> None:
    path = make_log(tmp_path, 12, checkpoint_every=5)
    records = records_of(path)
    events = [r["event"] for r in records]
    # Every record counts towards the next checkpoint, the two that begin the log too.
    assert events[:12] == ["audit.chain", "audit.opened"] + ["cancel.attempt"] * 3 + [
        "audit.checkpoint"] + ["cancel.attempt"] * 5 + ["audit.checkpoint"]
    by_seq = {r["seq"]: r for r in records}
    for record in records:
        if record["event"] == "audit.checkpoint":
            assert record["head_seq"] == record["seq"] - 1
            assert record["head_hash"] == by_seq[record["seq"] - 1]["hash"]
            assert record["head_hash"] == record["prev"]
    assert_verifies([path], checkpoints=[(6, by_seq[6]["hash"]), (12, by_seq[12]["hash"])])


def test_checkpoint_after_checkpoint_seconds_only_when_there_is_something_new(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, checkpoint_seconds=0.2))
        await log.start()
        await log.write(body(1))
        await asyncio.sleep(0.6)
        events = [r["event"] for r in records_of(path)][FRAME:]
        assert events == ["cancel.attempt", "audit.checkpoint"]  # one, not one per tick
        await log.write(body(2))
        await asyncio.sleep(0.5)
        assert [r["event"] for r in records_of(path)][-2:] == [
            "cancel.attempt", "audit.checkpoint"]
        await log.close()

    run(scenario())
    records = records_of(path)[FRAME:]
    assert records[1]["head_seq"] == FRAME + 1 and records[1]["head_hash"] == records[0]["hash"]
    assert_verifies([path])


def test_close_writes_a_final_checkpoint(tmp_path: Path) -> None:
    path = make_log(tmp_path, 3)
    records = records_of(path)
    assert len(records) == FRAME + 4
    final = records[-1]
    assert final["event"] == "audit.checkpoint"
    assert final["head_seq"] == FRAME + 3 and final["head_hash"] == records[-2]["hash"]
    assert set(final) == {"ts", "event", "seq", "prev", "hash", "head_seq", "head_hash",
                          "chain", "tree_size", "root"}
    assert final["tree_size"] == final["seq"] - 1


# -- stdout mirror ------------------------------------------------------------------------------


def test_stdout_mirror_writes_the_same_lines_as_the_file(tmp_path: Path) -> None:
    mirror = io.BytesIO()

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, checkpoint_every=4), stdout=mirror)
        await log.start()
        await asyncio.gather(*(log.write(body(n)) for n in range(10)))
        await log.close()

    run(scenario())
    data = (tmp_path / "audit.jsonl").read_bytes()
    assert len(data.splitlines()) == 15  # 2 + 10, and a checkpoint after every 4 of them
    assert mirror.getvalue() == data


def logs_to_stderr() -> None:
    """structlog's default goes to stdout; the mirror tests need stdout to themselves."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def test_stdout_config_mirrors_to_process_stdout(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    logs_to_stderr()
    path = make_log(tmp_path, 2, stdout=True)
    assert capsysbinary.readouterr().out == path.read_bytes()


def test_no_stdout_mirror_by_default(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    logs_to_stderr()
    make_log(tmp_path, 2)
    assert capsysbinary.readouterr().out == b""


# -- HMAC ---------------------------------------------------------------------------------------


def test_missing_hmac_key_makes_writes_fail_until_the_key_appears(tmp_path: Path) -> None:
    key_path = tmp_path / "hmac.key"
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        key = FileSecret(str(key_path), what="audit HMAC key", min_chars=32)
        key.refresh()
        log = AuditLog(config(tmp_path, hmac_key_file=str(key_path)), mac_key=key)
        await log.start()
        with pytest.raises(AuditUnavailable):
            await log.write(body("refused"))
        assert log.ready is False
        assert await log.probe() is False
        key_path.write_text(HMAC_KEY + "\n")
        key.refresh()
        await log.write(body("ok"))
        assert log.ready is True
        await log.close()

    run(scenario())
    records = records_of(path)
    assert "req-refused" not in [r.get("request_id") for r in records]
    assert "req-ok" in [r.get("request_id") for r in records]
    assert all(isinstance(r.get("mac"), str) for r in records)


def test_readiness_is_false_while_the_hmac_key_is_missing(tmp_path: Path) -> None:
    key_path = tmp_path / "hmac.key"

    async def scenario() -> None:
        key = FileSecret(str(key_path), what="audit HMAC key", min_chars=32)
        key.refresh()
        log = AuditLog(config(tmp_path, hmac_key_file=str(key_path)), mac_key=key)
        await log.start()
        assert await log.probe() is False  # before any write was attempted
        key_path.write_text(HMAC_KEY)
        key.refresh()
        assert await log.probe() is True
        await log.close()

    run(scenario())


def test_with_hmac_key_every_record_has_a_valid_mac(tmp_path: Path) -> None:
    key_path = tmp_path / "hmac.key"
    key_path.write_text(HMAC_KEY + "\n")
    path = tmp_path / "audit.jsonl"

    async def scenario() -> None:
        key = FileSecret(str(key_path), what="audit HMAC key", min_chars=32)
        key.refresh()
        log = AuditLog(config(tmp_path, hmac_key_file=str(key_path), checkpoint_every=3),
                       mac_key=key)
        await log.start()
        await write_some(log, 7)
        await log.close()

    run(scenario())
    records = records_of(path)
    assert len(records) == 12  # 2 + 7, and a checkpoint after every 3 of them
    key = HMAC_KEY.encode()
    for record in records:
        encoded = audit_chain.canonical(audit_chain.body_of(record))
        assert audit_chain.mac_matches(key, encoded, record["mac"])
    assert_verifies([path], hmac_keys=[key])
    wrong = audit_verify.verify([str(path)], hmac_keys=[b"x" * 40])
    assert isinstance(wrong, audit_verify.VerifyFailure) and "bad mac" in wrong.reason
