"""Traces: OpenTelemetry spans for a request, its lookup, each PUT attempt and the audit commit,
exported over OTLP/HTTP. Optional (`pip install chroma-sync-gateway[otel]`) and off unless
`[traces] otlp_endpoint` is set.

Off, the gateway holds `TRACES_OFF`: nothing of OpenTelemetry is imported, and the request path
pays one attribute test per step (`Traces.enabled`). On, a caller's W3C `traceparent` is
continued (its sampled flag followed; new traces sampled at `sample_ratio`), and the current
span's `traceparent` goes upstream with every call. Spans carry no secret: no token, no team
key, no `Authorization`; only ids, routes, statuses and error codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
Attributes = Mapping[str, str | int | float | bool]
_NO_SPAN: AbstractContextManager[Any] = contextlib.nullcontext()  # reused: no allocation


class Traces:
    """Tracing switched off: every method does nothing, as cheaply as it can."""

    enabled = False

    def request(self, name: str, headers: list[tuple[bytes, bytes]]
                ) -> AbstractContextManager[Any]:
        """The span of one request, continuing the caller's `traceparent` if it sent one; the
        span itself (None when off) is what `with` gives."""
        return _NO_SPAN

    def span(self, name: str, attributes: Attributes | None = None
             ) -> AbstractContextManager[Any]:
        """A span inside the current one."""
        return _NO_SPAN

    def traced(self, name: str, call: Callable[P, Awaitable[T]],
               attributes: Attributes | None = None) -> Callable[P, Awaitable[T]]:
        """`call`, run inside a client span of its own when tracing is on (as is, when off)."""
        return call

    def outgoing(self) -> list[tuple[str, str]]:
        """The headers that carry the current span upstream (`traceparent`)."""
        return []

    def shutdown(self) -> None:
        """Send what is buffered and stop the exporter."""


TRACES_OFF = Traces()


class OtelTraces(Traces):
    """Tracing through the OpenTelemetry SDK; built only when `[traces]` is configured."""

    enabled = True

    def __init__(self, *, endpoint: str, service_name: str, sample_ratio: float,
                 version: str) -> None:
        # Imported here: the SDK is an optional extra and costs memory and start-up time.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(
            resource=Resource.create({"service.name": service_name, "service.version": version}),
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        )
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("chroma-sync-gateway", version)
        self._propagator = TraceContextTextMapPropagator()
        self._server, self._client = SpanKind.SERVER, SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self._status_type = Status

    @contextlib.contextmanager
    def request(self, name: str, headers: list[tuple[bytes, bytes]]
                ) -> Iterator[Any]:
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers
                   if k in (b"traceparent", b"tracestate")}
        parent = self._propagator.extract(carrier)
        with self._tracer.start_as_current_span(
                name, context=parent, kind=self._server, record_exception=False,
                set_status_on_exception=False) as span:
            yield span

    @contextlib.contextmanager
    def span(self, name: str, attributes: Attributes | None = None
             ) -> Iterator[Any]:
        with self._tracer.start_as_current_span(
                name, attributes=attributes, record_exception=False,
                set_status_on_exception=False) as span:
            yield span

    def traced(self, name: str, call: Callable[P, Awaitable[T]],
               attributes: Attributes | None = None) -> Callable[P, Awaitable[T]]:
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            with self._tracer.start_as_current_span(
                    name, attributes=attributes, kind=self._client, record_exception=False,
                    set_status_on_exception=False) as span:
                try:
                    return await call(*args, **kwargs)
                except Exception as exc:
                    # The error's code, never its message: a message may quote upstream text.
                    span.set_status(self._status_type(self._error.status_code,
                                                      getattr(exc, "code", type(exc).__name__)))
                    raise
        return run

    def outgoing(self) -> list[tuple[str, str]]:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return list(carrier.items())

    def shutdown(self) -> None:
        self._provider.shutdown()
