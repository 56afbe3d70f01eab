"""A real gateway archiving its chain: to S3 (a real S3 API on loopback, Object Lock) through a
proxy that takes the store away, and to a folder with `audit.keep_files`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.audit.archive import location

# The gateway archives chains (records with `chain`, issue 18's signed audit): these run once
# that is in the tree.
pytest.importorskip("gateway.audit.chain_tree")
from gateway.demo.standin import StandIn
from tests.audit.archive.conftest import Proxy, S3Server
from tests.conftest import GatewayFactory
from tests.harness import RunningGateway, free_port, wait_for


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cancels(gateway: RunningGateway, standin: StandIn, count: int) -> None:
    for _ in range(count):
        assert gateway.cancel(standin.add_pending()).status_code == 202


def verify_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def chain_of(gateway: RunningGateway) -> str:
    first = json.loads(gateway.audit_path.read_bytes().splitlines()[0])
    chain: str = first["chain"]
    return chain


def test_the_gateway_keeps_serving_while_the_store_is_down_then_the_archive_catches_up(
        gateway_factory: GatewayFactory, standin: StandIn, s3_server: S3Server, proxy: Proxy,
        bucket: str) -> None:
    metrics_port = free_port()
    gateway = gateway_factory(
        audit={"checkpoint_every": 20, "archive": f"s3://{bucket}/fleet"},
        server={"metrics_port": metrics_port}, env=s3_server.env(proxy.endpoint))
    chain = chain_of(gateway)
    cancels(gateway, standin, 15)  # 30 records: one checkpoint
    assert wait_for(lambda: metric(metrics_port, "chroma_sync_gateway_audit_archive_lag_records")
                    < 20, timeout=15)
    proxy.down()
    cancels(gateway, standin, 40)  # every cancel still answered at once
    assert wait_for(lambda: metric(
        metrics_port, 'chroma_sync_gateway_audit_archive_uploads_total{result="failure"}') >= 1,
        timeout=15)
    lag = metric(metrics_port, "chroma_sync_gateway_audit_archive_lag_records")
    assert lag >= 60
    assert httpx.get(f"{gateway.base_url}/readyz", timeout=5).status_code == 200
    proxy.up()
    assert wait_for(lambda: metric(metrics_port, "chroma_sync_gateway_audit_archive_lag_records")
                    < 20, timeout=40)
    assert gateway.stop() == 0  # the shutdown checkpoint's segment goes too
    archived = s3_server.objects(bucket, f"fleet/{chain}/")
    segments = sorted(name for name in archived if name.endswith(".jsonl"))
    local = gateway.audit_path.read_bytes()
    assert b"".join(archived[name] for name in segments) == local
    env = s3_server.env()
    done = verify_cli(f"s3://{bucket}/fleet", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    records = local.count(b"\n")
    assert re.fullmatch(rf"chain {chain} \(\S+\): ok: {records} records, seq 1\.\.{records}, "
                        r"head [0-9a-f]{64}.*\n", done.stdout)


def test_keep_files_keeps_rotated_files_until_their_records_are_archived(
        gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path) -> None:
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the archive folder should be\n")
    gateway = gateway_factory(audit={
        "checkpoint_every": 10, "max_bytes": 65536, "keep_files": 1,
        "archive": f"file://{tmp_path}/archive/fleet"})
    for _ in range(8):
        cancels(gateway, standin, 25)
    rotated = sorted(tmp_path.glob("audit.jsonl.0*"))
    assert len(rotated) >= 3  # more than keep_files: all kept, nothing archived
    assert not any(r["event"] == "audit.deleted" for r in gateway.audit_records())
    assert any(entry.get("event") == "audit.retention_held" for entry in gateway.logs())
    blocker.unlink()
    assert wait_for(lambda: len(sorted(tmp_path.glob("audit.jsonl.0*"))) <= 1, timeout=40)
    deleted = [r for r in gateway.audit_records() if r["event"] == "audit.deleted"]
    assert deleted
    archive = tmp_path / "archive" / "fleet"
    done = verify_cli(f"file://{archive}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_name_taken_by_other_bytes_is_never_overwritten_and_an_error_is_logged(
        gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    metrics_port = free_port()
    gateway = gateway_factory(audit={"checkpoint_every": 10, "archive": f"file://{archive}"},
                              server={"metrics_port": metrics_port})
    chain = chain_of(gateway)
    # The first segment ends at the first checkpoint: take its name before the gateway does.
    gateway.stop()
    records = [json.loads(line) for line in gateway.audit_path.read_bytes().splitlines()]
    first_checkpoint = next(r["seq"] for r in records if r["event"] == "audit.checkpoint")
    for path in archive.rglob("*"):
        if path.is_file():
            path.chmod(0o600)
            path.unlink()
    taken = archive / location.segment_name(chain, 1, first_checkpoint)
    taken.parent.mkdir(parents=True, exist_ok=True)
    taken.write_bytes(b'{"someone":"else"}\n')
    gateway = gateway_factory(audit={"checkpoint_every": 10, "archive": f"file://{archive}"},
                              server={"metrics_port": metrics_port})
    cancels(gateway, standin, 10)
    assert wait_for(lambda: metric(
        metrics_port, 'chroma_sync_gateway_audit_archive_uploads_total{result="conflict"}') >= 1,
        timeout=15)
    assert any(entry.get("event") == "audit.archive_conflict" for entry in gateway.logs())
    assert taken.read_bytes() == b'{"someone":"else"}\n'
    assert gateway.stop(signal.SIGTERM) == 0


