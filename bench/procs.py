"""The processes the benchmark drives: the stand-in, the gateway, and optional observers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.access import keys
from gateway.audit.signing import write_new_key
from tests.harness import (
    RunningGateway,
    free_port,
    start_gateway,
    wait_until_serving,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent  # the repository
TEAM = "bench"
TEAM_KEY = keys.new_key()
UPSTREAM_TOKEN = "bench-upstream-" + secrets.token_hex(16)
# A public EC P-256 key (RFC 7517 appendix A.1's example): the bench never signs with it, it
# only makes the gateway load, parse and watch a JWKS as a cluster's sidecar does.
BENCH_JWK = {"kty": "EC", "crv": "P-256", "kid": "bench-1", "use": "sig", "alg": "ES256",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
             "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}


@dataclass
class StandInProcess:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        """Connections the stand-in has accepted and requests it has seen, so far."""
        url = self.base_url + "/bench/stats"  # http://127.0.0.1 only
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return json.loads(response.read())  # type: ignore[no-any-return]


@dataclass
class OtlpReceiverProcess:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def stats(self) -> dict[str, int]:
        """Export requests and spans received so far."""
        url = f"http://127.0.0.1:{self.port}/bench/stats"  # loopback only
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


@contextlib.contextmanager
def _listening(module: str, max_seconds: float, env: dict[str, str] | None = None,
               ) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`python -m MODULE --max-seconds S`, once it has printed `port N`; stopped at exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--max-seconds", str(max_seconds)],
        stdout=subprocess.PIPE, env=env,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 15.0)
        line = process.stdout.readline().decode() if ready else ""
        if not line.startswith("port "):
            raise RuntimeError(f"{module} did not start (said {line!r})")
        yield process, int(line.split()[1])
    finally:
        stop(process)


@contextlib.contextmanager
def standin_process(max_seconds: float) -> Iterator[StandInProcess]:
    env = dict(os.environ, BENCH_STANDIN_TOKEN=UPSTREAM_TOKEN)
    with _listening("bench.standin_server", max_seconds, env) as (process, port):
        yield StandInProcess(process, port)


@contextlib.contextmanager
def otlp_receiver_process(max_seconds: float) -> Iterator[OtlpReceiverProcess]:
    with _listening("bench.otlp_receiver", max_seconds) as (process, port):
        yield OtlpReceiverProcess(process, port)


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextlib.contextmanager
def gateway_process(
    folder: Path, upstream_url: str, *, fsync: bool, transport: str,
    prefix: list[str] | None = None, scope: list[str] | None = None, lookup_cache: int = 10_000,
    everything: bool = False, audit_trail: bool = True, archive: str | bool | None = None,
    traces_endpoint: str | None = None, env: dict[str, str] | None = None,
    python: str | None = None,
) -> Iterator[RunningGateway]:
    """`python [PREFIX...] -m gateway serve --config ...` with a bench config; SIGTERM at exit.

    `everything` configures, besides what is on by default (retries, circuit breaker,
    in-flight limit, header timeout, denied-record suppression, reload watching, checkpoints
    every 1,000 records), the optional features a production sidecar runs with (as
    deploy/kubernetes/overlays/sidecar does): audit HMAC, an `[[issuers]]` entry whose JWKS is
    watched (workload identity loaded), a service account on the team, a metrics listener of
    its own, and (unless `audit_trail` is false: a 0.2 sidecar) the 0.3 audit keys: a
    signing key (every checkpoint a signed note), the newest note in `audit.checkpoint_file`,
    `audit.origin` and `audit.instance`, rotation (`max_bytes`, `keep_files`), and an
    archive: `archive` None means a `file://` folder next to the log then (none otherwise),
    False none, a string that URL. The benchmark's requests still authenticate with the team
    key. `traces_endpoint` turns on `[traces]` (OTLP/HTTP). `python` is the interpreter the
    gateway runs with (default this one), e.g. one with only `requirements.lock` installed as
    in the image: it runs this tree's `gateway` package, from the repository root.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # Limits far above anything the benchmark can reach: no 429s from the rate limit. The
    # in-flight limit is the default (32), which 32 connections reach and never pass.
    team: dict[str, object] = {"name": TEAM, "keys": [keys.stored_form(TEAM_KEY)],
                               "scope": scope or ["*"], "rate_limit": 1e9, "burst": 10**9,
                               "max_in_flight": 32}
    audit: dict[str, object] = {"fsync": fsync, "denied_per_second": 20}
    if archive is None and everything and audit_trail:
        archive = (folder / "archive").as_uri()
    if isinstance(archive, str):
        audit["archive"] = archive
    server: dict[str, object] = {"header_timeout": 5.0, "keepalive_timeout": 5.0}
    issuers: list[dict[str, object]] | None = None
    if everything:
        key_file = folder / "audit-hmac-key"
        key_file.write_text(secrets.token_hex(32) + "\n")
        audit["hmac_key_file"] = str(key_file)
        jwks_file = folder / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": [BENCH_JWK]}))
        issuers = [{"name": "bench-cluster", "issuer": "https://kubernetes.default.svc",
                    "audience": "chroma-sync-gateway", "jwks_file": str(jwks_file)}]
        team["service_accounts"] = ["bench/worker"]
        server["metrics_port"] = free_port()
        if audit_trail:
            audit.update(deployment_audit(folder))
    config = write_config(
        folder, upstream_url=upstream_url, port=port, token=UPSTREAM_TOKEN,
        upstream={"transport": transport, "timeout": 10.0, "connect_timeout": 2.0,
                  "lookup_cache": lookup_cache},
        audit=audit, server=server, teams=[team], issuers=issuers,
        traces={"otlp_endpoint": traces_endpoint} if traces_endpoint else None,
    )
    started = time.monotonic()
    if prefix or python:
        gateway = _start_with(config, port, python or sys.executable, prefix or [], env)
    else:
        gateway = start_gateway(config, port=port, env=env)
    # From exec to /readyz 200 (token loaded, audit log open), polled every 10 ms.
    gateway.ready_seconds = _wait_ready(gateway.port, started)  # type: ignore[attr-defined]
    gateway.metrics_port = server.get("metrics_port")  # type: ignore[attr-defined]
    try:
        yield gateway
    finally:
        gateway.stop()


