"""The auditors' tools on one big chain, each next to `sha256sum` of the same file.

    python -m bench.auditors [--records 1000000] [--folder DIR] [--json PATH] [--python PY]

Writes (once per folder) one chain the way the gateway's writer seals it (`ChainHead` with a
`ChainKeeper`): `--records` cancel results with MACs and a signed checkpoint every 1,000, then
times each tool as its own process, one core, the file in the page cache:

- `sha256sum` of the file: the reference (reading and hashing the bytes once);
- `audit verify` with the HMAC key and the public key: every check;
- the same with the file on stdin, which takes the general way (what archives, gzip files and
  container logs take: spilled per chain, put in order, then checked);
- `audit query --team ... --format csv`;
- `audit prove` of a record in the middle, from the file alone, making a proof index
  (`--index`: what a first proof costs), and with the index.

The package's bytecode is compiled first, as an install leaves it: a command that compiled
every module it imports would time the compiler (~15 ms of a proof with the index). For the
same reason the tools start as the installed `chroma-sync-gateway` script starts them (not
through `python -m`), and `scripts/bench` runs them with the interpreter it runs the gateways
with (only `requirements.lock` installed, this tree's package on its path): a development
venv's editable-install finder and its tools' .pth files add ~10 ms to every start. A tool
that takes under a second (a proof from the index) is run 7 times and its median printed.

It prints seconds, the ratio to `sha256sum`, and peak RSS for each.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gateway
from gateway.audit.head import ChainHead
from gateway.audit.signed_chain import ChainKeeper
from gateway.audit.signing import SigningKeySource, write_new_key

MAC_KEY = b"bench-auditors-hmac-key-0123456789abcdef"
CONSOLE_SCRIPT = "import sys; from gateway.cli.main import main; sys.exit(main())"
SHORT_SECONDS, SHORT_REPEATS = 1.0, 7  # a tool this fast is timed 7 times: the median
MAKING_INDEX = "audit prove SEQ (making the index)"  # once: a second run would find it made
CHECKPOINT_EVERY = 1000


def cancel_body(n: int, team: str) -> dict[str, object]:
    ts = (f"2026-11-28T{12 + n // 3_600_000:02d}:{n // 60_000 % 60:02d}:"
          f"{n // 1000 % 60:02d}.{n % 1000:03d}Z")
    return {"ts": ts, "event": "cancel.result", "request_id": f"req-{n:012d}",
            "invocation_id": f"{n:08x}-0000-4000-8000-{n:012x}", "team": team,
            "key_id": "0123456789ab", "client": "10.0.0.7", "outcome": "cancelled",
            "status": 200, "upstream_status": 200, "error": None, "duration_ms": 1.234,
            "database": "db", "collection": "coll", "source_id": None, "attempts": 1,
            "reconciled": False}


def write_chain(folder: Path, records: int) -> Path:
    """`folder/audit.jsonl`: one chain of about `records` records, sealed by the writer's code."""
    key_file = folder / "signing.key"
    write_new_key(str(key_file), "audit.bench.example")
    (folder / "hmac.key").write_bytes(MAC_KEY)
    source = SigningKeySource(str(key_file))
    source.refresh()
    path = folder / "audit.jsonl"
    keeper = ChainKeeper(str(path), version="bench", instance="bench-pod", signing_key=source)
    head = ChainHead(CHECKPOINT_EVERY, keeper)
    teams = ("billing", "search", "ingest", "ops")
    with open(path, "wb", buffering=1 << 20) as out:
        opening = [keeper.begin(None, "2026-11-28T12:00:00.000Z"),
                   keeper.opened("2026-11-28T12:00:00.000Z")]
        out.write(head.seal_batch(opening, MAC_KEY)[0])
        batch: list[dict[str, object]] = []
        n = 2
        while n < records:
            batch.append(cancel_body(n, teams[n % 4]))
            n += 1
            if len(batch) == 64 or n >= records:
                out.write(head.seal_batch(batch, MAC_KEY)[0])
                batch = []
    return path


