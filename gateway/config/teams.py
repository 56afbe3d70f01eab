"""Who may cancel what: the [[teams]] and [[issuers]] arrays of the config file."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from gateway.config.checks import Checks, key_name, shown
from gateway.config.model import IssuerConfig, TeamConfig
from gateway.config.scope import KINDS, Scope, ScopeProblem

STORED_KEY_RE = re.compile(r"sha256:[0-9a-f]{64}")
TEAM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Kubernetes names: a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain.
SERVICE_ACCOUNT_RE = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


class TeamsParser(Checks):
    """The arrays of tables: each entry's keys, and what must not repeat across entries."""

    def teams(
        self, data: Mapping[str, Any], *, has_issuers: bool = False
    ) -> tuple[TeamConfig, ...]:
        raw = data.get("teams")
        if raw is None:
            raise self.fail("teams", "is required: at least one [[teams]] table")
        if not isinstance(raw, list) or not raw:
            raise self.fail("teams", f"must be one or more [[teams]] tables, got {shown(raw)}")
        teams: list[TeamConfig] = []
        seen_names: set[str] = set()
        seen_keys: set[str] = set()
        seen_accounts: dict[str, str] = {}
        for index, entry in enumerate(raw):
            prefix = f"teams[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(prefix, f"must be a table, got {shown(entry)}")
            for name in entry:
                if name not in {"name", "keys", "scope", "enabled", "rate_limit", "burst",
                                "service_accounts", "max_in_flight"}:
                    raise self.fail(f"{prefix}.{key_name(name)}", "is not a known key")
            if "name" not in entry:
                raise self.fail(f"{prefix}.name", "is required")
            name = self.string(f"{prefix}.name", entry["name"])
            if not TEAM_NAME_RE.fullmatch(name):
                raise self.fail(
                    f"{prefix}.name",
                    f"must be 1 to 64 of [A-Za-z0-9._-], starting alphanumeric, got {shown(name)}",
                )
            if name in seen_names:
                raise self.fail(f"{prefix}.name", f"repeats team {shown(name)}")
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
                                 f"{shown(value)}")
        if not has_issuers:
            raise self.fail(key, "needs an [[issuers]] entry to verify the accounts' tokens")
        accounts: list[str] = []
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            if not isinstance(item, str) or not SERVICE_ACCOUNT_RE.fullmatch(item):
                raise self.fail(
                    where, f'must be "NAMESPACE/NAME" (Kubernetes names), got {shown(item)}')
            if item in seen:
                # One account, one team: otherwise its key_id would name two principals.
                raise self.fail(where, f"repeats {shown(item)}, already a service account of "
                                       f"team {shown(seen[item])}")
            seen[item] = team
            accounts.append(item)
        return tuple(accounts)

    def issuers(self, data: Mapping[str, Any]) -> tuple[IssuerConfig, ...]:
        raw = data.get("issuers")
        if raw is None:
            return ()
        if not isinstance(raw, list) or not raw:
            raise self.fail("issuers", f"must be one or more [[issuers]] tables, got {shown(raw)}")
        issuers: list[IssuerConfig] = []
        for index, entry in enumerate(raw):
            prefix = f"issuers[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(prefix, f"must be a table, got {shown(entry)}")
            for name in entry:
                if name not in {"name", "issuer", "audience", "jwks_file"}:
                    raise self.fail(f"{prefix}.{key_name(name)}", "is not a known key")
            values: dict[str, str] = {}
            for name in ("name", "issuer", "audience", "jwks_file"):
                if name not in entry:
                    raise self.fail(f"{prefix}.{name}", "is required")
                values[name] = self.string(f"{prefix}.{name}", entry[name])
            if not TEAM_NAME_RE.fullmatch(values["name"]):
                raise self.fail(
                    f"{prefix}.name", "must be 1 to 64 of [A-Za-z0-9._-], starting alphanumeric,"
                                      f" got {shown(values['name'])}")
            for other in issuers:
                # A token's `iss` must select exactly one entry, and names label logs.
                for name in ("name", "issuer"):
                    if getattr(other, name) == values[name]:
                        raise self.fail(f"{prefix}.{name}",
                                        f"repeats {shown(values[name])} of another issuer")
            issuers.append(IssuerConfig(**values))
        return tuple(issuers)

    def scope(self, key: str, value: object) -> Scope:
        if value is None:
            raise self.fail(key, f'is required: a list of what the team may cancel ({KINDS})')
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array, got {shown(value)}")
        try:
            return Scope.parse(value)
        except ScopeProblem as exc:
            where = key if exc.index is None else f"{key}[{exc.index}]"
            got = "" if exc.index is None else f", got {shown(value[exc.index])}"
            raise self.fail(where, exc.problem + got) from None

    def stored_keys(self, key: str, value: object, seen: set[str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            # A string is not echoed: it may be a raw key pasted without brackets.
            got = "a string" if isinstance(value, str) else (
                "nothing" if value is None else shown(value))
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
