"""Fleet verify and query over many records, against `sha256sum` of the same files.

    python -m bench.audit_fleet [--records 1000000] [--chains 4] [--folder DIR]

Writes `--chains` chains of 0.3-shaped records (cancel results, a checkpoint every 1000) in
`--folder`, one file per chain, then times, each as its own process: `sha256sum` of the
files, `audit verify DIR` with --jobs 1 and 2, the same files shipped as CRI lines in one
shuffled-by-chain file, and `audit query DIR --team ... --format csv`.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.audit import chain as audit_chain


def write_chain(path: Path, records: int, team: str) -> None:
    chain = secrets.token_hex(16)
    seq, head = 0, audit_chain.GENESIS
    with open(path, "wb", buffering=1 << 20) as out:
        def append(body: dict[str, object]) -> None:
            nonlocal seq, head
            record, line = audit_chain.seal({**body, "chain": chain}, seq=seq + 1, prev=head,
                                            mac_key=None)
            seq, head = record["seq"], record["hash"]
            out.write(line)

        append({"ts": "2026-11-28T12:00:00.000Z", "event": "audit.chain", "instance": path.stem,
                "origin": f"chroma-sync-gateway/{chain}", "version": "0.3.0",
                "public_key": None, "previous": None})
        while seq < records:
            n = seq + 1
            if n % 1000 == 0:
                append({"ts": _ts(n), "event": "audit.checkpoint", "head_seq": seq,
                        "head_hash": head})
                continue
            append({"ts": _ts(n), "event": "cancel.result", "request_id": f"req-{n:012d}",
                    "invocation_id": f"{n:08x}-0000-4000-8000-{n:012x}", "team": team,
                    "key_id": "0123456789ab", "client": "10.0.0.7", "outcome": "cancelled",
                    "status": 200, "upstream_status": 200, "error": None,
                    "duration_ms": 1.234, "database": "db", "collection": "coll",
                    "source_id": None, "attempts": 1, "reconciled": False})


def _ts(n: int) -> str:
    return (f"2026-11-28T{12 + n // 3_600_000:02d}:{n // 60_000 % 60:02d}:"
            f"{n // 1000 % 60:02d}.{n % 1000:03d}Z")


def timed(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds and peak RSS (MiB) of one child process, and its exit status."""
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if done.returncode not in (0,):
        print(done.stderr.decode()[-500:], file=sys.stderr)
    return wall, peak, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--folder")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="audit-fleet-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.glob("pod-*.jsonl"))
    if len(files) != args.chains:
        started = time.perf_counter()
        for n in range(args.chains):
            write_chain(folder / f"pod-{n}.jsonl", args.records // args.chains, f"team-{n}")
        print(f"wrote {args.records} records in {time.perf_counter() - started:.1f} s")
        files = sorted(folder.glob("pod-*.jsonl"))
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"{args.records} records, {args.chains} chains, {size:.0f} MiB in {folder}")
    gateway = [sys.executable, "-m", "gateway", "audit"]
    runs = {
        "sha256sum": ["sha256sum", *map(str, files)],
        "verify --jobs 1": [*gateway, "verify", str(folder)],
        "verify --jobs 2": [*gateway, "verify", str(folder), "--jobs", "2"],
        "query --team team-1 --format csv": [*gateway, "query", str(folder), "--team",
                                             "team-1", "--format", "csv"],
    }
    for name, argv in runs.items():
        wall, peak, code = timed(argv)
        print(f"{name:34s} {wall:7.2f} s  (exit {code}, peak RSS of the children so far "
              f"{peak:.0f} MiB)")
    os.sync()


if __name__ == "__main__":
    main()
