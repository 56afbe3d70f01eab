"""What `[[teams]]` builds, as one value: the unit a reload swaps.

Everything a request consults about its caller (who it is, whether it may cancel, its limits,
its key's usage counter) is built from the config's teams in `build_policy`, the one place a
new per-team piece is added. The gateway holds one `Policy` reference; a request reads it once
at its start, so a reload (a new `Policy`, swapped in one assignment) never changes the rules
under a request in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter

from gateway.access import keys
from gateway.access.auth import (
    Authenticator,
    Authorizer,
    CompositeAuthenticator,
    Principal,
    TeamKeyAuthenticator,
    TeamSwitchAuthorizer,
)
from gateway.access.inflight import InFlight
from gateway.access.limits import TeamLimits
from gateway.access.scopes import ScopeAuthorizer
from gateway.config.model import Config, TeamConfig
from gateway.telemetry.metrics import Metrics

if TYPE_CHECKING:  # identity (PyJWT, cryptography) is imported only when issuers are configured
    from gateway.access.identity import IssuerKeys


@dataclass(frozen=True)
class Policy:
    teams: tuple[TeamConfig, ...]
    authenticator: Authenticator
    authorizer: Authorizer
    limits: TeamLimits
    in_flight: InFlight
    scopes: ScopeAuthorizer
    key_requests: Mapping[str, Counter]
    """key_id -> its labelled counter, made here so a request does no label lookup."""
    key_metric: Counter
    # The `[[issuers]]` key sets: kept across reloads (issuers change only with a restart).
    issuers: tuple[IssuerKeys, ...] = ()

    def key_used(self, principal: Principal) -> None:
        counter = self.key_requests.get(principal.key_id)
        if counter is None:  # a credential that is not a configured key (none today)
            counter = self.key_metric.labels(principal.team, principal.key_id)
        counter.inc()


def build_policy(config: Config, metrics: Metrics, *, previous: Policy | None = None) -> Policy:
    """Everything built from `config.teams`; `previous` is the policy a reload replaces."""
    key_requests = {
        keys.key_id(stored): metrics.key_requests.labels(team.name, keys.key_id(stored))
        for team in config.teams
        for stored in team.keys
    }
    key_requests.update({
        f"sa:{account}": metrics.key_requests.labels(team.name, f"sa:{account}")
        for team in config.teams
        for account in team.service_accounts
    })
    issuers: tuple[IssuerKeys, ...] = ()
    if previous is not None:
        issuers = previous.issuers
    elif config.issuers:
        from gateway.access.identity import load_issuers

        issuers = load_issuers(config)
    authenticator: Authenticator = TeamKeyAuthenticator(config.teams)
    if issuers:
        from gateway.access.identity import ServiceAccountAuthenticator

        authenticator = CompositeAuthenticator(
            TeamKeyAuthenticator(config.teams), ServiceAccountAuthenticator(issuers, config.teams))
    return Policy(
        teams=config.teams,
        authenticator=authenticator,
        authorizer=TeamSwitchAuthorizer(config.teams),
        limits=TeamLimits(config.teams, previous=previous.limits if previous else None),
        in_flight=InFlight(config.teams, previous=previous.in_flight if previous else None),
        scopes=ScopeAuthorizer({t.name: t.scope for t in config.teams}),
        key_requests=key_requests,
        key_metric=metrics.key_requests,
        issuers=issuers,
    )
