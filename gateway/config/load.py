"""Configuration: one TOML file, parsed once into frozen, validated value objects.

Every problem is reported as one line that names the file, the key and what is wrong, e.g.
`config.toml: upstream.timeout must be a positive number, got "ten"`. Unknown keys are errors.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from gateway.config.scope import KINDS, UNRESTRICTED, Scope, ScopeProblem
from gateway.errors import ConfigError

ENV_CONFIG = "CHROMA_SYNC_GATEWAY_CONFIG"
DEFAULT_CONFIG = "config.toml"

STORED_KEY_RE = re.compile(r"sha256:[0-9a-f]{64}")
TEAM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Transport = Literal["native", "aiohttp", "httpx"]
BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Kubernetes names: a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain.
SERVICE_ACCOUNT_RE = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


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


@dataclass(frozen=True)
class TeamConfig:
    name: str
    keys: tuple[str, ...]
    scope: Scope = UNRESTRICTED
    service_accounts: tuple[str, ...] = ()  # "NAMESPACE/NAME", verified by an [[issuers]] entry
    enabled: bool = True
    rate_limit: float = 50.0
    burst: int = 100
    max_in_flight: int = 32  # concurrent cancels of the team


@dataclass(frozen=True)
class BulkConfig:
    concurrency: int = 4  # cancels of one bulk cancel in flight at once


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


def config_path(explicit: str | None) -> str:
    """`--config`, else `$CHROMA_SYNC_GATEWAY_CONFIG`, else `./config.toml`."""
    return explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG


def load(path: str) -> Config:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: can't be read ({exc.strerror})") from None
    return loads(raw, source=path)


def loads(raw: bytes, *, source: str) -> Config:
    """Parse a config file's bytes (as read by `load`, or by a reload)."""
    path = source
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, source=path)


def parse(data: Mapping[str, Any], *, source: str = DEFAULT_CONFIG) -> Config:
    return _Parser(source).config(data)


T = TypeVar("T")


