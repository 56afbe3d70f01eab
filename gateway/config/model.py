"""The configuration's frozen value objects, as `gateway.config.load` builds them from TOML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.config.scope import UNRESTRICTED, Scope

Transport = Literal["native", "aiohttp", "httpx"]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    grace_period: float = 10.0
    metrics_port: int | None = None  # `/metrics` on a listener of its own as well
    metrics_host: str = "127.0.0.1"
    header_timeout: float = 5.0  # seconds for a request head (and a cancel's body) to arrive
    keepalive_timeout: float = 5.0  # seconds an idle kept-alive connection stays open
    max_connections: int = 1000  # open connections; past that, 503 `overloaded` and closed


@dataclass(frozen=True)
class UpstreamConfig:
    base_url: str = "https://sync.trychroma.com"
    token_file: str | None = None
    token_env: str | None = None
    ca_file: str | None = None
    connect_timeout: float = 2.0
    timeout: float = 10.0
    max_connections: int = 100
    transport: Transport = "native"
    lookup_cache: int = 10_000  # job contexts kept, least recently used out
    retries: int = 2  # PUTs after the first, when safe
    deadline: float = 15.0  # seconds from arrival for every PUT of one cancel
    breaker_failures: int = 5  # consecutive failed exchanges that open the circuit
    breaker_seconds: float = 10.0  # how long it stays open before a probe


@dataclass(frozen=True)
class AuditConfig:
    path: str
    fsync: bool = True
    hmac_key_file: str | None = None
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 300.0
    stdout: bool = False
    max_bytes: int | None = None
    keep_files: int | None = None  # rotated files kept; None keeps them all
    record_context: bool = False  # look up every cancel, so every record names what it touched
    denied_per_second: int = 20  # result records a second per client for unauthenticated refusals
    signing_key_file: str | None = None  # Ed25519 signed-note key: checkpoints carry a `note`
    origin: str | None = None  # the checkpoints' origin line; None: chroma-sync-gateway/<chain>
    instance: str | None = None  # names the writer in audit.chain/opened; None: the host name
    checkpoint_file: str | None = None  # the newest signed checkpoint, atomically replaced
    archive: str | None = None  # file:///PATH or s3://BUCKET/PREFIX: segments cut at checkpoints


@dataclass(frozen=True)
class TeamConfig:
    name: str
    keys: tuple[str, ...]
    scope: Scope = UNRESTRICTED
    # "NAMESPACE/NAME" (any [[issuers]] entry's tokens) or "ISSUER/NAMESPACE/NAME" (that one's)
    service_accounts: tuple[str, ...] = ()
    enabled: bool = True
    rate_limit: float = 50.0
    burst: int = 100
    max_in_flight: int = 32  # concurrent cancels of the team


@dataclass(frozen=True)
class BulkConfig:
    concurrency: int = 4  # cancels of one bulk cancel in flight at once
    max_batches: int = 2  # bulk cancels of one team running at once


@dataclass(frozen=True)
class TracesConfig:
    otlp_endpoint: str | None = None  # OTLP/HTTP traces endpoint; None: tracing off
    service_name: str = "chroma-sync-gateway"
    sample_ratio: float = 1.0  # of the traces the gateway starts; a caller's decision is kept


@dataclass(frozen=True)
class IssuerConfig:
    """A cluster whose projected service-account tokens (JWTs) are accepted."""

    name: str
    issuer: str  # the tokens' `iss`
    audience: str  # required in the tokens' `aud`
    jwks_file: str  # the issuer's public keys (JSON Web Key Set), re-read when it changes


@dataclass(frozen=True)
class Config:
    source: str
    upstream: UpstreamConfig
    audit: AuditConfig
    teams: tuple[TeamConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    issuers: tuple[IssuerConfig, ...] = ()
    bulk: BulkConfig = field(default_factory=BulkConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
