"""Secret files under a running gateway: FIFOs, in-place rewrites, failed reads (issue 9)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx

from gateway.demo.standin import StandIn
from tests.harness import BILLING_KEY, UPSTREAM_TOKEN
from tests.server.test_app_e2e import GatewayFactory, wait_until


def test_a_fifo_at_token_file_never_blocks_healthz(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    gateway = gateway_factory()
    token = tmp_path / "token"
    token.unlink()
    os.mkfifo(token)  # a blocking open of this on the event loop would hang every request
    time.sleep(1.5)  # several polls
    for _ in range(5):
        assert gateway.client.get("/healthz", timeout=1.0).status_code == 200
    wait_until(lambda: gateway.client.get("/readyz").status_code == 503, timeout=3.0)
    assert "not a regular file" in gateway.client.get("/readyz").json()["message"]


def test_a_token_rewritten_in_place_in_two_chunks_is_never_used_half_written(
    gateway_factory: GatewayFactory, standin: StandIn, tmp_path: Path
) -> None:
    new_token = "chroma-new-token-0123456789abcdef0123"
    gateway = gateway_factory()
    stop = threading.Event()
    sent: list[int] = []

    def cancel_in_a_loop() -> None:
        with httpx.Client(base_url=gateway.base_url, timeout=5.0) as client:
            while not stop.is_set():
                invocation = standin.add_pending()
                response = client.put(f"/api/v1/invocations/{invocation}",
                                      headers={"authorization": f"Bearer {BILLING_KEY}"})
                sent.append(response.status_code)

    worker = threading.Thread(target=cancel_in_a_loop)
    worker.start()
    try:
        with open(tmp_path / "token", "r+b") as handle:  # rewritten in place, two writes
            handle.truncate(0)
            handle.write(new_token[:12].encode())
            handle.flush()
            time.sleep(0.7)  # more than a poll: the half-written token is seen
            handle.write(new_token[12:].encode())
        standin.token = new_token
        wait_until(lambda: standin.requests[-1].header_values("x-chroma-token") == [new_token],
                   timeout=3.0)
    finally:
        stop.set()
        worker.join(10)
    used = {tuple(r.header_values("x-chroma-token")) for r in standin.requests}
    assert used <= {(UPSTREAM_TOKEN,), (new_token,)}, "a half-written token went upstream"
    assert len(sent) > 10
