"""The latency a retry adds: cancels answered 202 at once vs. after one 503 (then 202).

    python -m bench.retry_latency [-n 200]

Loopback only, bounded (n cancels of each kind, one connection). Prints p50/p90 of both and
the difference, which is the backoff (uniform in [0, 0.1) s before the first retry, so about
50 ms at p50) plus the second PUT's exchange and attempt record.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from gateway.demo.standin import Respond, StandIn
from tests.harness import BILLING_KEY, UPSTREAM_TOKEN, free_port, start_gateway, write_config

UNAVAILABLE = Respond(503, b"maintenance", (("content-type", "text/plain"),))


def quantiles_ms(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=10)
    return statistics.median(samples) * 1000, cuts[8] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="cancels of each kind (default 200)")
    args = parser.parse_args(argv)
    standin = StandIn(token=UPSTREAM_TOKEN)
    with tempfile.TemporaryDirectory() as folder, standin.run_in_thread():
        port = free_port()
        config = write_config(Path(folder), upstream_url=standin.base_url, port=port,
                              upstream={"breaker_failures": 1_000_000})
        gateway = start_gateway(config, port=port)
        try:
            with httpx.Client(base_url=gateway.base_url, trust_env=False,
                              headers={"Authorization": f"Bearer {BILLING_KEY}"}) as client:
                timings: dict[str, list[float]] = {"first try": [], "one retry": []}
                for i in range(args.n * 2):
                    kind = "one retry" if i % 2 else "first try"
                    invocation = standin.add_pending()
                    if kind == "one retry":
                        standin.script(invocation, [UNAVAILABLE])
                    started = time.perf_counter()
                    response = client.put(f"/api/v1/invocations/{invocation}")
                    timings[kind].append(time.perf_counter() - started)
                    assert response.status_code == 202, response.text
        finally:
            gateway.stop()
    base_p50, base_p90 = quantiles_ms(timings["first try"])
    retry_p50, retry_p90 = quantiles_ms(timings["one retry"])
    print(f"{'cancel':<12} {'n':>5} {'p50 ms':>8} {'p90 ms':>8}")
    print(f"{'first try':<12} {args.n:>5} {base_p50:>8.2f} {base_p90:>8.2f}")
    print(f"{'one retry':<12} {args.n:>5} {retry_p50:>8.2f} {retry_p90:>8.2f}")
    print(f"added by one retry: p50 {retry_p50 - base_p50:.2f} ms, "
          f"p90 {retry_p90 - base_p90:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
