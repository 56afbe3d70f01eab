"""The audit log's files (gateway.audit.files), through the writer: rollback of short writes,
rotation across numbered files, and the one-writer lock."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import verify as audit_verify
from gateway.audit.files import AuditLocked
from gateway.audit.writer import AuditLog, AuditUnavailable
from tests.audit.test_writer import (
    assert_verifies,
    body,
    config,
    lines_of,
    make_log,
    patched_os,
    records_of,
    run,
    write_some,
)

# -- short writes -------------------------------------------------------------------------------


def test_short_write_is_rolled_back_then_chain_continues_with_retained_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    real_write = os.write
    short_writes = 0

    def half_then_enospc(fd: int, data: Any) -> int:
        nonlocal short_writes
        data = bytes(data)
        if not data:
            return real_write(fd, data)
        short_writes += 1
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    async def scenario() -> None:
        log = AuditLog(config(tmp_path, checkpoint_every=1000))
        await log.start()
        await write_some(log, 3)
        before = path.read_bytes()
        with patched_os(write=half_then_enospc):
            with pytest.raises(AuditUnavailable):
                await log.write(body("lost-attempt"))
            assert short_writes == 1
            assert path.read_bytes() == before  # rolled back: only whole lines
            assert log.ready is False
            assert log.problem is not None and "No space" in log.problem

            # A result that must not be lost: retained, not raised.
            await log.write(body("kept-result", "cancel.result"), retain=True)
            assert path.read_bytes() == before
            with pytest.raises(AuditUnavailable):
                await log.write(body("lost-attempt-2"))
            assert path.read_bytes() == before

        await log.write(body("after"))
        assert log.ready is True
        await log.close()

    run(scenario())
    data = path.read_bytes()
    assert data.endswith(b"\n")
    records = records_of(path)
    ids = [r.get("request_id") for r in records]
    assert "req-lost-attempt" not in ids and "req-lost-attempt-2" not in ids
    assert [i for i in ids if i][:5] == ["req-0", "req-1", "req-2", "req-kept-result",
                                         "req-after"]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert_verifies([path])


# -- rotation -----------------------------------------------------------------------------------


def rotated(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("audit.jsonl.[0-9][0-9][0-9][0-9][0-9][0-9]"))


def test_rotation_by_max_bytes_keeps_one_chain_across_files(tmp_path: Path) -> None:
    max_bytes = 4096
    path = make_log(tmp_path, 40, max_bytes=max_bytes)
    files = rotated(tmp_path)
    assert len(files) >= 3
    assert [f.name for f in files] == [f"audit.jsonl.{n:06d}" for n in range(1, len(files) + 1)]
    chain = [*files, path]
    for f in chain:
        assert 0 < f.stat().st_size <= max_bytes
    for older, newer in itertools.pairwise(chain):
        last, first = records_of(older)[-1], records_of(newer)[0]
        assert first["seq"] == last["seq"] + 1
        assert first["prev"] == last["hash"]
    ok = assert_verifies(chain)
    assert ok.records == sum(len(lines_of(f)) for f in chain)
    # The live file alone is not the whole chain.
    assert isinstance(audit_verify.verify([str(path)]), audit_verify.VerifyFailure)


# -- one writer per chain -----------------------------------------------------------------------


def test_second_writer_on_the_same_path_raises_audit_locked(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = AuditLog(config(tmp_path))
        await first.start()
        second = AuditLog(config(tmp_path))
        with pytest.raises(AuditLocked, match="one writer per chain"):
            second.lock()
        with pytest.raises(AuditLocked):
            await second.start()
        await first.write(body(1))
        await first.close()
        third = AuditLog(config(tmp_path))  # the lock goes with the writer
        third.lock()
        await third.start()
        await third.write(body(2))
        await third.close()

    run(scenario())
    assert_verifies([tmp_path / "audit.jsonl"])
