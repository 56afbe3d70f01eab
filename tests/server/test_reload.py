"""What an `audit.config` record says changed (`team_changes`), in process.

Finding 5 of issue 17: moving a key into an unrestricted team was recorded as `added: [],
removed: []`, and widening a scope to `*` only as `changed: [names]`; `changed` now names each
team's changed config keys, its key ids in and out, and its scope before and after.
"""

from __future__ import annotations

import dataclasses

from gateway.access import keys
from gateway.config.model import TeamConfig
from gateway.config.scope import UNRESTRICTED, Scope
from gateway.server.reload import TEAM_FIELDS, team_changes

KEY_A, KEY_B, KEY_C = (keys.stored_form(keys.new_key()) for _ in range(3))
ID_A, ID_B, ID_C = (keys.key_id(k) for k in (KEY_A, KEY_B, KEY_C))
DOCS = Scope.parse(["database:docs"])


def team(name: str, *stored: str, **settings: object) -> TeamConfig:
    return TeamConfig(name=name, keys=stored, **settings)  # type: ignore[arg-type]


def test_a_key_moved_into_an_unrestricted_team_is_named_on_both_teams() -> None:
    old = [team("billing", KEY_A, KEY_B, scope=DOCS), team("ops", KEY_C)]
    new = [team("billing", KEY_A, scope=DOCS), team("ops", KEY_C, KEY_B)]

    added, removed, changed = team_changes(old, new)

    assert added == {"teams": [], "key_ids": []}  # no key is new to the gateway...
    assert removed == {"teams": [], "key_ids": []}
    assert changed == [  # ...but one now reaches everything
        {"team": "billing", "fields": ["keys"], "keys_added": [], "keys_removed": [ID_B],
         "scope_before": ["database:docs"], "scope_after": ["database:docs"]},
        {"team": "ops", "fields": ["keys"], "keys_added": [ID_B], "keys_removed": [],
         "scope_before": ["*"], "scope_after": ["*"]},
    ]


def test_a_scope_widened_to_everything_shows_before_and_after() -> None:
    old = [team("billing", KEY_A, scope=Scope.parse(["database:docs", "source:" + "a" * 8
                                                       + "-aaaa-4aaa-8aaa-" + "a" * 12]))]
    new = [team("billing", KEY_A, scope=UNRESTRICTED)]
    [change] = team_changes(old, new)[2]
    assert change["fields"] == ["scope"]
    assert change["scope_before"] == ["database:docs",
                                      "source:aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"]
    assert change["scope_after"] == ["*"]


def test_every_team_setting_is_named_in_spec_order() -> None:
    old = [team("billing", KEY_A, scope=DOCS)]
    new = [team("billing", KEY_B, scope=UNRESTRICTED, enabled=False, rate_limit=1.0, burst=2,
                max_in_flight=3, service_accounts=("ns/worker",))]
    [change] = team_changes(old, new)[2]
    assert change["fields"] == ["keys", "scope", "enabled", "rate_limit", "burst",
                                "max_in_flight", "service_accounts"]
    assert (change["keys_added"], change["keys_removed"]) == ([ID_B], [ID_A])


def test_the_same_entries_in_another_order_are_no_change() -> None:
    old = [team("billing", KEY_A, KEY_B, scope=Scope.parse(["database:a", "database:b"]),
                service_accounts=("ns/x", "ns/y"))]
    new = [team("billing", KEY_B, KEY_A, scope=Scope.parse(["database:b", "database:a"]),
                service_accounts=("ns/y", "ns/x"))]
    assert team_changes(old, new) == ({"teams": [], "key_ids": []},
                                      {"teams": [], "key_ids": []}, [])


def test_added_and_removed_teams_are_not_listed_as_changed() -> None:
    added, removed, changed = team_changes([team("old", KEY_A)], [team("new", KEY_B)])
    assert added == {"teams": ["new"], "key_ids": [ID_B]}
    assert removed == {"teams": ["old"], "key_ids": [ID_A]}
    assert changed == []


def test_every_team_config_key_is_one_audit_config_can_name() -> None:
    """A new team setting must be added to TEAM_FIELDS, or its changes would go unrecorded."""
    assert set(TEAM_FIELDS) == {f.name for f in dataclasses.fields(TeamConfig)} - {"name"}
