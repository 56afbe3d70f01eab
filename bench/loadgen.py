"""A cheap HTTP/1.1 load generator: asyncio protocols over raw keep-alive sockets.

Each connection sends pre-built request bytes one at a time (no pipelining) and parses only
the status line and `content-length` of each answer; N connections run in parallel on one
event loop (uvloop when installed). Every run is bounded by a request count *and* a deadline.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

_HEAD_END = b"\r\n\r\n"
_CL = b"\r\ncontent-length:"


class _Conn(asyncio.Protocol):
    __slots__ = ("buf", "closed", "need", "transport", "waiter")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need = -1  # bytes of the current response, once its head is parsed
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is no subclass)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            at = head.find(_CL)
            if at < 0:
                # The benchmark only talks to servers that send content-length.
                self._fail(ConnectionError("response without content-length"))
                return
            stop = head.find(b"\r\n", at + 2)
            self.need = end + 4 + int(head[at + len(_CL): stop if stop >= 0 else None])
        if len(buf) >= self.need:
            status = int(buf[9:12])
            del buf[: self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(status)

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("server closed the connection"))


@dataclass
class LoadResult:
    connections: int
    requests: int = 0
    seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6


class _Budget:
    __slots__ = ("deadline", "remaining")

    def __init__(self, count: int, seconds: float) -> None:
        self.remaining = count
        self.deadline = time.perf_counter() + seconds


async def _worker(
    conn: _Conn, requests: Sequence[bytes], offset: int, budget: _Budget, result: LoadResult,
    record: bool,
) -> None:
    loop = asyncio.get_running_loop()
    perf_ns = time.perf_counter_ns
    perf = time.perf_counter
    latencies = result.latencies_ns
    statuses = result.statuses
    n = len(requests)
    i = offset
    transport = conn.transport
    assert transport is not None
    while budget.remaining > 0 and perf() < budget.deadline:
        budget.remaining -= 1
        waiter = loop.create_future()
        conn.waiter = waiter
        started = perf_ns()
        transport.write(requests[i % n])
        status = await waiter
        if record:
            latencies.append(perf_ns() - started)
            statuses[status] += 1
        i += 1


async def _phase(
    conns: list[_Conn], requests: Sequence[bytes], count: int, seconds: float, record: bool,
) -> LoadResult:
    result = LoadResult(connections=len(conns))
    budget = _Budget(count, seconds)
    started = time.perf_counter()
    workers = [
        _worker(conn, requests, k * 7919, budget, result, record) for k, conn in enumerate(conns)
    ]
    # A hard bound on top of the budget: a stuck server can't hang the benchmark.
    await asyncio.wait_for(asyncio.gather(*workers), seconds + 30.0)
    result.seconds = time.perf_counter() - started
    result.requests = len(result.latencies_ns) if record else count - max(0, budget.remaining)
    return result


async def run_load(
    port: int, requests: Sequence[bytes], *, connections: int, warmup: int, count: int,
    seconds: float, host: str = "127.0.0.1", between: Callable[[], object] | None = None,
) -> LoadResult:
    """Open `connections` keep-alive connections, warm up, then measure one bounded phase.

    `between` runs (blocking the loop, with nothing in flight) after the warm-up.
    """
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    try:
        for _ in range(connections):
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_Conn, host, port), 10.0)
            conns.append(protocol)
        if warmup:
            await _phase(conns, requests, warmup, max(5.0, seconds), record=False)
        if between is not None:
            between()
        return await _phase(conns, requests, count, seconds, record=True)
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()


def run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine on uvloop when installed (cheaper per request), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
