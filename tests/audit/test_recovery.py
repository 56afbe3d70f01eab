"""Tail recovery at start (gateway.audit.recovery): a torn or edited tail is cut and described
in an `audit.recovered` record; an end that does not verify fails the log closed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from gateway.audit import chain as audit_chain
from gateway.audit.writer import AuditLog, AuditUnavailable
from tests.audit.test_writer import (
    assert_verifies,
    body,
    config,
    lines_of,
    make_log,
    records_of,
    run,
)

# -- tail recovery ------------------------------------------------------------------------------


def reopen_and_write(tmp_path: Path, count: int = 1) -> AuditLog:
    async def scenario() -> AuditLog:
        log = AuditLog(config(tmp_path))
        await log.start()
        for n in range(count):
            await log.write(body(f"new-{n}"))
        await log.close()
        return log

    return run(scenario())  # type: ignore[no-any-return]


def test_torn_last_line_is_removed_and_described_in_recovered_record(tmp_path: Path) -> None:
    path = make_log(tmp_path, 3)
    good = records_of(path)
    torn = b'{"client":"127.0.0.1","duration_ms":1.5,"error":null,"event":"cancel.att'
    with open(path, "ab") as handle:
        handle.write(torn)

    reopen_and_write(tmp_path)
    records = records_of(path)
    assert records[: len(good)] == good
    recovered = records[len(good)]
    assert recovered["event"] == "audit.recovered"
    assert recovered["seq"] == good[-1]["seq"] + 1
    assert recovered["prev"] == good[-1]["hash"]
    assert recovered["discarded_bytes"] == len(torn)
    assert recovered["discarded_sha256"] == hashlib.sha256(torn).hexdigest()
    assert base64.b64decode(recovered["discarded_b64"]) == torn
    assert "torn" in recovered["reason"]
    assert records[len(good) + 1]["event"] == "audit.opened"  # after what it found, this start
    assert records[len(good) + 2]["request_id"] == "req-new-0"
    assert path.read_bytes().endswith(b"\n")
    assert_verifies([path])


def test_recovered_record_is_written_at_start_without_waiting_for_a_request(
    tmp_path: Path,
) -> None:
    """The torn bytes are cut from the file at open: their description must not wait for
    traffic, or a restart followed by a clean stop (or a crash) drops them silently."""
    path = make_log(tmp_path, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"torn":')

    async def scenario() -> None:
        log = AuditLog(config(tmp_path))
        await log.start()
        await asyncio.sleep(0.2)
        assert b'"event":"audit.recovered"' in path.read_bytes()
        await log.close()

    run(scenario())
    assert [r["event"] for r in records_of(path)].count("audit.recovered") == 1
    assert_verifies([path])


def test_edited_last_line_is_cut_and_chain_continues_from_last_good_record(
    tmp_path: Path,
) -> None:
    path = make_log(tmp_path, 3)
    lines = lines_of(path)
    good = [json.loads(line) for line in lines[:-1]]
    edited = lines[-1].replace(b'"event":"audit.checkpoint"', b'"event":"audit.checkpoinT"')
    assert edited != lines[-1]
    path.write_bytes(b"".join(lines[:-1]) + edited)

    reopen_and_write(tmp_path)
    records = records_of(path)
    assert records[: len(good)] == good
    recovered = records[len(good)]
    assert recovered["event"] == "audit.recovered"
    assert recovered["seq"] == good[-1]["seq"] + 1  # takes the removed record's place
    assert recovered["prev"] == good[-1]["hash"]
    assert recovered["discarded_bytes"] == len(edited)
    assert base64.b64decode(recovered["discarded_b64"]) == edited
    assert recovered["discarded_sha256"] == hashlib.sha256(edited).hexdigest()
    assert "do not verify" in recovered["reason"]
    assert b"checkpoinT" not in b"".join(lines_of(path)[: len(good)])
    assert_verifies([path])


def test_log_whose_whole_tail_does_not_verify_fails_closed_and_is_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    lines = []
    for n in range(3):
        _, line = audit_chain.seal(body(n), seq=n + 1, prev=audit_chain.GENESIS,
                                        mac_key=None)
        lines.append(line.replace(b"req-", b"REQ-"))  # every hash now wrong
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()

    async def scenario() -> None:
        log = AuditLog(config(tmp_path))
        await log.start()
        assert log.ready is False
        assert log.problem is not None and "does not verify" in log.problem
        with pytest.raises(AuditUnavailable):
            await log.write(body("refused"))
        assert await log.probe() is False
        await log.close()

    run(scenario())
    assert path.read_bytes() == before


# -- after a rotation ---------------------------------------------------------------------------


def test_restart_after_rotation_with_empty_live_file_continues_from_rotated_file(
    tmp_path: Path,
) -> None:
    path = make_log(tmp_path, 5)
    last = records_of(path)[-1]
    os.rename(path, tmp_path / "audit.jsonl.000001")  # a crash just after rotating
    path.write_bytes(b"")

    reopen_and_write(tmp_path, 2)
    records = records_of(path)
    assert records[0]["seq"] == last["seq"] + 1
    assert records[0]["prev"] == last["hash"]
    assert records[0]["event"] == "audit.opened" and records[0]["chain"] == last["chain"]
    assert records[1]["request_id"] == "req-new-0"
    assert_verifies([tmp_path / "audit.jsonl.000001", path])
