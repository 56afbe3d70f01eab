"""Configuration: one TOML file, parsed once into frozen, validated value objects
(`gateway.config.model`).

Every problem is reported as one line that names the file, the key and what is wrong, e.g.
`config.toml: upstream.timeout must be a positive number, got "ten"`. Unknown keys are errors.
A relative path in the file is relative to the file's folder (`PATH_KEYS`).
The sections are checked by `gateway.config.sections` ([server], [upstream], [audit], [bulk])
and `gateway.config.teams` ([[teams]], [[issuers]]); what spans sections is checked here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

from gateway.config.checks import key_name
from gateway.config.model import Config
from gateway.config.sections import SectionParser
from gateway.config.teams import TeamsParser
from gateway.errors import ConfigError

ENV_CONFIG = "CHROMA_SYNC_GATEWAY_CONFIG"
DEFAULT_CONFIG = "config.toml"
SECTIONS = {"server", "upstream", "audit", "teams", "issuers", "bulk", "traces"}
# The keys that name a file or a folder: a relative one is taken from the config file's folder,
# not from wherever the gateway was started ([[issuers]] entries: each one's `jwks_file`).
PATH_KEYS = {
    "upstream": ("token_file", "ca_file"),
    "audit": ("path", "hmac_key_file", "signing_key_file", "checkpoint_file"),
    "issuers": ("jwks_file",),
}


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
    return parse(relative_to(data, os.path.dirname(os.path.abspath(path))), source=path)


def relative_to(data: dict[str, Any], folder: str) -> dict[str, Any]:
    """`data` with every relative path of `PATH_KEYS` joined to `folder` (in place)."""
    for section, names in PATH_KEYS.items():
        tables = data.get(section)
        for table in tables if isinstance(tables, list) else [tables]:
            if not isinstance(table, dict):
                continue  # the parser names what is wrong with it
            for name in names:
                value = table.get(name)
                if isinstance(value, str) and value and not os.path.isabs(value):
                    table[name] = os.path.join(folder, value)
    return data


def parse(data: Mapping[str, Any], *, source: str = DEFAULT_CONFIG) -> Config:
    sections = SectionParser(source)
    teams = TeamsParser(source)
    for name in data:
        if name not in SECTIONS:
            raise sections.fail(key_name(name), "is not a known key")
    issuers = teams.issuers(data)
    config = Config(
        source=source,
        server=sections.server(data),
        upstream=sections.upstream(data),
        audit=sections.audit(data),
        teams=teams.teams(data, has_issuers=bool(issuers)),
        issuers=issuers,
        bulk=sections.bulk(data),
        traces=sections.traces(data),
    )
    audit, token_file = config.audit, config.upstream.token_file
    if _same_file(audit.hmac_key_file, token_file):
        # Auditors get the HMAC key; they must never get the Chroma token with it.
        raise sections.fail("audit.hmac_key_file", "must not be the upstream token file "
                            "(upstream.token_file)")
    if _same_file(audit.signing_key_file, token_file):
        raise sections.fail("audit.signing_key_file", "must not be the upstream token file "
                            "(upstream.token_file)")
    for other, name in ((audit.path, "audit.path"), (token_file, "upstream.token_file"),
                        (audit.hmac_key_file, "audit.hmac_key_file"),
                        (audit.signing_key_file, "audit.signing_key_file")):
        if _same_file(audit.checkpoint_file, other):
            # It is replaced at every checkpoint: it would destroy what it names.
            raise sections.fail("audit.checkpoint_file", f"must not be {name}")
    return config


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
