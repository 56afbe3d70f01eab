"""Policy.still_admits: what a running bulk cancel asks before each cancel (issue 17,
finding 2), and the key-usage counters of service accounts named per issuer (finding 8)."""

from __future__ import annotations

import dataclasses

from gateway.access import keys
from gateway.access.auth import Principal, account_key_id
from gateway.access.policy import Policy, build_policy
from gateway.config.load import parse
from gateway.config.model import TeamConfig
from gateway.telemetry.metrics import Metrics

KEY = keys.stored_form(keys.new_key())
OTHER = keys.stored_form(keys.new_key())
KEY_ID = keys.key_id(KEY)


def policy(*teams: TeamConfig, metrics: Metrics | None = None) -> Policy:
    base = parse({"upstream": {"token_env": "T"}, "audit": {"path": "a"},
                  "teams": [{"name": "x", "keys": [OTHER], "scope": ["*"]}]})
    return build_policy(dataclasses.replace(base, teams=teams), metrics or Metrics())


def test_a_team_key_is_admitted_while_its_team_holds_it_enabled() -> None:
    principal = Principal("billing", KEY_ID)
    assert policy(TeamConfig("billing", (KEY,))).still_admits(principal)
    assert not policy(TeamConfig("billing", (OTHER,))).still_admits(principal)  # key gone
    assert not policy(TeamConfig("billing", (KEY,), enabled=False)).still_admits(principal)
    assert not policy(TeamConfig("ops", (KEY,))).still_admits(principal)  # team gone/moved


def test_a_service_account_is_admitted_while_listed_for_its_issuer() -> None:
    principal = Principal("billing", "sa:billing/worker", "prod")
    for accounts, admitted in [(("billing/worker",), True), (("prod/billing/worker",), True),
                               (("staging/billing/worker",), False), (("billing/other",), False),
                               ((), False)]:
        team = TeamConfig("billing", (OTHER,), service_accounts=accounts)
        assert policy(team).still_admits(principal) is admitted, accounts


def test_a_qualified_accounts_usage_is_counted_under_its_key_id_and_team() -> None:
    metrics = Metrics()
    live = policy(TeamConfig("billing", (), service_accounts=("prod/billing/worker",)),
                  TeamConfig("sandbox", (), service_accounts=("staging/billing/worker",)),
                  metrics=metrics)
    assert account_key_id("prod/billing/worker") == account_key_id("billing/worker") == (
        "sa:billing/worker")
    live.key_used(Principal("sandbox", "sa:billing/worker", "staging"))
    rendered = metrics.render().decode()
    assert 'key_id="sa:billing/worker",team="sandbox"} 1.0' in rendered
    assert 'key_id="sa:billing/worker",team="billing"} 0.0' in rendered
