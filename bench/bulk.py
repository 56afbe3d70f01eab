"""Wall time of a bulk cancel of 1,000 invocations (a benchmark, not a test).

    python -m bench.bulk [--invocations 1000] [--runs 3] [--concurrency 4]

Starts the stand-in (in a thread) and the gateway (a subprocess, `audit.fsync = true`) on
loopback, seeds a source with `--invocations` pending invocations for each run, sends one
`POST /gateway/v1/bulk-cancel` and prints the wall time: listing and cancelling together.
Everything stops by itself; each request is bounded by a 300 s timeout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from gateway.demo.standin import StandIn
from tests.harness import (
    BILLING_KEY,
    UPSTREAM_TOKEN,
    free_port,
    start_gateway,
    write_config,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    walls: list[float] = []
    standin = StandIn(token=UPSTREAM_TOKEN, max_recorded=100)
    with standin.run_in_thread(), tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = write_config(Path(tmp), upstream_url=standin.base_url, port=port)
        config.write_text(config.read_text() + f"\n[bulk]\nconcurrency = {args.concurrency}\n")
        gateway = start_gateway(config, port=port)
        try:
            with httpx.Client(base_url=gateway.base_url, trust_env=False, timeout=300) as client:
                for run in range(args.runs):
                    source = str(uuid.uuid4())
                    for _ in range(args.invocations):
                        standin.add_invocation(state="pending", source_id=source)
                    started = time.perf_counter()
                    response = client.post(
                        "/gateway/v1/bulk-cancel", json={"source_id": source,
                                                         "limit": args.invocations},
                        headers={"authorization": f"Bearer {BILLING_KEY}"})
                    wall = time.perf_counter() - started
                    answer = response.json()
                    if response.status_code != 200 or answer["counts"] != {
                            "cancelled": args.invocations}:
                        print(f"run {run + 1}: unexpected answer {response.status_code} "
                              f"{answer.get('counts', answer)}", file=sys.stderr)
                        return 1
                    walls.append(wall)
                    print(f"run {run + 1}: {args.invocations} cancelled in {wall:.2f} s "
                          f"({args.invocations / wall:.0f}/s, "
                          f"{wall * 1000 / args.invocations:.2f} ms each)")
        finally:
            gateway.stop()
    print(f"median of {len(walls)}: {statistics.median(walls):.2f} s for {args.invocations} "
          f"invocations, bulk.concurrency {args.concurrency}, fsync on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
