"""`service_accounts` entries per issuer (issue 17, finding 8): the config side, and what
`check-config --strict` warns about when an entry trusts every issuer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import ConfigError, parse
from tests.harness import render_toml

PROD = {"name": "prod", "issuer": "https://prod", "audience": "a", "jwks_file": "prod.json"}
STAGING = {"name": "staging", "issuer": "https://staging", "audience": "a",
           "jwks_file": "staging.json"}


def config(*teams: dict[str, Any], issuers: tuple[dict[str, str], ...] = (PROD, STAGING)
           ) -> dict[str, Any]:
    return {"upstream": {"token_env": "T"}, "audit": {"path": "a"},
            "teams": [{"scope": ["*"], **team} for team in teams], "issuers": list(issuers)}


def test_an_entry_may_name_its_issuer() -> None:
    parsed = parse(config({"name": "billing", "service_accounts": ["prod/billing/worker",
                                                                   "ops/runner"]}))
    assert parsed.teams[0].service_accounts == ("prod/billing/worker", "ops/runner")


def test_the_same_account_of_two_issuers_may_belong_to_two_teams() -> None:
    parsed = parse(config({"name": "billing", "service_accounts": ["prod/billing/worker"]},
                          {"name": "sandbox", "service_accounts": ["staging/billing/worker"]}))
    assert [t.service_accounts for t in parsed.teams] == [
        ("prod/billing/worker",), ("staging/billing/worker",)]


@pytest.mark.parametrize(("accounts", "problem"), [
    (["dr/billing/worker"], 'teams[0].service_accounts[0] names issuer "dr", which no '
                            "[[issuers]] entry is"),
    (["prod/Billing/worker"], "teams[0].service_accounts[0] must be \"NAMESPACE/NAME\" or "
                              '"ISSUER/NAMESPACE/NAME"'),
    (["a/b/c/d"], "teams[0].service_accounts[0] must be"),
    (["/billing/worker"], "teams[0].service_accounts[0] must be"),
])
def test_a_bad_qualified_entry_is_refused_naming_the_key(accounts: list[str], problem: str
                                                        ) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(config({"name": "billing", "service_accounts": accounts}))
    assert problem in str(caught.value)


@pytest.mark.parametrize(("first", "second"), [
    ("billing/worker", "prod/billing/worker"),
    ("prod/billing/worker", "billing/worker"),
    ("prod/billing/worker", "prod/billing/worker"),
])
def test_overlapping_entries_in_two_teams_are_refused(first: str, second: str) -> None:
    """An unqualified entry matches every issuer: with a qualified one of the same account in
    another team, one token would name two teams."""
    with pytest.raises(ConfigError) as caught:
        parse(config({"name": "a", "service_accounts": [first]},
                     {"name": "b", "service_accounts": [second]}))
    assert "teams[1].service_accounts[0] repeats" in str(caught.value)
    assert 'team "a"' in str(caught.value)


def check(tmp_path: Path, data: dict[str, Any], capsys: pytest.CaptureFixture[str]
          ) -> tuple[int, str]:
    from gateway.cli import main as cli

    for issuer in data["issuers"]:
        (tmp_path / issuer["jwks_file"]).write_text('{"keys": []}')
        issuer["jwks_file"] = str(tmp_path / issuer["jwks_file"])
    data["audit"]["path"] = str(tmp_path / "audit.jsonl")
    (tmp_path / "token").write_text("a-token-of-enough-length-0123456789\n")
    data["upstream"] = {"token_file": str(tmp_path / "token")}
    path = tmp_path / "config.toml"
    path.write_text(render_toml(data))
    code = cli.main(["check-config", "--strict", "--config", str(path)])
    return code, capsys.readouterr().err


def test_strict_warns_about_unqualified_entries_when_several_issuers_are_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, err = check(tmp_path, config(
        {"name": "billing", "scope": ["database:docs"],
         "service_accounts": ["prod/billing/worker", "ops/runner"]}), capsys)
    assert ("teams[0].service_accounts[1]: 'ops/runner' is matched by the tokens of every "
            "issuer (2 are configured); write ISSUER/ops/runner to trust one") in err
    assert "service_accounts[0]" not in err


def test_strict_does_not_warn_with_one_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, err = check(tmp_path, config(
        {"name": "billing", "scope": ["database:docs"], "service_accounts": ["ops/runner"]},
        issuers=(dict(PROD),)), capsys)
    assert "matched by the tokens of every issuer" not in err
