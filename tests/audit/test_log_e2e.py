"""The audit log end to end: a real gateway subprocess, a real stand-in, real files and signals.

Durability before forwarding, field shapes, whole lines under concurrency, a really full disk
(RLIMIT_FSIZE), graceful drain, crash recovery, rotation, checkpoints, the stdout mirror, the
one-writer lock and the HMAC key."""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway.access import keys
from gateway.audit import chain as audit_chain
from gateway.demo.standin import Delay, ReceivedRequest, StandIn
from tests.conftest import GatewayFactory
from tests.harness import BILLING_KEY, RunningGateway, default_teams

CANCEL_FIELDS = {
    "ts", "event", "request_id", "invocation_id", "team", "key_id", "issuer", "client", "outcome",
    "status", "upstream_status", "error", "duration_ms", "database", "collection", "source_id",
}
CHAIN_FIELDS = {"seq", "prev", "hash", "chain"}
ATTEMPT_FIELDS = {"attempt"}  # the try's number
RESULT_FIELDS = {"attempts", "reconciled"}  # PUTs sent; settled by a lookup
TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
HMAC_KEY = "audit-hmac-key-0123456789abcdefghijklmnop"


def verify_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", *map(str, args)],
        capture_output=True, text=True, timeout=30, check=False,
    )