def timed(argv: list[str], stdin: Path | None = None, env: dict[str, str] | None = None
          ) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MiB, from GNU time if installed), exit status and stdout's last
    line of one child. (A child's own rusage would count the parent it was forked from.)"""
    gnu_time = shutil.which("time", path="/usr/bin")
    started = time.perf_counter()
    with open(stdin or os.devnull, "rb") as given:
        done = subprocess.run([gnu_time, "-f", "%M", *argv] if gnu_time else argv,
                              stdin=given, capture_output=True, env=env)
    wall = time.perf_counter() - started
    err = done.stderr.decode(errors="replace").strip().splitlines()
    peak = int(err.pop()) / 1024 if gnu_time and err and err[-1].isdigit() else float("nan")
    if done.returncode != 0:
        print("\n".join(err[-5:]), file=sys.stderr)
    printed = done.stdout.decode(errors="replace").strip().splitlines()
    return wall, peak, done.returncode, printed[-1] if printed else ""


def run(folder: Path, records: int, python: str | None = None) -> dict[str, dict[str, float]]:
    """Time the tools; `python`: the interpreter they run with (default this one), e.g. one
    with only `requirements.lock` installed, running this tree's `gateway` as an install would
    (a development venv's editable-install finder and tools' .pth files cost every start
    ~10 ms, which a proof's 50 ms budget notices and an auditor's install never pays)."""
    path = folder / "audit.jsonl"
    if not path.exists() or not (folder / "records").exists() or \
            (folder / "records").read_text() != str(records):
        started = time.perf_counter()
        write_chain(folder, records)
        (folder / "records").write_text(str(records))
        print(f"wrote {records} records in {time.perf_counter() - started:.1f} s")
    size = path.stat().st_size
    print(f"one chain, {records} records, {size / 2**20:.0f} MiB (MACs, a signed checkpoint "
          f"every {CHECKPOINT_EVERY}), in the page cache")
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    from gateway.audit.signing import load_signer
    public = load_signer(str(folder / "signing.key")).verifier.encoded
    compileall.compile_dir(os.path.dirname(gateway.__file__), quiet=1)
    # As the installed `chroma-sync-gateway` script runs it (pip writes one that imports
    # main and calls it), not `python -m gateway`, whose runpy costs ~3 ms at every start.
    audit = [python or sys.executable, "-c", CONSOLE_SCRIPT, "audit"]
    env = None
    if python:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(Path(gateway.__file__).resolve().parent.parent)
    from gateway.audit import compiled
    print(f"the tools run with {python or sys.executable}, "
          + ("with the compiled loops (gateway.audit.speedups)" if compiled.speedups is not None
             else "WITHOUT the compiled loops (gateway.audit.speedups was not built here)"))
    middle = str(records // 2)
    index = folder / "proofs.idx"
    index.unlink(missing_ok=True)
    with open(path, "rb") as handle:
        chain = json.loads(handle.readline())["chain"]
    runs: dict[str, list[str]] = {
        "sha256sum (reference)": ["sha256sum", str(path)],
        "audit verify (MACs, notes)": [*audit, "verify", str(path), "--hmac-key-file",
                                       str(folder / "hmac.key"), "--public-key", public],
        "audit verify - (stdin: the general way)": [
            *audit, "verify", "-", "--hmac-key-file", str(folder / "hmac.key"),
            "--public-key", public],
        "audit query --team --format csv": [*audit, "query", str(path), "--team", "search",
                                            "--format", "csv", "--hmac-key-file",
                                            str(folder / "hmac.key"), "--public-key", public],
        "audit prove SEQ (from the file)": [*audit, "prove", str(path), "--chain", chain,
                                            "--seq", middle],
        MAKING_INDEX: [*audit, "prove", str(path), "--chain", chain, "--seq", middle,
                       "--index", str(index)],
        "audit prove SEQ (with the index)": [*audit, "prove", str(path), "--chain", chain,
                                             "--seq", middle, "--index", str(index)],
    }
    results: dict[str, dict[str, float]] = {}
    reference = None
    for name, argv in runs.items():
        def once(argv: list[str] = argv) -> tuple[float, float, int, str]:
            return timed(argv, path if "-" in argv else None,
                         None if argv[0] == "sha256sum" else env)

        wall, peak, code, _ = once()
        spread = ""
        if wall < SHORT_SECONDS and code == 0 and name != MAKING_INDEX:
            # A start-up-sized figure: one sample is the VM's jitter (+-10 ms seen here).
            walls = sorted([wall] + [once()[0] for _ in range(SHORT_REPEATS - 1)])
            wall = statistics.median(walls)
            spread = (f"  (median of {SHORT_REPEATS}: {walls[0] * 1000:.0f} to "
                      f"{walls[-1] * 1000:.0f} ms)")
        reference = reference or wall
        results[name] = {"seconds": round(wall, 3), "ratio": round(wall / reference, 2),
                         "peak_rss_mib": round(peak, 1), "exit": code}
        print(f"{name:40s} {wall:7.3f} s  {wall / reference:6.2f}x  peak RSS {peak:5.0f} MiB"
              f"{'' if code == 0 else f'  (exit {code})'}{spread}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auditors")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--folder")
    parser.add_argument("--json")
    parser.add_argument("--python", help="the interpreter the tools run with (default this one)")
    args = parser.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench-auditors-"))
    folder.mkdir(parents=True, exist_ok=True)
    results = run(folder, args.records, args.python)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    os.sync()
    return 1 if any(r["exit"] for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
