"""Per-component costs of one gateway request, measured in isolation (companion to bench.run).

    python -m bench.micro [--quick]

Times, in this process on the event loop the gateway uses (uvloop when installed), the pieces
a successful cancel goes through, each repeated a fixed number of times, and prints
microseconds per request (per call x calls per request). The upstream-client figures are
round trips to the stand-in (its own process), so subtract the raw-socket line to get each
client's own overhead. Nothing here is a test; the figures guide optimisation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import loadgen, procs


def per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(200, n)):
        fn()
    best = float("inf")
    for _ in range(3):  # best of 3 batches: least disturbed by the other processes
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


async def per_await_us(
    fn: Callable[[], Awaitable[object]], n: int,
) -> tuple[float, float, float]:
    """(median wall, mean wall, mean CPU of this process) microseconds of sequential awaits."""
    for _ in range(min(100, n)):
        await fn()
    times = []
    cpu = time.process_time()
    for _ in range(n):
        started = time.perf_counter_ns()
        await fn()
        times.append((time.perf_counter_ns() - started) / 1e3)
    cpu = (time.process_time() - cpu) / n * 1e6
    return statistics.median(times), statistics.fmean(times), cpu


def cpu_components(n: int, folder: Path) -> list[tuple[str, float, str]]:
    """(name, microseconds per request, note) of the in-process CPU work."""
    from gateway.access import keys
    from gateway.access.auth import TeamKeyAuthenticator
    from gateway.audit import chain as audit_chain
    from gateway.cancel.cancellation import Cancellation, cancel_record
    from gateway.config.model import TeamConfig
    from gateway.server.router import framing_problem, pick_request_id
    from gateway.telemetry import logs
    from gateway.telemetry.metrics import Metrics
    from gateway.upstream import mapping
    from gateway.upstream.client import UpstreamAnswer

    key = keys.new_key()
    team = TeamConfig("bench", (keys.stored_form(key),), rate_limit=1e9, burst=10**9)
    headers = [(b"host", b"127.0.0.1:8080"), (b"authorization", b"Bearer " + key.encode()),
               (b"content-length", b"0")]
    auth = TeamKeyAuthenticator([team])
    principal = auth.authenticate(headers)
    cancel = Cancellation(request_id=pick_request_id(headers),
                          invocation_id="0b8f1d6e-5a3c-4e2b-9f7a-1c2d3e4f5a6b",
                          client="127.0.0.1", started=time.perf_counter(), principal=principal,
                          upstream_status=202, forwarded=True, tries=1, attempts=1)

    def record(event: str = "cancel.result") -> dict[str, Any]:
        return cancel_record(event, cancel, outcome="cancelled", status=202, error=None)

    body = record()
    results: list[tuple[str, float, str]] = []
    results.append(("request id (uuid4)", per_call_us(lambda: pick_request_id(headers), n),
                    "1 call"))
    results.append(("framing check", per_call_us(lambda: framing_problem(headers), n), "1 call"))
    results.append(("authenticate (sha256 + compare)",
                    per_call_us(lambda: auth.authenticate(headers), n), "1 call"))
    results.append(("build audit records (x2, incl. utc_timestamp)",
                    2 * per_call_us(record, n), "2 calls"))
    results.append(("seal audit records (x2: json x2 + sha256 + HMAC each)",
                    2 * per_call_us(lambda: audit_chain.seal(
                        body, seq=12345, prev="0" * 64, mac_key=b"k" * 64), n), "2 calls"))

    metrics = Metrics()

    def observe() -> None:
        metrics.request_seconds.labels("/api/v1/invocations/{invocation_id}").observe(0.001)
        metrics.upstream_seconds.observe(0.0005)
        metrics.upstream_responses.labels("202").inc()
        metrics.cancels.labels("cancelled", "bench").inc()
        metrics.key_requests.labels("bench", "k_0123456789").inc()

    # Gauges are set when /metrics is scraped, not per request.
    results.append(("metrics (2 observe, 3 inc)", per_call_us(observe, n), "1 set"))

    import httpx

    answer = UpstreamAnswer(202, httpx.Headers({"content-type": "application/json"}), b"{}",
                            0.001)
    results.append(("map upstream 202 (mapping.interpret)",
                    per_call_us(lambda: mapping.interpret(answer, secrets=("t" * 40,)), n),
                    "1 call"))
    from gateway.config.model import UpstreamConfig
    from gateway.upstream.client import USER_AGENT, UpstreamClient

    config = UpstreamConfig(base_url="http://127.0.0.1:9", token_env="UNUSED")  # noqa: S106
    client = UpstreamClient(config)
    invocation = "0b8f1d6e-5a3c-4e2b-9f7a-1c2d3e4f5a6b"
    outgoing = [("x-chroma-token", "t" * 40), ("x-request-id", "r" * 36),
                ("accept", "application/json"), ("user-agent", USER_AGENT)]
    results.append(("build httpx.Request, URL made as UpstreamClient does", per_call_us(
        lambda: httpx.Request("PUT", client._url(invocation), headers=outgoing), n), "1 call"))
    parse_us = per_call_us(lambda: httpx.URL(client.url_for(invocation)), n)
    print(f"  ({parse_us:6.1f} us  parsing the URL string instead, not counted)")

    # The access log exactly as `serve` configures it (JSON lines); main() has pointed
    # stderr at a file in the work folder, which stays open to the end.
    logs.configure(json_output=True)
    import structlog

    log = structlog.get_logger("gateway")
    results.append(("access log line (structlog JSON + write)", per_call_us(
        lambda: log.info("access", request_id=cancel.request_id, method="PUT",
                         route="/api/v1/invocations/{invocation_id}", status=202,
                         duration_ms=1.234, team="bench"), n), "1 call"))
    return results


async def audit_roundtrips(n: int, folder: Path) -> list[tuple[str, float, float, float]]:
    """(name, median, mean, CPU us) of one awaited AuditLog.write, as the gateway does it."""
    from gateway.audit.writer import AuditLog
    from gateway.config.model import AuditConfig

    body = {"ts": "2026-01-01T00:00:00.000Z", "event": "cancel.attempt", "request_id": "r" * 36,
            "invocation_id": "0b8f1d6e-5a3c-4e2b-9f7a-1c2d3e4f5a6b", "team": "bench",
            "key_id": "abcdefabcdef", "client": "127.0.0.1", "outcome": "pending",
            "status": None, "upstream_status": None, "error": None, "duration_ms": 0.1}
    out = []
    for fsync in (False, True):
        log = AuditLog(AuditConfig(path=str(folder / f"audit-{fsync}.jsonl"), fsync=fsync,
                                   checkpoint_every=10**9, checkpoint_seconds=3600))
        await log.start()
        try:
            figures = await per_await_us(lambda log=log: log.write(dict(body)), n)
        finally:
            await log.close()
        out.append((f"AuditLog.write awaited, fsync={'true' if fsync else 'false'}", *figures))
    # The same bytes written inline on the loop thread (no executor hop), for comparison.
    fd = os.open(folder / "inline.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = b"x" * 380 + b"\n"

    async def inline(sync: bool) -> None:
        os.write(fd, line)
        if sync:
            os.fdatasync(fd)  # as the audit writer syncs an append

    for sync in (False, True):
        figures = await per_await_us(lambda sync=sync: inline(sync), n)
        out.append((f"inline os.write{' + os.fdatasync' if sync else ''} (no thread hop)",
                    *figures))
    os.close(fd)
    return out


async def upstream_roundtrips(port: int, n: int) -> list[tuple[str, float, float, float]]:
    """(name, median, mean, CPU us) of one cancel to the stand-in by each client stack."""
    import aiohttp

    from gateway.config.model import UpstreamConfig
    from gateway.upstream.client import UpstreamClient

    ids = procs.invocation_ids(64)
    url = f"http://127.0.0.1:{port}"
    out = []
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(loadgen._Conn, "127.0.0.1", port)
    requests = procs.direct_requests(port, ids)
    index = 0

    async def raw() -> None:
        nonlocal index
        waiter = loop.create_future()
        conn.waiter = waiter
        conn.transport.write(requests[index % len(requests)])  # type: ignore[union-attr]
        index += 1
        await waiter

    out.append(("raw socket (bench load generator)", *await per_await_us(raw, n)))
    conn.transport.close()  # type: ignore[union-attr]

    async with aiohttp.ClientSession(skip_auto_headers=("Accept-Encoding",),
                                     auto_decompress=False) as session:
        async def plain_aiohttp() -> None:
            nonlocal index
            index += 1
            async with session.put(
                f"{url}/api/v1/invocations/{ids[index % len(ids)]}",
                headers={"x-chroma-token": procs.UPSTREAM_TOKEN, "x-request-id": "r" * 36,
                         "accept": "application/json"},
            ) as response:
                await response.read()

        out.append(("aiohttp ClientSession alone", *await per_await_us(plain_aiohttp, n)))

    for transport in ("native", "aiohttp", "httpx"):
        config = UpstreamConfig(base_url=url, token_env="UNUSED")  # noqa: S106
        client = UpstreamClient(config, transport=transport)  # type: ignore[arg-type]

        async def gateway_client(client: UpstreamClient = client) -> None:
            nonlocal index
            index += 1
            answer = await client.cancel(ids[index % len(ids)], token=procs.UPSTREAM_TOKEN,
                                         request_id="r" * 36)
            assert answer.status == 202, answer.status

        label = {"native": "gateway UpstreamClient, httpx over gateway.transport (native)",
                 "aiohttp": "gateway UpstreamClient, httpx over aiohttp",
                 "httpx": "gateway UpstreamClient, httpx's own transport (httpcore)"}[transport]
        out.append((label, *await per_await_us(gateway_client, n)))
        await client.aclose()
    return out


def bare_server_floor(n: int) -> tuple[float, float]:
    """(p50 wall us, server CPU us per request) of `bench.bare_server` at 1 connection."""
    import subprocess

    from tests.harness import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_server", "--port", str(port), "--max-seconds", "120"])
    try:
        import socket

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        requests = procs.gateway_requests(port, procs.invocation_ids(16))
        marks: dict[str, float | None] = {}
        result = loadgen.run(loadgen.run_load(
            port, requests, connections=1, warmup=200, count=n, seconds=10.0,
            between=lambda: marks.update(cpu=procs.cpu_seconds(process.pid))))
        after = procs.cpu_seconds(process.pid)
        before = marks.get("cpu")
        cpu = (after - before) * 1e6 / result.requests if after and before is not None else 0.0
        return result.percentile_ms(50) * 1000, cpu
    finally:
        procs.stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n_cpu, n_io = (500, 200) if args.quick else (5000, 2000)
    saved_stderr = sys.stderr
    with tempfile.TemporaryDirectory(prefix="csg-micro-") as tmp, \
            open(Path(tmp) / "stderr.log", "w") as sink:
        folder = Path(tmp)
        sys.stderr = sink  # the gateway's logs (as `serve` configures them) go here
        print("in-process CPU work per request (best of 3 batches):")
        total = 0.0
        for name, us, note in cpu_components(n_cpu, folder):
            total += us
            print(f"  {us:8.1f} us  {name} [{note}]")
        print(f"  {total:8.1f} us  total of the above")
        print("\naudit write, awaited one at a time (wall median / wall mean / CPU of this "
              "process, us):")
        for name, median, mean, cpu in loadgen.run(audit_roundtrips(n_io, folder)):
            print(f"  {median:8.1f} / {mean:8.1f} / {cpu:7.1f} us  {name}")
        with procs.standin_process(max_seconds=300) as standin:
            print("\nupstream round trip to the stand-in, one at a time (wall median / wall mean"
                  " / CPU of this process, us):")
            for name, median, mean, cpu in loadgen.run(
                    upstream_roundtrips(standin.port, n_io)):
                print(f"  {median:8.1f} / {mean:8.1f} / {cpu:7.1f} us  {name}")
        print("\ninbound floor: bare uvicorn + httptools + uvloop app answering 202, 1 "
              "connection:")
        median, cpu = bare_server_floor(n_io)
        print(f"  {median:8.1f} us wall median, {cpu:7.1f} us server CPU per request")
        sys.stderr = saved_stderr
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
