"""Profiles of the gateway process: py-spy sampling (when installed) or cProfile.

py-spy attaches to the running gateway by pid, samples for a fixed duration, and writes
collapsed stacks; only on-CPU samples are kept (idle threads waiting in epoll or a lock are
not counted). The summary is self time by function, inclusive time by function, and self
time by package, as shares of all on-CPU samples; file paths are cut to module-relative
names.

The cProfile variant runs the gateway as `python -m cProfile -o FILE -m gateway serve ...`
and, after a graceful stop, reports each function's own CPU time per request (deterministic
profiling inflates small functions, so read it for ranking and call counts, not absolutes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_MARKERS = ("site-packages/", "/lib/python3.", "/bench/", "/gateway/", "/tests/")


def executable() -> str | None:
    """py-spy on PATH, or beside this interpreter (`pip install py-spy` into the .venv)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))


def available() -> bool:
    return executable() is not None


def short_file(path: str) -> str:
    """`.../site-packages/uvicorn/protocols/x.py` -> `uvicorn/protocols/x.py`, no host paths."""
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1]
    for marker in ("/gateway/", "/bench/", "/tests/"):
        if marker in path:
            return marker.strip("/") + "/" + path.rsplit(marker, 1)[1]
    match = re.search(r"/lib/python3\.\d+/(.*)$", path)
    if match:
        return "stdlib/" + match.group(1)
    return path.rsplit("/", 1)[-1]


def package_of(short: str) -> str:
    if short.startswith("stdlib/"):
        rest = short[len("stdlib/"):]
        return "stdlib:" + rest.split("/", 1)[0].removesuffix(".py")
    return short.split("/", 1)[0].removesuffix(".py")


# Self time is credited to the innermost frame (leaf first) that one of these rules claims;
# stdlib asyncio/json/hashlib frames are passed over, so e.g. json encoding done for the audit
# seal counts as "audit seal". First matching rule wins.
_COMPONENTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (component, file prefixes, function names)
    ("audit: os.write + os.fdatasync (on the event loop)", (), ("LogFile.append",)),
    ("inbound HTTP: the response's socket write", (), ("OneWriteResponses.write",)),
    ("audit: seal records (json + sha256)", ("gateway/audit/chain.py",),
     ("ChainHead.seal_batch", "ChainHead.seal")),
    ("audit: build records + timestamps", (), ("Gateway._record", "utc_timestamp")),
    ("audit: queue and flush (gateway.audit: stat, settle)",
     ("gateway/audit/writer.py", "gateway/audit/files.py", "gateway/audit/head.py"), ()),
    ("threads: file watching reads, executor",
     ("stdlib/concurrent/", "stdlib/threading.py", "stdlib/queue.py"),
     ("BaseEventLoop.run_in_executor", "_chain_future.<locals>._call_set_state",
      "_chain_future.<locals>._call_check_cancel", "_copy_future_state", "wrap_future")),
    ("access log (structlog)", ("structlog/",), ()),
    ("metrics (prometheus_client)", ("prometheus_client/",), ()),
    ("upstream: aiohttp", ("aiohttp/", "multidict/", "yarl/", "aiohappyeyeballs/",
                           "propcache/", "frozenlist/", "aiosignal/"), ()),
    ("upstream: httpx_aiohttp adapter", ("httpx_aiohttp/",), ()),
    ("upstream: httpcore/h11/anyio", ("httpcore/", "h11/", "anyio/", "sniffio/"), ()),
    ("upstream: httpx client", ("httpx/",), ()),
    ("upstream: gateway.transport (native)", ("gateway/upstream/transport.py",), ()),
    ("upstream: gateway.upstream + mapping", ("gateway/upstream/client.py",
        "gateway/upstream/mapping.py"), ()),
    ("auth: key hash + compare", ("gateway/access/auth.py", "gateway/access/keys.py"), ()),
    ("inbound HTTP (uvicorn + httptools)", ("uvicorn/", "httptools/"), ()),
    ("gateway app (checks, routing, errors)", ("gateway/",), ()),
    ("event loop itself (uvloop C: epoll, socket I/O)", ("stdlib/asyncio/runners.py",), ()),
)


def component_of(frames: list[tuple[str, str, str]]) -> str:
    """`frames` root first, as (function, short file, package); returns the component."""
    for func, short, _ in reversed(frames):
        for name, prefixes, funcs in _COMPONENTS:
            if func in funcs or short.startswith(prefixes or ("\0",)):
                return name
    return "other: " + (frames[-1][2] if frames else "?")


