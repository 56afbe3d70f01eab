"""The single-table sections of the config file: [server], [upstream], [audit], [bulk] and
[traces]."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from gateway.config.checks import Checks, shown
from gateway.config.model import (
    AuditConfig,
    BulkConfig,
    ServerConfig,
    TracesConfig,
    Transport,
    UpstreamConfig,
)

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ARCHIVE_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class SectionParser(Checks):
    """Each section's table: its keys, their values, and the rules between them."""

    def bulk(self, data: Mapping[str, Any]) -> BulkConfig:
        t = self.table(data, "bulk", {"concurrency", "max_batches"})
        return BulkConfig(
            concurrency=self.get(t, "bulk", "concurrency", lambda k, v: self.count(k, v, 1, 64),
                                 BulkConfig.concurrency),
            max_batches=self.get(t, "bulk", "max_batches", lambda k, v: self.count(k, v, 1, 64),
                                 BulkConfig.max_batches),
        )

    def traces(self, data: Mapping[str, Any]) -> TracesConfig:
        t = self.table(data, "traces", {"otlp_endpoint", "service_name", "sample_ratio"})
        d = TracesConfig()
        endpoint = self.get(t, "traces", "otlp_endpoint", self.endpoint, None)
        if endpoint and importlib.util.find_spec("opentelemetry") is None:
            raise self.fail("traces.otlp_endpoint", "needs the otel extra installed "
                            "(pip install 'chroma-sync-gateway[otel]')")
        ratio = self.get(t, "traces", "sample_ratio", self.ratio, d.sample_ratio)
        return TracesConfig(
            otlp_endpoint=endpoint or None,
            service_name=self.get(t, "traces", "service_name", self.string, d.service_name),
            sample_ratio=ratio,
        )

    def ratio(self, key: str, value: object) -> float:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0.0 <= value <= 1.0):
            raise self.fail(key, f"must be a number from 0 to 1, got {shown(value)}")
        return float(value)

    def endpoint(self, key: str, value: object) -> str:
        """An http(s) URL with a host and no credentials (a collector, not an upstream)."""
        text = self.string(key, value)
        url = urllib.parse.urlsplit(text)
        if url.scheme not in {"http", "https"} or not url.hostname or "@" in url.netloc:
            raise self.fail(key, "must be an http:// or https:// URL without credentials, got "
                            + (shown(value) if "@" not in url.netloc else "a URL with userinfo"))
        return text

    def server(self, data: Mapping[str, Any]) -> ServerConfig:
        t = self.table(data, "server", {
            "host", "port", "grace_period", "metrics_port", "metrics_host", "header_timeout",
            "keepalive_timeout", "max_connections",
        })
        d = ServerConfig()
        port = self.get(t, "server", "port", lambda k, v: self.count(k, v, 0, 65535), d.port)
        metrics_port = self.get(
            t, "server", "metrics_port", lambda k, v: self.count(k, v, 0, 65535), None)
        if metrics_port and metrics_port == port:
            raise self.fail("server.metrics_port", f"must differ from server.port, got {port}")
        return ServerConfig(
            host=self.get(t, "server", "host", self.string, d.host),
            port=port,
            grace_period=self.get(t, "server", "grace_period", self.positive, d.grace_period),
            metrics_port=metrics_port,
            metrics_host=self.get(t, "server", "metrics_host", self.string, d.metrics_host),
            header_timeout=self.get(
                t, "server", "header_timeout", self.positive, d.header_timeout),
            keepalive_timeout=self.get(
                t, "server", "keepalive_timeout", self.positive, d.keepalive_timeout),
            max_connections=self.get(
                t, "server", "max_connections", lambda k, v: self.count(k, v, 1, 1_000_000),
                d.max_connections,
            ),
        )

    def upstream(self, data: Mapping[str, Any]) -> UpstreamConfig:
        allowed = {"base_url", "token_file", "token_env", "ca_file", "connect_timeout", "timeout"}
        t = self.table(data, "upstream", allowed | {
            "max_connections", "transport", "lookup_cache", "retries", "deadline",
            "breaker_failures", "breaker_seconds",
        })
        d = UpstreamConfig()
        token_file = self.get(t, "upstream", "token_file", self.string, None)
        token_env = self.get(t, "upstream", "token_env", self.env_name, None)
        if (token_file is None) == (token_env is None):
            raise self.fail(
                "upstream.token_file", "or upstream.token_env must be set (exactly one)"
            )
        ca_file = self.get(t, "upstream", "ca_file", self.readable_file, None)
        return UpstreamConfig(
            base_url=self.get(t, "upstream", "base_url", self.base_url, d.base_url),
            token_file=token_file,
            token_env=token_env,
            ca_file=ca_file,
            connect_timeout=self.get(
                t, "upstream", "connect_timeout", self.positive, d.connect_timeout
            ),
            timeout=self.get(t, "upstream", "timeout", self.positive, d.timeout),
            max_connections=self.get(
                t, "upstream", "max_connections", lambda k, v: self.count(k, v, 1, 10_000),
                d.max_connections,
            ),
            transport=self.get(t, "upstream", "transport", self.transport, d.transport),
            lookup_cache=self.get(
                t, "upstream", "lookup_cache", lambda k, v: self.count(k, v, 0, 10_000_000),
                d.lookup_cache,
            ),
            retries=self.get(
                t, "upstream", "retries", lambda k, v: self.count(k, v, 0, 10), d.retries),
            deadline=self.get(t, "upstream", "deadline", self.positive, d.deadline),
            breaker_failures=self.get(
                t, "upstream", "breaker_failures", lambda k, v: self.count(k, v, 1, 10**6),
                d.breaker_failures,
            ),
            breaker_seconds=self.get(
                t, "upstream", "breaker_seconds", self.positive, d.breaker_seconds),
        )

    def transport(self, key: str, value: object) -> Transport:
        if value == "native" or value == "aiohttp" or value == "httpx":
            return value
        raise self.fail(key, f'must be "native", "aiohttp" or "httpx", got {shown(value)}')

    def env_name(self, key: str, value: object) -> str:
        text = self.string(key, value)
        if not ENV_NAME_RE.fullmatch(text):
            raise self.fail(key, f"must be an environment variable name, got {shown(value)}")
        return text

    def readable_file(self, key: str, value: object) -> str:
        text = self.string(key, value)
        if not os.path.isfile(text) or not os.access(text, os.R_OK):
            raise self.fail(key, f"must name a readable file, got {shown(value)}")
        return text

    def base_url(self, key: str, value: object) -> str:
        text = self.string(key, value)
        url = urllib.parse.urlsplit(text)
        if "@" in url.netloc:
            # Not echoed: the userinfo may be a password.
            raise self.fail(key, "must not hold credentials (user:password@)")
        problem = None
        if url.scheme not in {"http", "https"} or not url.hostname:
            problem = "must be an http:// or https:// URL"
        elif url.username or url.password or url.query or url.fragment or "%" in text:
            problem = "must not hold credentials, a query, a fragment or escapes"
        elif url.scheme == "http" and not _is_loopback(url.hostname):
            # The token would cross the network in clear text.
            problem = "must use https (http is allowed only for a loopback host)"
        elif "/." in url.path or "//" in url.path:
            problem = "must not hold dot segments or empty segments in its path"
        if problem:
            raise self.fail(key, f"{problem}, got {shown(value)}")
        try:
            url.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise self.fail(key, f"has a malformed port, got {shown(value)}") from None
        return text.rstrip("/")

    def audit(self, data: Mapping[str, Any]) -> AuditConfig:
        allowed = {
            "path", "fsync", "hmac_key_file", "checkpoint_every", "checkpoint_seconds",
            "stdout", "max_bytes", "keep_files", "record_context", "denied_per_second",
            "signing_key_file", "origin", "instance", "checkpoint_file",
            "archive",
        }
        t = self.table(data, "audit", allowed)
        if "path" not in t:
            raise self.fail("audit.path", "is required")
        d = AuditConfig(path="")
        max_bytes = self.get(
            t, "audit", "max_bytes", lambda k, v: self.count(k, v, 65536, 2**50), None
        )
        keep_files = self.get(
            t, "audit", "keep_files", lambda k, v: self.count(k, v, 1, 10**6), None
        )
        return AuditConfig(
            path=self.string("audit.path", t["path"]),
            fsync=self.get(t, "audit", "fsync", self.boolean, d.fsync),
            hmac_key_file=self.get(t, "audit", "hmac_key_file", self.string, None),
            checkpoint_every=self.get(
                t, "audit", "checkpoint_every", lambda k, v: self.count(k, v, 1, 10**9),
                d.checkpoint_every,
            ),
            checkpoint_seconds=self.get(
                t, "audit", "checkpoint_seconds", self.positive, d.checkpoint_seconds
            ),
            stdout=self.get(t, "audit", "stdout", self.boolean, d.stdout),
            max_bytes=max_bytes,
            keep_files=keep_files,
            record_context=self.get(t, "audit", "record_context", self.boolean,
                                    d.record_context),
            denied_per_second=self.get(
                t, "audit", "denied_per_second", lambda k, v: self.count(k, v, 1, 10**6),
                d.denied_per_second,
            ),
            signing_key_file=self.get(t, "audit", "signing_key_file", self.string, None),
            origin=self.get(t, "audit", "origin", self.one_line_name, None),
            instance=self.get(t, "audit", "instance", self.one_line_name, None),
            checkpoint_file=self.get(t, "audit", "checkpoint_file", self.string, None),
            archive=self.get(t, "audit", "archive", self.archive_url, None),
        )

    def archive_url(self, key: str, value: object) -> str:
        text = self.string(key, value)
        url = urllib.parse.urlsplit(text)
        if url.scheme == "file" and not url.netloc and url.path.startswith("/") and \
                url.path.strip("/") and not (url.query or url.fragment):
            return text
        if url.scheme == "s3" and ARCHIVE_BUCKET_RE.fullmatch(url.netloc) and \
                not (url.query or url.fragment) and ".." not in url.path.split("/"):
            if importlib.util.find_spec("obstore") is None:
                raise self.fail(key, "is an s3:// URL, which needs the s3 extra: pip install "
                                "'chroma-sync-gateway[s3]'")
            return text
        raise self.fail(key, f"must be file:///PATH or s3://BUCKET/PREFIX, got {shown(value)}")

    def one_line_name(self, key: str, value: object) -> str:
        """A checkpoint origin or an instance name: 1 to 255 characters, no space or control
        character (the origin is the first line of every signed checkpoint)."""
        text = self.string(key, value)
        if len(text) > 255 or any(c.isspace() or not c.isprintable() for c in text):
            raise self.fail(key, f"must be 1 to 255 characters without spaces or control "
                            f"characters, got {shown(value)}")
        return text


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
