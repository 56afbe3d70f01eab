"""Gateway benchmark: throughput and latency figures (not a test).

    scripts/bench [--quick] [--json PATH] [--profile] [--workdir DIR]
    python -m bench.run ...          (from the repository root, with the project's venv)

Three kinds of process, as in production: the Chroma Sync stand-in in its own process
(`bench.standin_server`, answering every authenticated cancel 202 `{}`), the gateway as a real
`python -m gateway serve --config ...` subprocess, and the load generator here (`bench.loadgen`:
raw keep-alive sockets, pre-built requests, TCP_NODELAY, one request at a time per
connection, N connections in parallel).

Scenarios, each at 1 and 32 connections, after a warm-up: direct to the stand-in (the
baseline), gateway with transport aiohttp and fsync=false, aiohttp and fsync=true (also for a
scoped team, cache miss and cached), httpx and fsync=true, and native (`gateway.upstream.transport`)
and fsync=true. Each measured phase stops at a request count or a duration, whichever comes
first (full: 3000 requests / 5 s; --quick: 300 / 1 s). Teams' rate limits are set far above
reach; any answer other than 202 is reported, and makes the exit status 1 (the figures of
such a run are not comparable).

Also printed: derived comparisons, the raw cost of write+fsync of a 200-byte line on the
filesystem of the work directory, the audit group-commit effect at 32 connections (records
written; fsync calls counted with `perf` tracepoints when this machine allows it), and the
gateway's own view of each run from /metrics (mean handler time and mean upstream time).

--profile adds a sampling profile (py-spy, if installed) of the gateway serving 1 connection
with fsync=true: where its CPU time goes, by function and by package.

All processes are loopback-only and stop by themselves; the work directory (a fresh temporary
directory unless --workdir is given) is removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import auditors, budget, loadgen, procs, trail
from bench import profile as pyspy


@dataclass(frozen=True)
class Settings:
    warmup: int
    count: int
    seconds: float
    fsync_iterations: int
    profile_seconds: float


FULL = Settings(warmup=200, count=3000, seconds=5.0, fsync_iterations=200, profile_seconds=8.0)
QUICK = Settings(warmup=50, count=300, seconds=1.0, fsync_iterations=50, profile_seconds=3.0)

CONNECTIONS = (1, 32)
@dataclass(frozen=True)
class GatewaySetup:
    label: str
    transport: str
    fsync: bool
    scope: tuple[str, ...] = ("*",)
    lookup_cache: int = 10_000
    everything: bool = False  # every optional feature configured too (`procs.gateway_process`)
    audit_trail: bool = True  # with `everything`: the 0.3 audit keys too (signing, archive...)
    traces: bool = False  # [traces] on, to the loopback OTLP receiver


# The default first: the native transport, unrestricted, every feature a deployed sidecar
# runs with (0.3's signing key, checkpoint file and file:// archive included; traces off, see
# bench/README.md); then the same without the 0.3 audit keys, and with traces on; then a
# scoped team. A scoped cancel costs one get_job round trip on a cache miss (lookup_cache = 0
# makes every request a miss) and nothing upstream on a hit (the 256 ids repeat). Then the
# other transports.
NATIVE = GatewaySetup("native (default) fsync=true", "native", True, everything=True)
NATIVE_02 = GatewaySetup("native, no 0.3 audit keys", "native", True, everything=True,
                         audit_trail=False)
NATIVE_TRACES = GatewaySetup("native, traces on (OTLP)", "native", True, everything=True,
                             traces=True)
SCOPED_MISS = GatewaySetup("native scoped, cache miss", "native", True, ("database:bench",), 0,
                           everything=True)
SCOPED_CACHED = GatewaySetup("native scoped, cached", "native", True, ("database:bench",),
                             everything=True)
AIOHTTP_NOFSYNC = GatewaySetup("aiohttp fsync=false", "aiohttp", False)
AIOHTTP = GatewaySetup("aiohttp fsync=true", "aiohttp", True)
HTTPX = GatewaySetup("httpx fsync=true", "httpx", True)
GATEWAYS = (NATIVE, NATIVE_02, NATIVE_TRACES, SCOPED_MISS, SCOPED_CACHED, AIOHTTP_NOFSYNC,
            AIOHTTP, HTTPX)
BUDGETED = (NATIVE, SCOPED_CACHED)  # issue 21's budget lines: the hot path, unrestricted/scoped
AUDIT_RECORDS_FULL, AUDIT_RECORDS_QUICK = 1_000_000, 20_000
PROCESS_NAMES = {"gateway": "gateway", "gateway.audit.archive.worker": "archive worker"}
DIRECT = "direct to stand-in"
CANCEL_ROUTE = 'route="/api/v1/invocations/{invocation_id}"'


@dataclass
class Row:
    scenario: str
    connections: int
    requests: int
    seconds: float
    rps: float
    p50: float
    p90: float
    p99: float
    statuses: dict[int, int]
    handler_ms: float | None = None  # gateway's own request_duration mean (incl. result record)
    upstream_ms: float | None = None  # gateway's upstream exchange mean
    upstream_connections: int | None = None  # new upstream connections during the run
    gateway_cpu_ms: float | None = None  # gateway process CPU time per request
    standin_cpu_ms: float | None = None  # stand-in process CPU time per request
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def non_202(self) -> dict[int, int]:
        return {s: n for s, n in self.statuses.items() if s != 202}


def measure(
    scenario: str, port: int, requests: list[bytes], connections: int, settings: Settings,
    between: Any = None, *, gateway_pid: int | None = None, standin_pid: int | None = None,
) -> Row:
    cpu: dict[str, float | None] = {}

    def mark() -> None:
        if between is not None:
            between()
        cpu["gateway"] = procs.cpu_seconds(gateway_pid) if gateway_pid else None
        cpu["standin"] = procs.cpu_seconds(standin_pid) if standin_pid else None

    result = loadgen.run(loadgen.run_load(
        port, requests, connections=connections, warmup=settings.warmup,
        count=settings.count, seconds=settings.seconds, between=mark,
    ))
    row = Row(
        scenario=scenario, connections=connections, requests=result.requests,
        seconds=result.seconds, rps=result.rps, p50=result.percentile_ms(50),
        p90=result.percentile_ms(90), p99=result.percentile_ms(99),
        statuses=dict(result.statuses),
    )

    def per_request(pid: int | None, before: float | None) -> float | None:
        after = procs.cpu_seconds(pid) if pid else None
        if after is None or before is None or not row.requests:
            return None
        return (after - before) * 1000 / row.requests

    row.gateway_cpu_ms = per_request(gateway_pid, cpu.get("gateway"))
    row.standin_cpu_ms = per_request(standin_pid, cpu.get("standin"))
    return row


def run_gateway_scenarios(
    setup: GatewaySetup, standin: procs.StandInProcess, folder: Path,
    ids: list[str], settings: Settings, rows: list[Row], notes: dict[str, Any],
    otlp: procs.OtlpReceiverProcess | None = None, python: str | None = None,
) -> None:
    label, transport, fsync = setup.label, setup.transport, setup.fsync
    spans_before = otlp.stats()["spans"] if otlp and setup.traces else None
    with procs.gateway_process(folder, standin.base_url, fsync=fsync, transport=transport,
                               scope=list(setup.scope), lookup_cache=setup.lookup_cache,
                               everything=setup.everything, audit_trail=setup.audit_trail,
                               traces_endpoint=otlp.endpoint if otlp and setup.traces else None,
                               python=None if setup.traces else python) as gw:
        requests = procs.gateway_requests(gw.port, ids)
        for connections in CONNECTIONS:
            state: dict[str, Any] = {}
            watch_group_commit = setup == NATIVE

            def between(state: dict[str, Any] = state, watch: bool = watch_group_commit) -> None:
                state["metrics"] = procs.scrape(gw.port)
                state["standin"] = standin.stats()
                if watch:
                    time.sleep(0.3)  # let the warm-up's last result records land
                    state["lines"] = procs.count_lines(gw.audit_path)
                    state["fsyncs"] = procs.FsyncCounter(gw.process.pid)

            row = measure(label, gw.port, requests, connections, settings, between,
                          gateway_pid=gw.process.pid, standin_pid=standin.process.pid)
            after = procs.scrape(gw.port)
            row.upstream_connections = (
                standin.stats()["connections"] - state["standin"]["connections"])
            before = state["metrics"]
            row.handler_ms = procs.histogram_mean_ms(
                before, after, "chroma_sync_gateway_request_duration_seconds", CANCEL_ROUTE)
            row.upstream_ms = procs.histogram_mean_ms(
                before, after, "chroma_sync_gateway_upstream_duration_seconds")
            if watch_group_commit:
                time.sleep(0.3)  # result records are written just after each answer
                fsyncs = state["fsyncs"].finish()
                records = procs.count_lines(gw.audit_path) - state["lines"]
                notes.setdefault("group_commit", []).append({
                    "scenario": label, "connections": connections, "requests": row.requests,
                    "records_written": records, "fsync_calls": fsyncs,
                    "records_per_fsync": round(records / fsyncs, 2) if fsyncs else None,
                    "audit_records_per_s": round(records / row.seconds, 1),
                })
            rows.append(row)
        memory = procs.tree_memory(gw.process.pid)
        notes.setdefault("processes", {})[label] = {
            "ready_s": gw.ready_seconds, "rss_mib_after_load": procs.rss_mib(gw.process.pid),
            "tree_rss_mib": memory and round(memory.rss_mib, 1),
            "container_mib": memory and round(memory.container_mib, 1),
            "tree_pss_mib": memory and memory.pss_mib and round(memory.pss_mib, 1),
            "tree": memory and {str(pid): {"module": module, "rss_mib": round(rss, 1)}
                                for pid, (module, rss) in memory.processes.items()},
        }
    if spans_before is not None and otlp is not None:
        time.sleep(1.0)  # past the batch processor's schedule (its exporter drains at stop too)
        notes["spans_received"] = {"scenario": label,
                                   "spans": otlp.stats()["spans"] - spans_before}
    if setup == NATIVE:  # after the stop: the shutdown checkpoint written and archived
        notes["audit_trail"] = trail.check(folder, gw.audit_path)


def cprofile_gateway(
    upstream_url: str, folder: Path, ids: list[str], settings: Settings, transport: str,
    python: str | None = None,
) -> dict[str, Any] | None:
    """The gateway under cProfile (fsync=true) serving 1 connection."""
    stats = folder / "gateway.pstats"
    with procs.gateway_process(folder, upstream_url, fsync=True, transport=transport,
                               everything=True, prefix=["-m", "cProfile", "-o", str(stats)],
                               python=python) as gw:
        requests = procs.gateway_requests(gw.port, ids)
        load = Settings(settings.warmup, settings.count, settings.seconds,
                        settings.fsync_iterations, settings.profile_seconds)
        row = measure(f"cProfiled gateway {transport} fsync=true", gw.port, requests, 1, load)
    if not stats.exists():
        print("  (cProfile wrote no statistics)")
        return None
    summary = pyspy.cprofile_summary(stats, row.requests + settings.warmup)
    summary["load"] = {"requests": row.requests, "rps": round(row.rps, 1),
                       "p50_ms": round(row.p50, 3), "transport": transport}
    return summary


def print_cprofile(summary: dict[str, Any]) -> None:
    load = summary["load"]
    print(f"\ncProfile of the gateway at 1 connection, fsync=true, {load['transport']}: "
          f"{load['requests']} "
          f"requests, {load['rps']:.0f} req/s, p50 {load['p50_ms']:.3f} ms under the profiler "
          f"(functions called at least once per 2 requests; us = microseconds per request)")
    print(f"  {'calls/req':>9} {'own us':>7} {'incl us':>8}  function (own time, top)")
    for name, calls, own, incl in summary["own_top"][:20]:
        print(f"  {calls:9.2f} {own:7.1f} {incl:8.1f}  {name}")
    print(f"  {'calls/req':>9} {'own us':>7} {'incl us':>8}  function (inclusive, selected "
          f"packages)")
    for name, calls, own, incl in summary["inclusive_top"][:20]:
        print(f"  {calls:9.2f} {own:7.1f} {incl:8.1f}  {name}")


def profile_gateway(
    upstream_url: str, folder: Path, ids: list[str], settings: Settings, transport: str,
    python: str | None = None,
) -> dict[str, Any] | None:
    if not pyspy.available():
        print("  (--profile: py-spy is not installed; `pip install py-spy` to enable)")
        return None
    with procs.gateway_process(folder, upstream_url, fsync=True, transport=transport,
                               everything=True, python=python) as gw:
        requests = procs.gateway_requests(gw.port, ids)
        holder: dict[str, pyspy.Sampler] = {}

        def start_sampler() -> None:
            holder["sampler"] = pyspy.Sampler(
                gw.process.pid, settings.profile_seconds, folder / "pyspy.txt", rate=500)
            time.sleep(0.5)  # attach before the load starts

        # Load for a little less than the sampling window, so every sample sees load.
        load = Settings(settings.warmup, 10**6, settings.profile_seconds - 1.5,
                        settings.fsync_iterations, settings.profile_seconds)
        row = measure(f"profiled gateway {transport} fsync=true", gw.port, requests, 1, load,
                      start_sampler)
        result = holder["sampler"].finish()
    if result is None:
        return None
    summary = result.as_dict()
    summary["load"] = {"requests": row.requests, "rps": round(row.rps, 1),
                       "p50_ms": round(row.p50, 3), "transport": transport}
    return summary


# -- output ---------------------------------------------------------------------------------------

def print_table(rows: list[Row]) -> None:
    header = (f"{'scenario':<30} {'conns':>5} {'requests':>8} {'req/s':>8} {'p50 ms':>8} "
              f"{'p90 ms':>8} {'p99 ms':>8} {'gw ms':>7} {'up ms':>7} {'gwCPU':>6} {'siCPU':>6} "
              f"{'up+c':>5}  non-202")
    print(header)
    print("-" * len(header))
    for r in rows:
        gw = f"{r.handler_ms:7.3f}" if r.handler_ms is not None else f"{'-':>7}"
        up = f"{r.upstream_ms:7.3f}" if r.upstream_ms is not None else f"{'-':>7}"
        upc = f"{r.upstream_connections:5d}" if r.upstream_connections is not None else (
            f"{'-':>5}")
        gwc = f"{r.gateway_cpu_ms:6.3f}" if r.gateway_cpu_ms is not None else f"{'-':>6}"
        sic = f"{r.standin_cpu_ms:6.3f}" if r.standin_cpu_ms is not None else f"{'-':>6}"
        bad = ", ".join(f"{s}: {n}" for s, n in sorted(r.non_202.items())) or "0"
        print(f"{r.scenario:<30} {r.connections:>5} {r.requests:>8} {r.rps:>8.0f} "
              f"{r.p50:>8.3f} {r.p90:>8.3f} {r.p99:>8.3f} {gw} {up} {gwc} {sic} {upc}  {bad}")
    print("gw ms = the gateway's own mean handler time (/metrics; includes writing the result "
          "record, after the answer); up ms = its mean upstream exchange;\ngwCPU / siCPU = CPU ms "
          "per request used by the gateway / stand-in process (all threads); up+c = upstream "
          "connections opened during the measured phase.")


def find(rows: list[Row], scenario: str, connections: int) -> Row | None:
    return next((r for r in rows if r.scenario == scenario and r.connections == connections),
                None)


def derived_lines(rows: list[Row], notes: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lo, hi = min(CONNECTIONS), max(CONNECTIONS)
    direct = find(rows, DIRECT, lo)
    native1, native32 = find(rows, NATIVE.label, lo), find(rows, NATIVE.label, hi)
    nofsync1 = find(rows, AIOHTTP_NOFSYNC.label, lo)
    nofsync32 = find(rows, AIOHTTP_NOFSYNC.label, hi)
    fsync1, fsync32 = find(rows, AIOHTTP.label, lo), find(rows, AIOHTTP.label, hi)
    httpx1, httpx32 = find(rows, HTTPX.label, lo), find(rows, HTTPX.label, hi)
    for setup in (SCOPED_MISS, SCOPED_CACHED):
        scoped1, scoped32 = find(rows, setup.label, lo), find(rows, setup.label, hi)
        if native1 and scoped1 and native32 and scoped32:
            lines.append(
                f"{setup.label} vs unrestricted: 1 connection p50 {scoped1.p50:.3f} vs "
                f"{native1.p50:.3f} ms ({scoped1.p50 - native1.p50:+.3f} ms); {hi} connections "
                f"{scoped32.rps:.0f} vs {native32.rps:.0f} req/s")
    if direct and nofsync1 and fsync1:
        lines.append(
            f"gateway overhead at 1 connection = p50(gateway) - p50(direct) = "
            f"{nofsync1.p50 - direct.p50:.3f} ms with fsync=false, "
            f"{fsync1.p50 - direct.p50:.3f} ms with fsync=true "
            f"(direct p50 {direct.p50:.3f} ms)")
        cost = fsync1.p50 - nofsync1.p50
        lines.append(
            f"durability cost at 1 connection = p50(fsync=true) - p50(fsync=false) = "
            f"{cost:.3f} ms = {cost / fsync_p50(notes):.1f} x raw fsync p50")
    if nofsync32 and fsync32:
        pct = 100.0 * fsync32.rps / nofsync32.rps if nofsync32.rps else float("nan")
        lines.append(
            f"fsync=true throughput at {hi} connections = {pct:.0f}% of fsync=false "
            f"({fsync32.rps:.0f} vs {nofsync32.rps:.0f} req/s; goal >= 70%: "
            f"{'met' if pct >= 70 else 'NOT met'})")
    if fsync1 and httpx1 and fsync32 and httpx32:
        lines.append(
            f"aiohttp vs httpx transport (fsync=true): {hi} connections {fsync32.rps:.0f} vs "
            f"{httpx32.rps:.0f} req/s ({100.0 * fsync32.rps / httpx32.rps - 100:+.0f}% for "
            f"aiohttp); 1 connection p50 {fsync1.p50:.3f} vs {httpx1.p50:.3f} ms "
            f"({fsync1.p50 - httpx1.p50:+.3f} ms for aiohttp); upstream exchange mean "
            f"{fsync1.upstream_ms or float('nan'):.3f} vs {httpx1.upstream_ms or float('nan'):.3f}"
            f" ms")
    if fsync1 and native1 and fsync32 and native32:
        lines.append(
            f"native vs aiohttp transport (fsync=true): {hi} connections {native32.rps:.0f} vs "
            f"{fsync32.rps:.0f} req/s; 1 connection p50 {native1.p50:.3f} vs {fsync1.p50:.3f} ms"
            f"; gateway CPU per request {native1.gateway_cpu_ms or float('nan'):.3f} vs "
            f"{fsync1.gateway_cpu_ms or float('nan'):.3f} ms")
    raw = notes.get("raw_fsync_ms")
    if raw:
        lines.append(
            f"raw write+fsync of a 200-byte line ({raw['iterations']}x): p50 {raw['p50']:.3f} ms,"
            f" p90 {raw['p90']:.3f} ms, p99 {raw['p99']:.3f} ms (~{1000 / raw['p50']:.0f} "
            f"fsyncs/s serially)")
    for gc in notes.get("group_commit", []):
        text = (f"audit group commit ({gc['scenario']}, {gc['connections']} connection(s)): "
                f"{gc['records_written']} records for {gc['requests']} requests "
                f"({gc['audit_records_per_s']:.0f} records/s)")
        if gc["fsync_calls"]:
            text += (f", {gc['fsync_calls']} fsync calls = {gc['records_per_fsync']:.1f} "
                     f"records per fsync, {gc['fsync_calls'] / gc['requests']:.2f} fsyncs "
                     f"per request")
        elif raw:
            bound = gc["audit_records_per_s"] * raw["p50"] / 1000
            text += (f"; fsync calls not countable here; at the raw fsync p50 that implies "
                     f">= {bound:.1f} records per fsync")
        lines.append(text)
    native02_1, native02_32 = find(rows, NATIVE_02.label, lo), find(rows, NATIVE_02.label, hi)
    traced1, traced32 = find(rows, NATIVE_TRACES.label, lo), find(rows, NATIVE_TRACES.label, hi)
    for other, what in ((native02_1, native02_32), "without the 0.3 audit keys"), (
            (traced1, traced32), "with traces on"):
        one, many = other
        if native1 and native32 and one and many:
            lines.append(
                f"native {what} vs as deployed: 1 connection p50 {one.p50:.3f} vs "
                f"{native1.p50:.3f} ms; {hi} connections {many.rps:.0f} vs {native32.rps:.0f} "
                f"req/s, p99 {many.p99:.1f} vs {native32.p99:.1f} ms; gateway CPU per cancel "
                f"{many.gateway_cpu_ms or float('nan'):.3f} vs "
                f"{native32.gateway_cpu_ms or float('nan'):.3f} ms")
    if "spans_received" in notes:
        lines.append(f"traces: the loopback OTLP receiver decoded "
                     f"{notes['spans_received']['spans']} spans from "
                     f"'{notes['spans_received']['scenario']}'")
    return lines


def budget_lines(rows: list[Row], notes: dict[str, Any], setup: GatewaySetup,
                 ) -> list[budget.Line]:
    """Issue 21's budget for one gateway setup, each figure against its reference."""
    lo, hi = min(CONNECTIONS), max(CONNECTIONS)
    direct1, direct32 = find(rows, DIRECT, lo), find(rows, DIRECT, hi)
    one, many = find(rows, setup.label, lo), find(rows, setup.label, hi)
    if not (direct1 and direct32 and one and many):
        return []
    processes = notes.get("processes", {})
    proc, plain = processes.get(setup.label, {}), processes.get(NATIVE_02.label, {})
    tree = proc.get("tree") or {}
    parts = " + ".join(f"{PROCESS_NAMES.get(p['module'], p['module'])} {p['rss_mib']:.1f}"
                       for p in tree.values())
    plain_rss, plain_ready = plain.get("container_mib"), plain.get("ready_s")
    return [
        budget.Line(f"cancels/s at {hi} connections", many.rps, "/s", budget.RPS_AT_32, True,
                    f"direct to the stand-in's {direct32.rps:,.0f}/s", direct32.rps),
        budget.Line(f"p99 at {hi} connections", many.p99, "ms", budget.P99_AT_32_MS, False,
                    f"direct's {direct32.p99:.3f} ms", direct32.p99),
        budget.Line("added p50 at 1 connection", one.p50 - direct1.p50, "ms",
                    budget.ADDED_P50_AT_1_MS, False,
                    f"direct's p50 {direct1.p50:.3f} ms (gateway p50 {one.p50:.3f} ms)",
                    direct1.p50),
        budget.Line("memory after load, container", proc.get("container_mib"), "MiB",
                    budget.RSS_MIB, False,
                    f"the gateway without the 0.3 audit keys ({plain_rss} MiB); RSS here "
                    f"{parts} = {proc.get('tree_rss_mib')} MiB; PSS sum "
                    f"{proc.get('tree_pss_mib')} MiB", plain_rss),
        budget.Line("exec to /readyz 200", proc.get("ready_s"), "s", budget.READY_S, False,
                    "the gateway without the 0.3 audit keys ("
                    + ("-" if plain_ready is None else f"{plain_ready:.2f} s") + ")",
                    plain_ready),
    ]