def _shown(value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = str(value)  # as TOML spells it: nan, inf, -inf
    elif isinstance(value, str | int | float):
        text = json.dumps(value)
    elif isinstance(value, list):
        text = "an array"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _key_name(name: str) -> str:
    """A key as written in the file; quoted and escaped unless bare (keeps messages one line)."""
    return name if BARE_KEY_RE.fullmatch(name) else _shown(name)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key} {problem}")

    def table(self, data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
        value = data.get(key.rsplit(".", 1)[-1], {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {_shown(value)}")
        for name in value:
            if name not in allowed:
                raise self.fail(f"{key}.{_key_name(name)}", "is not a known key")
        return value

    def get(
        self,
        table: Mapping[str, Any],
        prefix: str,
        name: str,
        convert: Callable[[str, object], T],
        default: T,
    ) -> T:
        if name not in table:
            return default
        return convert(f"{prefix}.{name}", table[name])

    # Converters: each takes the full key name and the raw TOML value.

    def string(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {_shown(value)}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise self.fail(key, "must not hold control characters")
        return value

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_shown(value)}")
        return value

    def positive(self, key: str, value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.fail(key, f"must be a positive number, got {_shown(value)}")
        return float(value)

    def count(self, key: str, value: object, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(
                key, f"must be a whole number from {low} to {high}, got {_shown(value)}"
            )
        return value

    def config(self, data: Mapping[str, Any]) -> Config:
        for name in data:
            if name not in {"server", "upstream", "audit", "teams", "issuers", "bulk"}:
                raise self.fail(_key_name(name), "is not a known key")
        issuers = self.issuers(data)
        config = Config(
            source=self.source,
            server=self.server(data),
            upstream=self.upstream(data),
            audit=self.audit(data),
            teams=self.teams(data, has_issuers=bool(issuers)),
            issuers=issuers,
            bulk=self.bulk(data),
        )
        if _same_file(config.audit.hmac_key_file, config.upstream.token_file):
            # Auditors get the HMAC key; they must never get the Chroma token with it.
            raise self.fail("audit.hmac_key_file", "must not be the upstream token file "
                            "(upstream.token_file)")
        return config

    def bulk(self, data: Mapping[str, Any]) -> BulkConfig:
        t = self.table(data, "bulk", {"concurrency"})
        return BulkConfig(
            concurrency=self.get(t, "bulk", "concurrency", lambda k, v: self.count(k, v, 1, 64),
                                 BulkConfig.concurrency),
        )

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
        raise self.fail(key, f'must be "native", "aiohttp" or "httpx", got {_shown(value)}')

    def env_name(self, key: str, value: object) -> str:
        text = self.string(key, value)
        if not ENV_NAME_RE.fullmatch(text):
            raise self.fail(key, f"must be an environment variable name, got {_shown(value)}")
        return text

    def readable_file(self, key: str, value: object) -> str:
        text = self.string(key, value)
        if not os.path.isfile(text) or not os.access(text, os.R_OK):
            raise self.fail(key, f"must name a readable file, got {_shown(value)}")
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
            raise self.fail(key, f"{problem}, got {_shown(value)}")
        try:
            url.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise self.fail(key, f"has a malformed port, got {_shown(value)}") from None
        return text.rstrip("/")

    def audit(self, data: Mapping[str, Any]) -> AuditConfig:
        allowed = {
            "path", "fsync", "hmac_key_file", "checkpoint_every", "checkpoint_seconds",
            "stdout", "max_bytes", "keep_files", "record_context", "denied_per_second",
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
        )

    def teams(
        self, data: Mapping[str, Any], *, has_issuers: bool = False
    ) -> tuple[TeamConfig, ...]:
        raw = data.get("teams")
        if raw is None:
            raise self.fail("teams", "is required: at least one [[teams]] table")
        if not isinstance(raw, list) or not raw:
            raise self.fail("teams", f"must be one or more [[teams]] tables, got {_shown(raw)}")
        teams: list[TeamConfig] = []
        seen_names: set[str] = set()
        seen_keys: set[str] = set()
        seen_accounts: dict[str, str] = {}
        for index, entry in enumerate(raw):
            prefix = f"teams[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(prefix, f"must be a table, got {_shown(entry)}")
            for name in entry:
                if name not in {"name", "keys", "scope", "enabled", "rate_limit", "burst",
                                "service_accounts", "max_in_flight"}:
                    raise self.fail(f"{prefix}.{_key_name(name)}", "is not a known key")
            if "name" not in entry:
                raise self.fail(f"{prefix}.name", "is required")
            name = self.string(f"{prefix}.name", entry["name"])
            if not TEAM_NAME_RE.fullmatch(name):
                raise self.fail(
                    f"{prefix}.name",
                    f"must be 1 to 64 of [A-Za-z0-9._-], starting alphanumeric, got {_shown(name)}",
                )
            if name in seen_names:
                raise self.fail(f"{prefix}.name", f"repeats team {_shown(name)}")
            seen_names.add(name)
            # Keys, service accounts, or both: a team needs at least one way in.
            accounts: tuple[str, ...] = ()
            if "service_accounts" in entry:
                accounts = self.service_accounts(
                    f"{prefix}.service_accounts", entry["service_accounts"], name, seen_accounts,
                    has_issuers=has_issuers,
                )
            keys: tuple[str, ...] = ()
            if "keys" in entry or not accounts:
                keys = self.stored_keys(f"{prefix}.keys", entry.get("keys"), seen_keys)
            rate = self.get(entry, prefix, "rate_limit", self.positive, TeamConfig.rate_limit)
            burst = self.get(
                entry, prefix, "burst", lambda k, v: self.count(k, v, 1, 10**9),
                max(1, math.ceil(rate * 2)),
            )
            teams.append(
                TeamConfig(
                    name=name,
                    keys=keys,
                    scope=self.scope(f"{prefix}.scope", entry.get("scope")),
                    service_accounts=accounts,
                    enabled=self.get(entry, prefix, "enabled", self.boolean, True),
                    rate_limit=rate,
                    burst=burst,
                    max_in_flight=self.get(
                        entry, prefix, "max_in_flight", lambda k, v: self.count(k, v, 1, 10**6),
                        TeamConfig.max_in_flight,
                    ),
                )
            )
        return tuple(teams)

    def service_accounts(
        self, key: str, value: object, team: str, seen: dict[str, str], *, has_issuers: bool
    ) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, f'must be a non-empty array of "NAMESPACE/NAME", got '
                                 f"{_shown(value)}")
        if not has_issuers:
            raise self.fail(key, "needs an [[issuers]] entry to verify the accounts' tokens")
        accounts: list[str] = []
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            if not isinstance(item, str) or not SERVICE_ACCOUNT_RE.fullmatch(item):
                raise self.fail(
                    where, f'must be "NAMESPACE/NAME" (Kubernetes names), got {_shown(item)}')
            if item in seen:
                # One account, one team: otherwise its key_id would name two principals.
                raise self.fail(where, f"repeats {_shown(item)}, already a service account of "
                                       f"team {_shown(seen[item])}")
            seen[item] = team
            accounts.append(item)
        return tuple(accounts)

    def issuers(self, data: Mapping[str, Any]) -> tuple[IssuerConfig, ...]:
        raw = data.get("issuers")
        if raw is None:
            return ()
        if not isinstance(raw, list) or not raw:
            raise self.fail("issuers", f"must be one or more [[issuers]] tables, got {_shown(raw)}")
        issuers: list[IssuerConfig] = []
        for index, entry in enumerate(raw):
            prefix = f"issuers[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(prefix, f"must be a table, got {_shown(entry)}")
            for name in entry:
                if name not in {"name", "issuer", "audience", "jwks_file"}:
                    raise self.fail(f"{prefix}.{_key_name(name)}", "is not a known key")
            values: dict[str, str] = {}
            for name in ("name", "issuer", "audience", "jwks_file"):
                if name not in entry:
                    raise self.fail(f"{prefix}.{name}", "is required")
                values[name] = self.string(f"{prefix}.{name}", entry[name])
            if not TEAM_NAME_RE.fullmatch(values["name"]):
                raise self.fail(
                    f"{prefix}.name", "must be 1 to 64 of [A-Za-z0-9._-], starting alphanumeric,"
                                      f" got {_shown(values['name'])}")
            for other in issuers:
                # A token's `iss` must select exactly one entry, and names label logs.
                for name in ("name", "issuer"):
                    if getattr(other, name) == values[name]:
                        raise self.fail(f"{prefix}.{name}",
                                        f"repeats {_shown(values[name])} of another issuer")
            issuers.append(IssuerConfig(**values))
        return tuple(issuers)

    def scope(self, key: str, value: object) -> Scope:
        if value is None:
            raise self.fail(key, f'is required: a list of what the team may cancel ({KINDS})')
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array, got {_shown(value)}")
        try:
            return Scope.parse(value)
        except ScopeProblem as exc:
            where = key if exc.index is None else f"{key}[{exc.index}]"
            got = "" if exc.index is None else f", got {_shown(value[exc.index])}"
            raise self.fail(where, exc.problem + got) from None

    def stored_keys(self, key: str, value: object, seen: set[str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            # A string is not echoed: it may be a raw key pasted without brackets.
            got = "a string" if isinstance(value, str) else (
                "nothing" if value is None else _shown(value))
            raise self.fail(key, f"must be a non-empty array of stored keys, got {got}")
        keys: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or not STORED_KEY_RE.fullmatch(item):
                # Never echo the value: someone may have pasted a real key here by mistake.
                hint = " (it looks like a raw key: store the output of `keys hash`)" if (
                    isinstance(item, str) and item.startswith("csg_")
                ) else ""
                raise self.fail(
                    f"{key}[{index}]",
                    f"must be a stored key, sha256: and 64 lowercase hex digits{hint}",
                )
            if item in seen:
                raise self.fail(f"{key}[{index}]", "repeats a key already configured")
            seen.add(item)
            keys.append(item)
        return tuple(keys)


def _same_file(a: str | None, b: str | None) -> bool:
    """The same path as written, resolved, or (when both exist) the same inode."""
    if not a or not b:
        return False
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
