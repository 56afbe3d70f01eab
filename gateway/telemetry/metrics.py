"""Prometheus metrics. Labels hold team names and outcomes from the config, never a key."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per gateway instance, so tests and the demo never share global state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cancels = Counter(
            "chroma_sync_gateway_cancel_requests", "Cancel requests by outcome and team.",
            ["outcome", "team"], registry=r,
        )
        self.request_seconds = Histogram(
            "chroma_sync_gateway_request_duration_seconds",
            "Time from request to response, by route.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.upstream_seconds = Histogram(
            "chroma_sync_gateway_upstream_duration_seconds",
            "Time of the upstream exchange.", buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.upstream_responses = Counter(
            "chroma_sync_gateway_upstream_responses", "Upstream answers by status.",
            ["status"], registry=r,
        )
        self.upstream_failures = Counter(
            "chroma_sync_gateway_upstream_failures",
            "Upstream exchanges with no usable answer, by error code and call (cancel, get_job, "
            "list_jobs).", ["error", "call"], registry=r,
        )
        self.job_lookups = Counter(
            "chroma_sync_gateway_job_lookups",
            "Job context lookups for scope checks: hit (cached), miss (asked upstream), failed.",
            ["result"], registry=r,
        )
        self.audit_failures = Counter(
            "chroma_sync_gateway_audit_write_failures", "Failed audit log writes.", registry=r,
        )
        self.audit_suppressed = Counter(
            "chroma_sync_gateway_audit_suppressed",
            "Denied results over audit.denied_per_second, summed in audit.suppressed records.",
            registry=r,
        )
        self.audit_stdout_dropped = Counter(
            "chroma_sync_gateway_audit_stdout_dropped",
            "Audit records not mirrored to stdout because the pipe did not drain.", registry=r,
        )
        self.log_lines_dropped = Counter(
            "chroma_sync_gateway_log_lines_dropped",
            "Operational log lines dropped because stderr did not drain.", registry=r,
        )
        self.audit_records = Gauge(
            "chroma_sync_gateway_audit_records_written",
            "Audit records written since start.", registry=r,
        )
        self.audit_ready = Gauge(
            "chroma_sync_gateway_audit_ready", "1 when the audit log is writable.", registry=r,
        )
        self.audit_signing_key = Gauge(
            "chroma_sync_gateway_audit_signing_key_available",
            "0 when the configured audit signing key (audit.signing_key_file) is missing, "
            "malformed or holds the upstream token; 1 when it is usable or none is configured.",
            registry=r,
        )
        self.token_available = Gauge(
            "chroma_sync_gateway_upstream_token_available",
            "1 when a valid upstream token is loaded.", registry=r,
        )
        self.circuit_open = Gauge(
            "chroma_sync_gateway_upstream_circuit_open",
            "1 while the upstream circuit breaker is open (until a probe succeeds).", registry=r,
        )
        self.token_rotations = Counter(
            "chroma_sync_gateway_upstream_token_changes",
            "Times the upstream token file changed.", registry=r,
        )

        self.key_requests = Counter(
            "chroma_sync_gateway_key_requests",
            "Authenticated requests by team and key_id, so an unused key can be retired.",
            ["team", "key_id"], registry=r,
        )
        self.config_reloads = Counter(
            "chroma_sync_gateway_config_reloads",
            "Reloads of [[teams]] (SIGHUP or a changed config file), by result.",
            ["result"], registry=r,
        )
        for result in ("success", "failure"):
            self.config_reloads.labels(result)  # both series exist from the start
        # Only with `audit.archive` set (the gateway registers them then).
        self.archive_uploads: Counter | None = None
        self.archive_lag: Gauge | None = None

    def archive(self, lag: Callable[[], float]) -> Counter:
        """The archive's metrics: uploads by result, and the records not archived yet."""
        self.archive_uploads = Counter(
            "chroma_sync_gateway_audit_archive_uploads",
            "Objects put into the audit archive, by result (success, failure, conflict).",
            ["result"], registry=self.registry,
        )
        for result in ("success", "failure", "conflict"):
            self.archive_uploads.labels(result)
        self.archive_lag = Gauge(
            "chroma_sync_gateway_audit_archive_lag_records",
            "Audit records written and not archived yet.", registry=self.registry,
        )
        self.archive_lag.set_function(lag)
        return self.archive_uploads

    def render(self) -> bytes:
        return generate_latest(self.registry)