def fsync_p50(notes: dict[str, Any]) -> float:
    raw = notes.get("raw_fsync_ms") or {}
    return raw.get("p50") or float("nan")


def print_profile(summary: dict[str, Any]) -> None:
    load = summary["load"]
    print(f"\nprofile of the gateway at 1 connection, fsync=true, {load['transport']} (py-spy, "
          f"{summary['rate_hz']} Hz, {summary['seconds']:.0f} s, on-CPU samples only): "
          f"{load['requests']} requests, {load['rps']:.0f} req/s, p50 {load['p50_ms']:.3f} ms; "
          f"gateway CPU busy {summary['cpu_busy_pct']}% of one core")
    print("  threads: " + ", ".join(f"{k} {v}" for k, v in summary["threads"].items()))
    print("  on-CPU samples by component (self time credited to the innermost component):")
    for name, share in summary["components"]:
        print(f"    {share:5.1f}%  {name}")
    print("  self time, top functions:")
    for name, share in summary["self_top"][:12]:
        print(f"    {share:5.1f}%  {name}")


# -- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="far fewer requests (smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--profile", nargs="?", const="pyspy", choices=("pyspy", "cprofile"),
                        help="also profile the gateway at 1 connection: py-spy sampling "
                             "(the default) or cProfile")
    parser.add_argument("--profile-transport", default="native",
                        choices=("native", "aiohttp", "httpx"),
                        help="the upstream transport of the profiled gateway (default native)")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where configs and audit logs go (default: a new temp dir); "
                             "the raw fsync cost is measured there too")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--gateway-python", metavar="PYTHON",
                        help="the interpreter the gateways and the auditors' tools run with "
                             "(default this one); scripts/bench gives one with only "
                             "requirements.lock installed, as in the image, so memory is what a "
                             "deployment's is and a tool starts as an install's does (the "
                             "traces row keeps this one: it needs the otel extra)")
    parser.add_argument("--audit-records", metavar="N", type=int,
                        help=f"records in the chain the auditors' tools are timed on (default "
                             f"{AUDIT_RECORDS_FULL:,}, with --quick {AUDIT_RECORDS_QUICK:,}; 0 "
                             f"skips them)")
    parser.add_argument("--audit-folder", metavar="DIR",
                        help="where that chain is written and kept, to reuse it in the next "
                             "run (default: in the work directory)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    audit_records = args.audit_records
    if audit_records is None:
        audit_records = AUDIT_RECORDS_QUICK if args.quick else AUDIT_RECORDS_FULL
    if audit_records < 0 or 0 < audit_records < 1000:
        parser.error("--audit-records: 0, or at least 1000 (a signed checkpoint every 1,000)")
    started = time.monotonic()

    workdir = Path(tempfile.mkdtemp(prefix="csg-bench-", dir=args.workdir))
    rows: list[Row] = []
    notes: dict[str, Any] = {}
    profile_summary: dict[str, Any] | None = None
    auditor_results: dict[str, dict[str, float]] = {}
    try:
        print(f"chroma-sync-gateway benchmark ({'quick' if args.quick else 'full'}): "
              f"warm-up {settings.warmup}, then {settings.count} requests or "
              f"{settings.seconds:g} s per run; {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, perf fsync counting "
              f"{'on' if procs.perf_available() else 'off'}")
        print(f"gateways run with {args.gateway_python or sys.executable}"
              + ("" if args.gateway_python else " (this interpreter: memory reads higher than "
                 "in the image when dev tools are installed; see bench/README.md)"))
        times = procs.raw_fsync_ms(workdir, settings.fsync_iterations)
        quantiles = statistics.quantiles(times, n=100, method="inclusive")
        notes["raw_fsync_ms"] = {
            "iterations": len(times), "p50": statistics.median(times), "p90": quantiles[89],
            "p99": quantiles[98], "mean": statistics.fmean(times),
        }
        ids = procs.invocation_ids(256)
        with procs.standin_process(max_seconds=900) as standin, \
                procs.otlp_receiver_process(max_seconds=900) as otlp:
            direct = procs.direct_requests(standin.port, ids)
            for connections in CONNECTIONS:
                rows.append(measure(DIRECT, standin.port, direct, connections, settings,
                                    standin_pid=standin.process.pid))
            for setup in GATEWAYS:
                folder = "".join(c if c.isalnum() else "-" for c in setup.label)
                run_gateway_scenarios(setup, standin, workdir / folder, ids, settings, rows,
                                      notes, otlp, args.gateway_python)
            if args.profile == "pyspy":
                profile_summary = profile_gateway(
                    standin.base_url, workdir / "profile", ids, settings, args.profile_transport,
                    args.gateway_python)
            elif args.profile == "cprofile":
                profile_summary = cprofile_gateway(
                    standin.base_url, workdir / "profile", ids, settings, args.profile_transport,
                    args.gateway_python)
        if audit_records:
            # After the gateways, alone: the tools are timed on one core, the file cached.
            print(f"\nthe auditors' tools (bench.auditors) on one chain of {audit_records:,} "
                  f"records:")
            chain_folder = Path(args.audit_folder or workdir / "auditors")
            chain_folder.mkdir(parents=True, exist_ok=True)
            auditor_results = auditors.run(chain_folder, audit_records, args.gateway_python)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print_table(rows)
    print()
    for line in derived_lines(rows, notes):
        print(line)
    if "audit_trail" in notes:
        print()
        for line in trail.summary(notes["audit_trail"]):
            print(line)
    if auditor_results:
        print(f"\nthe auditors' tools on one chain of {audit_records:,} records, each its own "
              f"process, the file in the page cache"
              + (" (--quick: start-up outweighs the work, the ratios say little)"
                 if args.quick else "") + ":")
        for text in budget.auditor_table(auditor_results):
            print(text)
    budgets = {setup.label: budget_lines(rows, notes, setup) for setup in BUDGETED}
    if auditor_results:
        budgets["the auditors' tools"] = budget.auditor_lines(auditor_results)
    for label, lines in budgets.items():
        if lines:
            passed = sum(line.passed for line in lines)
            print(f"\nbudget (issue 21), {label}: {passed} of {len(lines)} met")
            for text in budget.render(lines):
                print(text)
    if profile_summary and args.profile == "pyspy":
        print_profile(profile_summary)
    elif profile_summary:
        print_cprofile(profile_summary)
    bad = [r for r in rows if r.non_202]
    for r in bad:
        print(f"WARNING: {r.scenario} at {r.connections} connection(s) got non-202 answers: "
              f"{r.non_202}")
    elapsed = time.monotonic() - started
    print(f"\n(benchmark took {elapsed:.0f} s)")

    if args.json:
        data = {
            "mode": "quick" if args.quick else "full",
            "settings": settings.__dict__,
            "environment": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(terse=True)},
            "rows": [{
                "scenario": r.scenario, "connections": r.connections, "requests": r.requests,
                "seconds": round(r.seconds, 4), "rps": round(r.rps, 1),
                "p50_ms": round(r.p50, 4), "p90_ms": round(r.p90, 4), "p99_ms": round(r.p99, 4),
                "statuses": {str(k): v for k, v in r.statuses.items()},
                "gateway_handler_mean_ms": r.handler_ms, "upstream_mean_ms": r.upstream_ms,
                "upstream_connections_opened": r.upstream_connections,
                "gateway_cpu_ms_per_request": r.gateway_cpu_ms,
                "standin_cpu_ms_per_request": r.standin_cpu_ms,
            } for r in rows],
            "notes": notes,
            "derived": derived_lines(rows, notes),
            "budget": {label: [line.as_dict() for line in lines]
                       for label, lines in budgets.items()},
            "auditors": {"records": audit_records, "rows": auditor_results},
            "profile": profile_summary,
            "elapsed_s": round(elapsed, 1),
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    failed_tools = [name for name, row in auditor_results.items() if row.get("exit")]
    for name in failed_tools:
        print(f"WARNING: {name} exited {auditor_results[name]['exit']}")
    return 1 if bad or failed_tools else 0


if __name__ == "__main__":
    raise SystemExit(main())