def assert_verify_ok(*args: str | Path, records: int | None = None) -> str:
    result = verify_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    # One line per chain (0.3): `chain <id> (<instance>): ok: N records, seq A..B, head H`.
    match = re.fullmatch(r"chain [0-9a-f]{32} \([^)]*\): ok: (\d+) records, seq \d+\.\.\d+, "
                         r"head ([0-9a-f]{64})(?:, signed at .*)?\n", result.stdout)
    assert match, result.stdout
    if records is not None:
        assert int(match.group(1)) == records
    return match.group(2)


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """Every byte of the file is part of a whole, canonical record line."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    records = []
    for line in data.split(b"\n")[:-1]:
        record = json.loads(line)
        assert audit_chain.canonical(record) == line
        records.append(record)
    return records


def request_ids_received(standin: StandIn) -> list[str]:
    ids = []
    for request in list(standin.requests):
        values = request.header_values("x-request-id")
        if values:
            ids.append(values[0])
    return ids


def cancel_in_threads(
    gateway: RunningGateway, standin: StandIn, *, threads: int, per_thread: int,
    prefix: str = "load",
) -> list[int]:
    """`threads` callers at once, each with its own connection; returns the statuses."""
    invocations = [[standin.add_pending() for _ in range(per_thread)] for _ in range(threads)]
    statuses: list[int] = []
    barrier = threading.Barrier(threads)
    lock = threading.Lock()

    def caller(n: int) -> None:
        with httpx.Client(base_url=gateway.base_url, timeout=20.0, trust_env=False) as client:
            barrier.wait()
            for i, invocation in enumerate(invocations[n]):
                response = client.put(
                    f"/api/v1/invocations/{invocation}",
                    headers={"Authorization": f"Bearer {BILLING_KEY}",
                             "x-request-id": f"{prefix}-{n}-{i}"},
                )
                with lock:
                    statuses.append(response.status_code)

    workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    return statuses


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- durability and shape -----------------------------------------------------------------------


def test_attempt_record_is_on_disk_before_the_upstream_request_arrives(
    gateway: RunningGateway, standin: StandIn
) -> None:
    on_disk: dict[str, bool] = {}

    def check_log(request: ReceivedRequest) -> None:
        [request_id] = request.header_values("x-request-id")
        records = [json.loads(line) for line in gateway.audit_path.read_bytes().splitlines()]
        on_disk[request_id] = any(
            r["event"] == "cancel.attempt" and r["request_id"] == request_id for r in records
        )

    standin.behaviour = check_log
    for n in range(5):
        response = gateway.cancel(standin.add_pending(), headers={"x-request-id": f"order-{n}"})
        assert response.status_code == 202
    assert on_disk == {f"order-{n}": True for n in range(5)}


def test_every_audit_field_is_present_with_the_right_type(
    gateway: RunningGateway, standin: StandIn
) -> None:
    invocation = standin.add_pending()
    ok = gateway.cancel(invocation.upper(), headers={"x-request-id": "fields-ok"})
    assert ok.status_code == 202
    unauthenticated = gateway.cancel(invocation, key=None,
                                     headers={"x-request-id": "fields-401"})
    assert unauthenticated.status_code == 401
    bad_id = "x" * 200
    invalid = gateway.cancel(bad_id, headers={"x-request-id": "fields-400"})
    assert invalid.status_code == 400
    gateway.wait_for_records(lambda r: sum(x["event"].startswith("cancel.") for x in r) >= 4)
    records = gateway.cancel_records()
    assert len(records) == 4

    key_id = keys.key_id(keys.stored_form(BILLING_KEY))
    assert re.fullmatch(r"[0-9a-f]{12}", key_id)
    now = datetime.now(UTC)
    for record in records:
        own = ATTEMPT_FIELDS if record["event"] == "cancel.attempt" else RESULT_FIELDS
        assert set(record) == CANCEL_FIELDS | CHAIN_FIELDS | own
        assert TS_RE.fullmatch(record["ts"]), record["ts"]
        moment = datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert abs((now - moment).total_seconds()) < 60
        assert record["client"] == "127.0.0.1"
        assert isinstance(record["duration_ms"], int | float)
        assert not isinstance(record["duration_ms"], bool) and record["duration_ms"] >= 0
        assert isinstance(record["seq"], int) and isinstance(record["prev"], str)

    attempt, result, r401, r400 = records
    assert (attempt["event"], attempt["request_id"], attempt["invocation_id"]) == (
        "cancel.attempt", "fields-ok", invocation)
    assert (attempt["team"], attempt["key_id"], attempt["outcome"]) == (
        "billing", key_id, "pending")
    assert (attempt["status"], attempt["upstream_status"], attempt["error"]) == (
        None, None, None)
    assert (result["event"], result["request_id"], result["outcome"]) == (
        "cancel.result", "fields-ok", "cancelled")
    assert (result["status"], result["upstream_status"], result["error"]) == (202, 202, None)
    assert (result["team"], result["key_id"]) == ("billing", key_id)
    assert (attempt["attempt"], result["attempts"], result["reconciled"]) == (1, 1, False)
    assert (r401["attempts"], r401["reconciled"], r400["attempts"]) == (0, False, 0)
    assert (r401["event"], r401["outcome"], r401["status"], r401["error"]) == (
        "cancel.result", "unauthenticated", 401, "unauthenticated")
    assert (r401["team"], r401["key_id"], r401["upstream_status"]) == (None, None, None)
    assert (r400["outcome"], r400["status"], r400["error"]) == (
        "invalid_request", 400, "invalid_invocation_id")
    assert r400["invocation_id"] == bad_id[:128]
    assert len(request_ids_received(standin)) == 1


def test_64_concurrent_cancels_leave_whole_lines_that_verify(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    # All 64 may be in flight at once: the team's in-flight bound (32 by default) must not
    # turn some into 429s, whose timing would decide the outcome.
    teams = default_teams()
    teams[0]["max_in_flight"] = 64
    gateway = gateway_factory(teams=teams)
    statuses = cancel_in_threads(gateway, standin, threads=64, per_thread=1)
    assert statuses == [202] * 64
    records = gateway.wait_for_records(
        lambda r: sum(x["event"] == "cancel.result" for x in r) >= 64)
    lines = whole_lines(gateway.audit_path)
    assert len(lines) == len(records)
    attempts = {r["request_id"] for r in lines if r["event"] == "cancel.attempt"}
    results = {r["request_id"] for r in lines if r["event"] == "cancel.result"}
    assert attempts == results == {f"load-{n}-0" for n in range(64)}
    assert_verify_ok(gateway.audit_path, records=len(lines))


# -- a full disk --------------------------------------------------------------------------------


def test_full_disk_gives_503_forwards_nothing_and_recovers_by_itself(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    limit = 8192  # bytes any file of the gateway may grow to: a real EFBIG, a real short write

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    gateway = gateway_factory(preexec_fn=small_files)
    refused: list[str] = []
    for n in range(60):
        response = gateway.cancel(standin.add_pending(), headers={"x-request-id": f"fill-{n}"})
        if response.status_code != 202:
            assert response.status_code == 503
            assert response.json()["error"] == "audit_unavailable"
            refused.append(f"fill-{n}")
            break
    assert refused, "the audit log never reached the file size limit"
    for n in range(2):
        response = gateway.cancel(standin.add_pending(), headers={"x-request-id": f"full-{n}"})
        assert response.status_code == 503
        assert response.json()["error"] == "audit_unavailable"
        refused.append(f"full-{n}")
    ready = gateway.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"] == "audit_unavailable"
    assert not set(refused) & set(request_ids_received(standin))  # nothing forwarded
    assert gateway.audit_path.stat().st_size <= limit
    whole_lines(gateway.audit_path)  # the short write was rolled back

    resource.prlimit(gateway.process.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert wait_until(lambda: gateway.client.get("/readyz").status_code == 200, 5)
    response = gateway.cancel(standin.add_pending(), headers={"x-request-id": "after"})
    assert response.status_code == 202
    assert gateway.stop() == 0

    records = whole_lines(gateway.audit_path)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if "request_id" in record:
            by_id.setdefault(record["request_id"], []).append(record)
    for request_id in refused:  # the refusal itself was kept and written after recovery
        [result] = by_id[request_id]
        assert (result["event"], result["status"], result["error"]) == (
            "cancel.result", 503, "audit_unavailable")
    assert [r["event"] for r in by_id["after"]] == ["cancel.attempt", "cancel.result"]
    assert_verify_ok(gateway.audit_path, records=len(records))


# -- lifecycle ----------------------------------------------------------------------------------


def test_sigterm_drains_requests_in_flight_and_records_their_results(
    gateway: RunningGateway, standin: StandIn
) -> None:
    standin.behaviour = lambda r: Delay(1.0) if r.method == "PUT" else None
    answers: dict[int, int] = {}

    def caller(n: int) -> None:
        with httpx.Client(base_url=gateway.base_url, timeout=20.0, trust_env=False) as client:
            response = client.put(
                f"/api/v1/invocations/{invocations[n]}",
                headers={"Authorization": f"Bearer {BILLING_KEY}", "x-request-id": f"drain-{n}"},
            )
            answers[n] = response.status_code

    invocations = [standin.add_pending() for _ in range(5)]
    threads = [threading.Thread(target=caller, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(standin.requests) == 5, 5)  # all five upstream, waiting
    gateway.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(15)
    assert answers == dict.fromkeys(range(5), 202)
    assert gateway.process.wait(15) == 0

    records = whole_lines(gateway.audit_path)
    for n in range(5):
        events = [(r["event"], r["status"]) for r in records if r.get("request_id") == f"drain-{n}"]
        assert events == [("cancel.attempt", None), ("cancel.result", 202)]
    assert_verify_ok(gateway.audit_path)


def test_sigkill_under_load_then_restart_recovers_torn_tail_and_loses_no_attempt(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    gateway = gateway_factory(folder=tmp_path)
    stop = threading.Event()

    def caller(n: int) -> None:
        with httpx.Client(base_url=gateway.base_url, timeout=5.0, trust_env=False) as client:
            i = 0
            while not stop.is_set():
                try:
                    client.put(
                        f"/api/v1/invocations/{standin.add_pending()}",
                        headers={"Authorization": f"Bearer {BILLING_KEY}",
                                 "x-request-id": f"crash-{n}-{i}"},
                    )
                except httpx.HTTPError:
                    return
                i += 1

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(standin.requests) >= 60, 10)
    gateway.process.send_signal(signal.SIGKILL)
    assert gateway.process.wait(5) == -signal.SIGKILL
    stop.set()
    for thread in threads:
        thread.join(10)
    forwarded = set(request_ids_received(standin))

    data = gateway.audit_path.read_bytes()
    if data.endswith(b"\n"):  # the kill did not tear a line: tear one as a crash mid-write would
        torn = b'{"client":"127.0.0.1","duration_ms":0.8,"error":null,"event":"cancel.res'
        with open(gateway.audit_path, "ab") as handle:
            handle.write(torn)
    else:
        torn = data[data.rfind(b"\n") + 1:]

    restarted = gateway_factory(folder=tmp_path)
    # Written at start, not when traffic comes: the torn bytes are already cut from the file.
    records = restarted.wait_for_records(
        lambda r: any(x["event"] == "audit.recovered" for x in r))
    [recovered] = [r for r in records if r["event"] == "audit.recovered"]
    assert recovered["discarded_bytes"] == len(torn)
    assert recovered["prev"] == records[records.index(recovered) - 1]["hash"]
    assert restarted.stop() == 0

    records = whole_lines(restarted.audit_path)
    attempts = {r["request_id"] for r in records if r["event"] == "cancel.attempt"}
    assert len(forwarded) >= 60
    assert forwarded <= attempts  # every request that reached upstream was audited first
    assert_verify_ok(restarted.audit_path, records=len(records))


def test_rotation_under_load_keeps_one_chain_across_files(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    max_bytes = 65536
    gateway = gateway_factory(audit={"max_bytes": max_bytes})
    statuses = cancel_in_threads(gateway, standin, threads=8, per_thread=38)  # 304 cancels
    assert statuses == [202] * 304
    assert gateway.stop() == 0

    rotated = sorted(tmp_path.glob("audit.jsonl.0*"))
    assert len(rotated) >= 3
    chain = [*rotated, gateway.audit_path]
    records = [r for path in chain for r in whole_lines(path)]
    for path in chain:
        assert path.stat().st_size <= max_bytes
    assert sum(r["event"] == "cancel.attempt" for r in records) == 304
    assert sum(r["event"] == "cancel.result" for r in records) == 304
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert_verify_ok(*chain, records=len(records))
    failed = verify_cli(*chain[1:])  # an older file missing: the chain is incomplete
    assert failed.returncode == 1


# -- checkpoints and the stdout mirror ----------------------------------------------------------


def test_checkpoints_every_n_records_go_to_stderr_and_stdout_mirrors_the_file(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    gateway = gateway_factory(audit={"checkpoint_every": 10, "stdout": True})
    for n in range(12):
        assert gateway.cancel(standin.add_pending(),
                              headers={"x-request-id": f"cp-{n}"}).status_code == 202
    gateway.wait_for_records(lambda r: sum(x["event"] == "cancel.result" for x in r) == 12)
    assert gateway.stop() == 0

    records = whole_lines(gateway.audit_path)
    since = 0
    for record in records:
        if record["event"] == "audit.checkpoint":
            assert since == 10 or record is records[-1]  # the last one: written at shutdown
            assert record["head_seq"] == record["seq"] - 1
            assert record["head_hash"] == record["prev"]
            since = 0
        else:
            since += 1
            assert since <= 10
    in_file = {r["seq"]: r["hash"] for r in records if r["event"] == "audit.checkpoint"}
    # audit.chain, audit.opened and 24 cancel records, +1 at shutdown
    assert sorted(in_file) == [11, 22, 29]
    logged = {e["seq"]: e["hash"] for e in gateway.logs() if e.get("event") == "audit.checkpoint"}
    assert logged == in_file

    assert gateway.stdout_path.read_bytes() == gateway.audit_path.read_bytes()

    checkpoint = f"22:{logged[22]}"
    assert_verify_ok(gateway.audit_path, "--checkpoint", checkpoint)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(gateway.audit_path.read_bytes().splitlines(keepends=True)[:21]))
    assert_verify_ok(cut)  # a shorter chain is still a valid chain...
    failed = verify_cli(cut, "--checkpoint", checkpoint)  # ...but not past the checkpoint
    assert failed.returncode == 1
    assert "truncated" in failed.stdout


# -- one writer per chain -----------------------------------------------------------------------


def test_second_gateway_on_the_same_audit_path_exits_1_naming_one_writer_per_chain(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    first = gateway_factory(folder=tmp_path)
    second = gateway_factory(folder=tmp_path, wait_ready=False)
    assert second.process.wait(15) == 1
    assert "one writer per chain" in second.stderr_path.read_text()
    assert first.cancel(standin.add_pending()).status_code == 202  # the first goes on
    first.wait_for_records(lambda r: len(r) == 2)
    assert first.stop() == 0
    assert_verify_ok(first.audit_path)


# -- HMAC ---------------------------------------------------------------------------------------


def test_with_hmac_key_file_every_record_has_a_mac_that_verifies(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    key_file = tmp_path / "audit-hmac.key"
    key_file.write_text(HMAC_KEY + "\n")
    gateway = gateway_factory(audit={"hmac_key_file": str(key_file)})
    for _ in range(3):
        assert gateway.cancel(standin.add_pending()).status_code == 202
    assert gateway.cancel(standin.add_pending(), key=None).status_code == 401
    assert gateway.stop() == 0

    records = whole_lines(gateway.audit_path)
    assert len(records) == 10  # audit.chain, audit.opened, 3 x 2 + 1, the shutdown checkpoint
    for record in records:
        assert re.fullmatch(r"[0-9a-f]{64}", record["mac"])
        encoded = audit_chain.canonical(audit_chain.body_of(record))
        assert audit_chain.mac_matches(HMAC_KEY.encode(), encoded, record["mac"])
    assert_verify_ok(gateway.audit_path, "--hmac-key-file", key_file, records=10)
    wrong = tmp_path / "wrong.key"
    wrong.write_text("w" * 40)
    failed = verify_cli(gateway.audit_path, "--hmac-key-file", wrong)
    assert failed.returncode == 1 and "bad mac" in failed.stdout


def test_missing_hmac_key_file_gives_503_forwards_nothing_and_recovers_when_it_appears(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    key_file = tmp_path / "audit-hmac.key"
    gateway = gateway_factory(audit={"hmac_key_file": str(key_file)})
    ready = gateway.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"] == "audit_unavailable"
    for n in range(2):
        response = gateway.cancel(standin.add_pending(), headers={"x-request-id": f"nokey-{n}"})
        assert response.status_code == 503
        assert response.json()["error"] == "audit_unavailable"
    assert standin.requests == []
    assert gateway.client.get("/readyz").status_code == 503

    key_file.write_text(HMAC_KEY)
    assert wait_until(lambda: gateway.client.get("/readyz").status_code == 200, 5)
    response = gateway.cancel(standin.add_pending(), headers={"x-request-id": "withkey"})
    assert response.status_code == 202
    assert gateway.stop() == 0

    records = whole_lines(gateway.audit_path)
    assert all("mac" in r for r in records)
    results = {r["request_id"]: r for r in records if r["event"] == "cancel.result"}
    assert results["nokey-0"]["error"] == results["nokey-1"]["error"] == "audit_unavailable"
    assert results["withkey"]["status"] == 202
    assert_verify_ok(gateway.audit_path, "--hmac-key-file", key_file, records=len(records))
