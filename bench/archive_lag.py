"""Archive lag under load: how far `audit.archive` falls behind, and how fast it catches up.

    python -m bench.archive_lag [--seconds 10] [--connections 32] [--s3]

The stand-in, a gateway configured as `bench.run`'s default (fsync on, HMAC, issuers, metrics
listener) plus `audit.archive` (a folder, or with --s3 moto's S3 server on loopback with an
Object Lock bucket), and the load generator at N connections for the given time. Every 0.25 s
`chroma_sync_gateway_audit_archive_lag_records` is scraped; printed: req/s, the lag's
maximum and mean under load, the seconds after the load until it is below one checkpoint
interval, the uploads by result, and the RSS of the gateway and of its archive process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import loadgen, procs
from tests.harness import free_port

LAG = "chroma_sync_gateway_audit_archive_lag_records{}"


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--s3", action="store_true")
    parser.add_argument("--none", action="store_true",
                        help="no archive: the same load, for the gateway's RSS without it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="archive-lag-"))
    env: dict[str, str] = {}
    moto = None
    if args.s3:
        port = free_port()
        env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                                 "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, **env})
        time.sleep(2.5)
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")  # noqa: S106 (moto on loopback)
        s3.create_bucket(Bucket="bench-audit", ObjectLockEnabledForBucket=True)
        s3.put_object_lock_configuration(Bucket="bench-audit", ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
        archive = "s3://bench-audit/fleet"
    else:
        archive = f"file://{work}/archive"
    if args.none:
        archive = False  # type: ignore[assignment]
    try:
        with procs.standin_process(args.seconds + 120) as standin, procs.gateway_process(
                work / "gw", standin.base_url, fsync=True, transport="native", everything=True,
                archive=archive, env=env) as gateway:
            metrics_port = gateway.metrics_port  # type: ignore[attr-defined]
            samples: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    samples.append(procs.scrape(metrics_port).get(LAG, 0.0))
                    time.sleep(0.25)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            requests = procs.gateway_requests(gateway.port, procs.invocation_ids(256))
            result = asyncio.run(loadgen.run_load(
                gateway.port, requests, connections=args.connections, warmup=200,
                count=10**9, seconds=args.seconds))
            stop.set()
            sampler.join()
            ended = time.monotonic()
            while procs.scrape(metrics_port).get(LAG, 0.0) >= 1000:
                if time.monotonic() - ended > 60:
                    break
                time.sleep(0.05)
            caught_up = time.monotonic() - ended
            final = procs.scrape(metrics_port)
            uploads = {k: v for k, v in final.items() if "archive_uploads_total" in k}
            worker = next(iter(_children(gateway.process.pid)), None)
            if archive:
                print(f"archive {archive.split(':')[0]}, {args.connections} connections, "
                      f"{args.seconds:.0f} s: {result.rps:.0f} req/s")
            if not archive:
                print(f"no archive, {args.connections} connections: {result.rps:.0f} req/s; "
                      f"RSS after load: gateway {procs.rss_mib(gateway.process.pid):.1f} MiB")
                return
            print(f"lag under load: max {max(samples):.0f} records, mean "
                  f"{sum(samples) / len(samples):.0f} ({len(samples)} samples)")
            print(f"after the load: below one checkpoint interval (1000) in {caught_up:.2f} s; "
                  f"lag now {final.get(LAG, 0):.0f}")
            print(f"uploads: {uploads}")
            print(f"RSS after load: gateway {procs.rss_mib(gateway.process.pid):.1f} MiB, "
                  f"archive process {procs.rss_mib(worker) if worker else float('nan'):.1f} MiB")
    finally:
        if moto is not None:
            moto.terminate()


if __name__ == "__main__":
    main()
