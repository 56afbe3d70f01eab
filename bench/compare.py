"""Before and after, interleaved: the gateway of another git revision against this tree.

    python -m bench.compare REV [--rounds 6] [--scope database:bench]

One run of `scripts/bench` per side is at the mercy of a shared VM: its disk and CPU speed
drift by 10% or more between minutes (compare the raw fsync line of two runs). This puts REV's
gateway code in a temporary `git worktree` and alternates the two gateways (REV, this tree,
this tree, REV, ...) against one stand-in, with the budget rows' configuration (fsync on,
every feature configured), so that drift falls on both sides alike; it prints each side's
median of the rounds, and every round's p50, at 1 and 32 connections.

Only the gateway process runs REV's code; the stand-in, the load generator and this harness
are this tree's. Loopback only; the worktree is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import procs
from bench.run import Settings, measure

HERE = Path(__file__).resolve().parent.parent
SETTINGS = Settings(warmup=300, count=3000, seconds=5.0, fsync_iterations=0,
                    profile_seconds=0)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="csg-compare-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "--quiet",
                        str(path), rev], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force",
                            str(path)], check=False)


@contextlib.contextmanager
def gateway_of(tree: Path, folder: Path, upstream: str, scope: str
               ) -> Iterator[procs.RunningGateway]:
    """The gateway of `tree`: `python -m gateway` imports from the working directory."""
    before = Path.cwd()
    os.chdir(tree)
    try:
        with procs.gateway_process(folder, upstream, fsync=True, transport="native",
                                   scope=[scope], everything=True) as gateway:
            os.chdir(before)
            yield gateway
    finally:
        os.chdir(before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("rev", help="the git revision to compare this tree with")
    parser.add_argument("--rounds", type=int, default=6, help="even: each side goes first "
                        "equally often")
    parser.add_argument("--scope", default="*")
    args = parser.parse_args(argv)
    ids = procs.invocation_ids(256)
    figures: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    with worktree(args.rev) as other, tempfile.TemporaryDirectory(prefix="csg-compare-") as tmp, \
            procs.standin_process(max_seconds=3600) as standin:
        sides = [(args.rev, other), ("this tree", HERE)]
        direct = measure("direct", standin.port, procs.direct_requests(standin.port, ids), 1,
                         SETTINGS)
        for round_ in range(args.rounds):
            for side, (name, tree) in enumerate(sides if round_ % 2 == 0 else sides[::-1]):
                folder = Path(tmp) / f"round-{round_}-{side}"  # a fresh audit log each run
                with gateway_of(tree, folder, standin.base_url, args.scope) as gateway:
                    requests = procs.gateway_requests(gateway.port, ids)
                    for connections in (1, 32):
                        row = measure(name, gateway.port, requests, connections, SETTINGS,
                                      gateway_pid=gateway.process.pid)
                        figures.setdefault((name, connections), []).append(
                            (row.p50, row.rps, row.p99, row.gateway_cpu_ms or float("nan")))
        print(f"{args.rounds} rounds each, interleaved; scope {args.scope}; direct to the "
              f"stand-in: p50 {direct.p50:.3f} ms at 1 connection\n")
        for connections in (1, 32):
            for name, _ in sides:
                rounds = figures[(name, connections)]
                p50, rps, p99, cpu = (statistics.median(r[i] for r in rounds) for i in range(4))
                print(f"{name:>12} {connections:>2} connections: p50 {p50:7.3f} ms  {rps:6.0f} "
                      f"req/s  p99 {p99:6.2f} ms  gateway CPU {cpu:.3f} ms/request   (p50s: "
                      + " ".join(f"{r[0]:.3f}" for r in rounds) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