@dataclass
class Profile:
    samples: int = 0
    rate: int = 0
    seconds: float = 0.0
    by_thread: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    by_package: Counter[str] = field(default_factory=Counter)
    by_component: Counter[str] = field(default_factory=Counter)

    def share(self, n: int) -> float:
        return 100.0 * n / self.samples if self.samples else 0.0

    def as_dict(self, top: int = 20) -> dict[str, object]:
        return {
            "samples": self.samples, "rate_hz": self.rate, "seconds": self.seconds,
            "cpu_busy_pct": round(100.0 * self.samples / (self.rate * self.seconds), 1)
            if self.rate and self.seconds else None,
            "threads": dict(self.by_thread),
            "self_top": [[k, round(self.share(v), 1)] for k, v in self.self_time.most_common(top)],
            "inclusive_top": [[k, round(self.share(v), 1)]
                              for k, v in self.inclusive.most_common(top)],
            "packages": [[k, round(self.share(v), 1)] for k, v in self.by_package.most_common()],
            "components": [[k, round(self.share(v), 1)]
                           for k, v in self.by_component.most_common()],
        }


def _parse_frame(frame: str) -> tuple[str, str, str]:
    """(function, short file, package) of one py-spy frame."""
    match = _FRAME.match(frame)
    if not match:
        return frame, "?", "?"
    short = short_file(match.group("file"))
    return match.group("func"), short, package_of(short)


def summarize(raw: str, rate: int, seconds: float) -> Profile:
    profile = Profile(rate=rate, seconds=seconds)
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames[0].split(": ", 1)[-1] if ": " in frames[0] else frames[0]
            frames = frames[1:]
        thread = re.sub(r"_\d+$", "", thread)  # audit-writer_0 -> audit-writer
        if not frames:
            continue
        profile.samples += count
        profile.by_thread[thread] += count
        parsed = [_parse_frame(f) for f in frames]
        names = [f"{func} ({short})" for func, short, _ in parsed]
        profile.self_time[names[-1]] += count
        profile.by_package[parsed[-1][2]] += count
        profile.by_component[component_of(parsed)] += count
        for name in set(names):
            profile.inclusive[name] += count
    return profile


class Sampler:
    """`py-spy record` attached to `pid` for `seconds`; stops by itself."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 1000) -> None:
        self.seconds = seconds
        self.rate = rate
        self.out = out
        self._process = subprocess.Popen(
            [executable() or "py-spy", "record", "--pid", str(pid),
             "--duration", str(round(seconds)), "--rate", str(rate), "--format", "raw",
             "--output", str(out), "--threads", "--nonblocking", "--full-filenames"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def finish(self) -> Profile | None:
        try:
            _, err = self._process.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            return None
        if not self.out.exists():
            message = err.decode(errors="replace").strip().splitlines()
            print(f"  py-spy failed: {message[-1] if message else 'no output'}")
            return None
        return summarize(self.out.read_text(errors="replace"), self.rate, self.seconds)


def cprofile_summary(stats_path: Path, requests: int, top: int = 25) -> dict[str, object]:
    """Own (tottime) and inclusive (cumtime) CPU microseconds per request, top functions."""
    import pstats

    stats = pstats.Stats(str(stats_path))
    raw = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _) in raw.items():
        short = short_file(filename) if filename.startswith("/") else filename
        rows.append((f"{func} ({short}:{line})", nc, tt, ct))
    total = sum(r[2] for r in rows)
    # Per-request work only: drop start-up (imports, TLS context) and the event loop's own
    # frame, whose time is mostly waiting in epoll.
    rows = [r for r in rows if r[1] >= requests // 2 and "<module>" not in r[0]
            and "stdlib/asyncio/runners.py" not in r[0]]

    def fmt(r: tuple[str, int, float, float]) -> list[object]:
        return [r[0], round(r[1] / requests, 2), round(r[2] * 1e6 / requests, 1),
                round(r[3] * 1e6 / requests, 1)]

    by_own = sorted(rows, key=lambda r: r[2], reverse=True)[:top]
    gateway_cum = sorted(
        (r for r in rows if r[0].split("(", 1)[1].startswith(
            ("gateway/", "structlog/", "prometheus_client/", "httpx/_client", "aiohttp/client.py",
             "httpx_aiohttp/", "uvicorn/protocols/http/httptools_impl"))),
        key=lambda r: r[3], reverse=True)[:top]
    return {
        "requests": requests,
        "profiled_us_per_request_incl_startup_and_idle": round(total * 1e6 / requests, 1),
        "columns": ["function", "calls/request", "own us/request", "inclusive us/request"],
        "own_top": [fmt(r) for r in by_own],
        "inclusive_top": [fmt(r) for r in gateway_cum],
    }
