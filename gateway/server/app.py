"""The gateway's lifecycle: it builds the parts from the config, starts and stops them, and
watches the files it re-reads while running (the secrets, the config, each JWKS).

Request handling is elsewhere: `gateway.server.router` routes each request, and
`gateway.cancel.pipeline` is the way one cancel goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import structlog
from starlette.applications import Starlette

from gateway import __version__
from gateway.access.policy import Policy, build_policy
from gateway.asgi import Receive, Scope, Send
from gateway.audit.archive.archiver import Archiver
from gateway.audit.suppression import DeniedSuppression
from gateway.audit.writer import AuditLog
from gateway.cancel.pipeline import CancelPipeline
from gateway.config.model import Config
from gateway.secrets.sources import (
    MIN_HMAC_KEY_CHARS,
    FileSecret,
    SecretSource,
    fingerprint,
    upstream_token_source,
)
from gateway.secrets.watch import Watcher
from gateway.server.reload import Reloader
from gateway.server.router import Router
from gateway.telemetry import logs
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.traces import TRACES_OFF, Traces
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import UpstreamClient
from gateway.upstream.lookup import JobLookup

log = structlog.get_logger("gateway")


def traces_for(config: Config) -> Traces:
    """Tracing as `[traces]` says: off (nothing imported) unless an endpoint is set."""
    settings = config.traces
    if settings.otlp_endpoint is None:
        return TRACES_OFF
    from gateway.telemetry.traces import OtelTraces

    return OtelTraces(endpoint=settings.otlp_endpoint, service_name=settings.service_name,
                      sample_ratio=settings.sample_ratio, version=__version__)


class Gateway:
    """The running gateway: its parts, their start and stop, and the files it watches. It is
    the ASGI app too, by handing each request to its `Router`."""

    def __init__(
        self,
        config: Config,
        *,
        token: SecretSource,
        audit: AuditLog,
        upstream: UpstreamClient,
        metrics: Metrics,
        policy: Policy,
        secrets: tuple[SecretSource, ...] = (),
        traces: Traces = TRACES_OFF,
    ) -> None:
        self.token = token
        self.audit = audit
        self.archiver: Archiver | None = None  # with `audit.archive`: set by from_config
        self.upstream = upstream
        self.metrics = metrics
        breaker = CircuitBreaker(
            failures=config.upstream.breaker_failures, seconds=config.upstream.breaker_seconds,
            on_change=lambda opened: metrics.circuit_open.set(1 if opened else 0),
        )
        upstream.on_exchange = breaker.record  # every exchange, lookups included
        if traces.enabled:
            upstream.trace_headers = traces.outgoing
        self.pipeline = CancelPipeline(
            config, policy=policy, token=token, audit=audit, upstream=upstream,
            lookup=JobLookup(upstream, cache_size=config.upstream.lookup_cache),
            breaker=breaker, metrics=metrics, traces=traces,
            denied=DeniedSuppression(
                config.audit.denied_per_second, write=audit.write_later,
                on_suppressed=metrics.audit_suppressed.inc,
            ),
        )
        self.router = Router(self.pipeline, lifespan=self._lifespan,
                             update_gauges=self._update_gauges)
        self._secrets = secrets or (token,)
        # Files re-read while running; other pieces (config, JWKS) register theirs here too.
        self.watcher = Watcher()
        for source in self._secrets:
            if isinstance(source, FileSecret):
                self.watcher.add(source.file, functools.partial(self._secret_changed, source))
        self._watcher: asyncio.Task[None] | None = None
        self.reloader = Reloader(self.pipeline, self.watcher)
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def config(self) -> Config:
        """The running config (its `[[teams]]` swapped by a reload)."""
        return self.pipeline.config

    @property
    def policy(self) -> Policy:
        """The running policy; a reload swaps it whole."""
        return self.pipeline.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.pipeline.policy = policy

    @classmethod
    def from_config(cls, config: Config, *, audit: AuditLog | None = None) -> Gateway:
        up = config.upstream
        token = upstream_token_source(up.token_file, up.token_env)
        metrics = Metrics()
        mac_key = (
            FileSecret(config.audit.hmac_key_file, what="audit HMAC key",
                       min_chars=MIN_HMAC_KEY_CHARS)
            if config.audit.hmac_key_file
            else None
        )
        signing_key = None
        if config.audit.signing_key_file:
            from gateway.audit.signing import SigningKeySource  # loads cryptography

            signing_key = SigningKeySource(config.audit.signing_key_file)
        archiver = None
        if config.audit.archive is not None:
            archiver = Archiver(config.audit.archive, config.audit.path,
                                on_upload=lambda result: uploads.labels(result).inc(),
                                on_progress=lambda: written.plan_retention())
            uploads = metrics.archive(archiver.lag)
        if audit is None:
            audit = AuditLog(config.audit, mac_key=mac_key, token=token, signing_key=signing_key,
                             on_failure=metrics.audit_failures.inc,
                             on_stdout_drop=metrics.audit_stdout_dropped.inc,
                             archive=archiver)
        written = audit
        logs.count_dropped_lines(metrics.log_lines_dropped.inc)
        gateway = cls(
            config,
            token=token,
            audit=audit,
            upstream=UpstreamClient(up),
            metrics=metrics,
            policy=build_policy(config, metrics),
            secrets=(token, *(s for s in (mac_key, signing_key) if s is not None)),
            traces=traces_for(config),
        )
        gateway.archiver = archiver
        for issuer in gateway.policy.issuers:  # each JWKS, re-read when it changes
            gateway.watcher.add(issuer.file, issuer.adopt)
        return gateway

    # -- lifecycle --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        for source in self._secrets:
            source.refresh()
            self._report_secret(source, initial=True)
        self._update_gauges()
        await self.audit.start()
        if self.archiver is not None:
            self.archiver.start()  # its own process: never waited for, never in readiness
        self.reloader.start()
        self._watcher = asyncio.get_running_loop().create_task(self.watcher.run())
        self._sweep_denied()
        log.info(
            "gateway.started", upstream=self.config.upstream.base_url,
            audit_path=self.audit.path, teams=len(self.config.teams),
            transport=self.upstream.transport_name,
        )

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.reloader.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.pipeline.denied.sweep(everything=True)
        await self.audit.close()
        if self.archiver is not None:
            await self.archiver.close()  # after the last checkpoint: it is put if it can be
        await self.upstream.aclose()
        # Last: the spans of the cancels that just finished are sent too.
        await asyncio.to_thread(self.pipeline.traces.shutdown)
        log.info("gateway.stopped", audit_records=self.audit.records_written)

    def drain(self) -> None:
        """SIGTERM: a bulk cancel starts no further cancels."""
        self.pipeline.draining = True

    def _secret_changed(self, source: FileSecret) -> None:
        if source.update():
            self._report_secret(source, initial=False)
        self._update_gauges()

    def _sweep_denied(self) -> None:
        """Once a second: write the `audit.suppressed` summaries of seconds gone by."""
        self.pipeline.denied.sweep()
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep_denied)

    def _report_secret(self, source: SecretSource, *, initial: bool) -> None:
        name = source.what.lower().replace(" ", "_")
        if source.value is not None:
            event = f"{name}.loaded" if initial else f"{name}.rotated"
            log.info(event, fingerprint=fingerprint(source.value))
            if not initial and source is self.token:
                self.metrics.token_rotations.inc()
        else:
            log.error(f"{name}.unavailable", problem=source.problem)

    def _update_gauges(self) -> None:
        self.metrics.token_available.set(1 if self.token.available else 0)
        self.metrics.audit_ready.set(1 if self.audit.ready else 0)
        # 0 only for a configured key that can't be used, so that one alert fits every gateway.
        unusable = (self.config.audit.signing_key_file is not None
                    and self.audit.keeper.signer() is None)
        self.metrics.audit_signing_key.set(0 if unusable else 1)
        self.metrics.audit_records.set(self.audit.records_written)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # In-process callers (tests); the server is handed `router` itself, one frame fewer.
        await self.router(scope, receive, send)
