"""A real S3-compatible server (moto's standalone server) on loopback, and a TCP proxy in
front of it that can refuse or stall connections ("the store is down") without losing the
server's state."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint or self.endpoint}

    def client(self):  # type: ignore[no-untyped-def]
        import boto3  # moto's own dependency: used here only to set buckets up and look

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def locked_bucket(self, name: str) -> None:
        """A bucket with S3 Object Lock, compliance mode, one day by default."""
        s3 = self.client()
        s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        s3 = self.client()
        out: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **CREDENTIALS})
    try:
        _wait_port(port)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(10)


class Proxy:
    """Forwards loopback connections to `target`; `down()` refuses them, `stall()` accepts
    and holds them (a request in flight that never gets an answer), `up()` forwards again."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self.mode = "up"
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._open: list[socket.socket] = []  # forwarded connections, both ends
        self._listen()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if self.mode == "stall":
                self._held.append(conn)
                continue
            threading.Thread(target=self._pipe_pair, args=(conn,), daemon=True).start()

    def _pipe_pair(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            conn.close()
            return
        self._open += [conn, upstream]
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._copy, args=(a, b), daemon=True).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self.mode = "down"
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in self._open:  # kept-alive connections go down with the server too
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    @property
    def held(self) -> list[socket.socket]:
        return self._held

    def stall(self) -> None:
        self.mode = "stall"

    def up(self) -> None:
        for conn in self._held:
            conn.close()
        self._held.clear()
        self.mode = "up"
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.down()
        for conn in self._held:
            conn.close()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[Proxy]:
    target = int(s3_server.endpoint.rsplit(":", 1)[1])
    running = Proxy(target)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket with Object Lock (compliance) for each test."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"audit-{stem}-{os.urandom(3).hex()}"
    s3_server.locked_bucket(name)
    return name