SIGNING_KEY_NAME = "bench.example/audit"


def deployment_audit(folder: Path) -> dict[str, object]:
    """The 0.3 `[audit]` keys of a deployed sidecar, with a new signing key in `folder`."""
    key_file = folder / "audit-signing-key"
    if not key_file.exists():  # a key file is never overwritten
        write_new_key(str(key_file), SIGNING_KEY_NAME)
    return {"signing_key_file": str(key_file), "checkpoint_file": str(folder / "checkpoint.note"),
            "origin": "bench.example/gateway", "instance": "bench-gw-0",
            "max_bytes": 64 * 2**20, "keep_files": 10}


def _wait_ready(port: int, started: float, timeout: float = 15.0) -> float | None:
    while time.monotonic() - started < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
                if sock.recv(12).startswith(b"HTTP/1.1 200"):
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.01)
    return None


def rss_mib(pid: int) -> float | None:
    """The process's resident set size, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _status_kib(path: str, field: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, parents first (Linux /proc)."""
    found, i = [pid], 0
    while i < len(found):
        try:
            tasks = os.listdir(f"/proc/{found[i]}/task")
        except OSError:
            tasks = []
        for task in tasks:
            with contextlib.suppress(OSError, ValueError), \
                    open(f"/proc/{found[i]}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
        i += 1
    return found


@dataclass(frozen=True)
class TreeMemory:
    """Memory of a process and its descendants: what a container's memory limit holds them to.

    `rss_mib` sums each process's resident set: pages two processes share (the interpreter,
    the extension modules both import) are counted in each, an upper bound. `container_mib`
    counts them once, as the container's memory cgroup charges a page once: the anonymous
    pages of every process (private: heaps, objects) plus the file-backed resident pages of
    the largest one (the others map a subset of the same files: the same interpreter and
    libraries). The page cache of the files the gateway writes is left out (reclaimable; a
    working-set figure leaves most of it out too). `pss_mib` sums the proportional set sizes;
    on a shared machine it splits pages with unrelated processes (any other Python), so it
    reads low."""

    processes: dict[int, tuple[str, float]]  # pid -> (module run with -m, RSS MiB)
    rss_mib: float
    container_mib: float
    pss_mib: float | None


def tree_memory(pid: int) -> TreeMemory | None:
    processes: dict[int, tuple[str, float]] = {}
    anon_total = file_largest = 0.0
    pss_total: float | None = 0.0
    for each in process_tree(pid):
        rss = _status_kib(f"/proc/{each}/status", "VmRSS:")
        if rss is None:
            continue
        try:
            with open(f"/proc/{each}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            argv = []
        module = argv[argv.index(b"-m") + 1].decode() if b"-m" in argv[:-1] else "?"
        processes[each] = (module, rss / 1024)
        anon_total += (_status_kib(f"/proc/{each}/status", "RssAnon:") or 0) / 1024
        file_largest = max(file_largest,
                           (_status_kib(f"/proc/{each}/status", "RssFile:") or 0) / 1024)
        pss = _status_kib(f"/proc/{each}/smaps_rollup", "Pss:")
        pss_total = None if pss is None or pss_total is None else pss_total + pss / 1024
    if not processes:
        return None
    return TreeMemory(processes, sum(rss for _, rss in processes.values()),
                      anon_total + file_largest, pss_total)


def _start_with(config: Path, port: int, python: str, prefix: list[str],
                env: dict[str, str] | None) -> RunningGateway:
    """Like tests.harness.start_gateway, with another interpreter or interpreter options
    (e.g. `-m cProfile -o F`). The repository root goes first on its path, so another
    interpreter runs this tree's code with its own packages."""
    folder = config.parent
    stdout_path, stderr_path = folder / f"stdout-{port}.log", folder / f"stderr-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMA_SYNC")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT)
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [python, *prefix, "-m", "gateway", "serve", "--config", str(config)],
            stdout=out, stderr=err, env=full_env, cwd=ROOT,
        )
    gateway = RunningGateway(process, port, folder, config, stdout_path, stderr_path,
                             folder / "audit.jsonl")
    wait_until_serving(gateway)
    return gateway


# -- requests --------------------------------------------------------------------------------

def invocation_ids(n: int) -> list[str]:
    import uuid

    return [str(uuid.uuid4()) for _ in range(n)]


def gateway_requests(port: int, ids: list[str]) -> list[bytes]:
    return [
        (f"PUT /api/v1/invocations/{i} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
         f"authorization: Bearer {TEAM_KEY}\r\ncontent-length: 0\r\n\r\n").encode()
        for i in ids
    ]


def direct_requests(port: int, ids: list[str]) -> list[bytes]:
    return [
        (f"PUT /api/v1/invocations/{i} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
         f"x-chroma-token: {UPSTREAM_TOKEN}\r\naccept: application/json\r\n"
         f"content-length: 0\r\n\r\n").encode()
        for i in ids
    ]


# -- metrics -----------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? ([0-9.eE+-]+|NaN|\+Inf)$')  # label values hold {}


def scrape(port: int) -> dict[str, float]:
    """The gateway's /metrics as {name{labels}: value} (histogram sums and counts included)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            samples[f"{name}{{{labels or ''}}}"] = float(value)
    return samples


def histogram_mean_ms(
    before: dict[str, float], after: dict[str, float], name: str, labels: str = "",
) -> float | None:
    total = after.get(f"{name}_sum{{{labels}}}", 0.0) - before.get(f"{name}_sum{{{labels}}}", 0.0)
    count = after.get(f"{name}_count{{{labels}}}", 0.0) - before.get(
        f"{name}_count{{{labels}}}", 0.0)
    return total / count * 1000 if count else None


# -- fsync counting from outside (perf tracepoints, when this machine allows them) ------------

_perf_ok: bool | None = None


def perf_available() -> bool:
    global _perf_ok
    if _perf_ok is None:
        _perf_ok = False
        if shutil.which("perf"):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                probe = subprocess.run(
                    ["perf", "stat", "-x,", "-e", "syscalls:sys_enter_fsync", "--", "true"],
                    capture_output=True, timeout=10,
                )
                _perf_ok = probe.returncode == 0 and b"sys_enter_fsync" in probe.stderr
    return _perf_ok


class FsyncCounter:
    """Counts fsync/fdatasync calls of a running process (all its threads) while open."""

    EVENTS = ("syscalls:sys_enter_fsync", "syscalls:sys_enter_fdatasync")

    def __init__(self, pid: int) -> None:
        self.count: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        if perf_available():
            args = ["perf", "stat", "-x,", "-p", str(pid)]
            for event in self.EVENTS:
                args += ["-e", event]
            self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE)
            time.sleep(0.3)  # let perf attach

    def finish(self) -> int | None:
        if self._process is None:
            return None
        self._process.send_signal(signal.SIGINT)
        try:
            _, err = self._process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            return None
        total = 0
        found = False
        for line in err.decode(errors="replace").splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] in self.EVENTS and fields[0].strip().isdigit():
                total += int(fields[0])
                found = True
        self.count = total if found else None
        return self.count


# -- raw fsync cost ------------------------------------------------------------------------------

def raw_fsync_ms(folder: Path, iterations: int) -> list[float]:
    """write + fsync of one 200-byte line, `iterations` times: each round's milliseconds."""
    path = folder / "fsync-probe.jsonl"
    line = b"x" * 199 + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    times: list[float] = []
    try:
        for _ in range(iterations):
            started = time.perf_counter_ns()
            os.write(fd, line)
            os.fsync(fd)
            times.append((time.perf_counter_ns() - started) / 1e6)
    finally:
        os.close(fd)
        path.unlink()
    return times


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process (all its threads) has used so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14, stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
