"""Team changes without a restart, on the real gateway: SIGHUP and a rewritten config file."""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from gateway.access import keys
from gateway.demo.standin import Delay, StandIn
from tests.conftest import GatewayFactory
from tests.harness import (
    BILLING_KEY,
    BILLING_KEY_2,
    RunningGateway,
    default_teams,
    render_toml,
    wait_for,
)

NEW_KEY = keys.new_key()


def rewrite_teams(gateway: RunningGateway, teams: list[dict[str, Any]],
                  **sections: dict[str, Any]) -> None:
    """Replace the `[[teams]]` (and optionally other sections) of the running config file."""
    text = gateway.config_path.read_text()
    head = text[: text.index("[[teams]]")]
    for section, values in sections.items():
        for key, value in values.items():
            head = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", head, count=1) if re.search(
                rf"(?m)^{key} = ", head) else head.replace(f"[{section}]\n",
                                                          f"[{section}]\n{key} = {value}\n")
    gateway.config_path.write_text(head + render_toml({"teams": teams}))


def with_new_key() -> list[dict[str, Any]]:
    teams = default_teams()
    teams[0]["keys"] = [*teams[0]["keys"], keys.stored_form(NEW_KEY)]
    return teams


def config_records(gateway: RunningGateway) -> list[dict[str, Any]]:
    return [r for r in gateway.audit_records() if r["event"] == "audit.config"]


def metric(gateway: RunningGateway, name: str, labels: str) -> float:
    for line in gateway.client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not rendered")


def test_sighup_adopts_a_new_team_key_and_records_audit_config(
    gateway: RunningGateway, standin: StandIn
) -> None:
    assert gateway.cancel(standin.add_pending(), key=NEW_KEY).status_code == 401
    rewrite_teams(gateway, with_new_key())
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: config_records(gateway)), "no audit.config record after SIGHUP"

    assert gateway.process.poll() is None, "SIGHUP killed the gateway"
    assert gateway.cancel(standin.add_pending(), key=NEW_KEY).status_code == 202
    assert gateway.cancel(standin.add_pending(), key=BILLING_KEY).status_code == 202
    [record] = config_records(gateway)
    new_id = keys.key_id(keys.stored_form(NEW_KEY))
    assert record["added"] == {"teams": [], "key_ids": [new_id]}
    assert record["removed"] == {"teams": [], "key_ids": []}
    assert record["trigger"] == "sighup"
    assert record["config_sha256"] == hashlib.sha256(gateway.config_path.read_bytes()).hexdigest()
    assert {"ts", "seq", "prev", "hash"} <= set(record)
    assert "request_id" not in record  # a non-cancel record carries its own fields only
    assert metric(gateway, "chroma_sync_gateway_config_reloads_total", 'result="success"') == 1
    assert metric(gateway, "chroma_sync_gateway_key_requests_total",
                  f'key_id="{new_id}",team="billing"') == 1
    # The chain with its audit.config record verifies.
    assert gateway.stop() == 0
    verify = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", str(gateway.audit_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert verify.returncode == 0, verify.stdout


def test_a_rewritten_config_file_is_adopted_without_a_signal(
    gateway: RunningGateway, standin: StandIn
) -> None:
    teams = default_teams()
    teams[0]["enabled"] = False  # the kill switch, thrown without a rollout
    started = time.monotonic()
    rewrite_teams(gateway, teams)
    assert wait_for(lambda: gateway.cancel(standin.add_pending()).status_code == 403)
    print(f"kill switch took effect after {time.monotonic() - started:.2f} s")
    [record] = config_records(gateway)
    assert record["trigger"] == "file"
    assert record["changed"] == [
        {"team": "billing", "fields": ["enabled"], "keys_added": [], "keys_removed": [],
         "scope_before": ["*"], "scope_after": ["*"]}]
    assert not any(e["event"] == "config.restart_required" for e in gateway.logs())


def test_a_key_moved_into_an_unrestricted_team_is_a_recorded_privilege_change(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    """Issue 17, finding 5: this was recorded as `added: [], removed: []` and nothing else."""
    teams = default_teams()
    teams[0]["scope"] = ["database:docs"]
    gateway = gateway_factory(teams=teams)
    moved = keys.key_id(keys.stored_form(BILLING_KEY_2))
    teams[0]["keys"] = [keys.stored_form(BILLING_KEY)]
    teams.append({"name": "ops", "keys": [keys.stored_form(BILLING_KEY_2)], "scope": ["*"]})
    teams[1]["scope"] = ["database:docs"]  # narrowed, and still disabled
    rewrite_teams(gateway, teams)
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: config_records(gateway))
    [record] = config_records(gateway)
    assert record["added"] == {"teams": ["ops"], "key_ids": []}
    assert record["removed"] == {"teams": [], "key_ids": []}
    assert record["changed"] == [
        {"team": "billing", "fields": ["keys"], "keys_added": [], "keys_removed": [moved],
         "scope_before": ["database:docs"], "scope_after": ["database:docs"]},
        {"team": "frozen", "fields": ["scope"], "keys_added": [], "keys_removed": [],
         "scope_before": ["*"], "scope_after": ["database:docs"]},
    ]
    elsewhere = standin.add_pending(database="other")
    assert gateway.cancel(elsewhere, key=BILLING_KEY_2).status_code == 202  # now unrestricted


def test_a_bad_config_is_refused_in_one_line_and_the_old_teams_keep_serving(
    gateway: RunningGateway, standin: StandIn
) -> None:
    teams = with_new_key()
    teams[0]["rate_limit"] = "fast"
    rewrite_teams(gateway, teams)
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any(e["event"] == "config.reload_failed" for e in gateway.logs()))
    failed = [e for e in gateway.logs() if e["event"] == "config.reload_failed"]
    # Same text as at start; the file may have been seen by the watcher too.
    assert failed[0]["problem"] == (
        f'{gateway.config_path}: teams[0].rate_limit must be a positive number, got "fast"')
    assert gateway.cancel(standin.add_pending(), key=BILLING_KEY).status_code == 202
    assert gateway.cancel(standin.add_pending(), key=NEW_KEY).status_code == 401
    assert config_records(gateway) == []
    assert metric(gateway, "chroma_sync_gateway_config_reloads_total", 'result="failure"') >= 1
    assert metric(gateway, "chroma_sync_gateway_config_reloads_total", 'result="success"') == 0


def test_changed_keys_outside_teams_are_logged_as_restart_required(
    gateway: RunningGateway, standin: StandIn
) -> None:
    rewrite_teams(gateway, with_new_key(), upstream={"timeout": "7.5"})
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: config_records(gateway))
    [event] = [e for e in gateway.logs() if e["event"] == "config.restart_required"]
    assert event["keys"] == ["upstream.timeout"]
    assert config_records(gateway)[0]["restart_required"] == ["upstream.timeout"]
    assert gateway.cancel(standin.add_pending(), key=NEW_KEY).status_code == 202


def test_a_cancel_in_flight_finishes_under_the_config_it_started_with(
    gateway: RunningGateway, standin: StandIn
) -> None:
    standin.behaviour = lambda r: Delay(1.5) if r.method == "PUT" else None
    held = standin.add_pending()
    with concurrent.futures.ThreadPoolExecutor(1) as pool, httpx.Client(
        base_url=gateway.base_url, timeout=10, trust_env=False
    ) as client:
        future = pool.submit(client.put, f"/api/v1/invocations/{held}",
                             headers={"Authorization": f"Bearer {BILLING_KEY}"})
        assert wait_for(lambda: any(r.method == "PUT" for r in standin.requests))
        teams = default_teams()
        teams[0]["keys"] = [keys.stored_form(BILLING_KEY_2)]  # the held request's key is gone
        rewrite_teams(gateway, teams)
        gateway.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: config_records(gateway), timeout=1.0)
        assert not future.done(), "the held cancel was not in flight during the reload"
        assert future.result(timeout=10).status_code == 202
    standin.behaviour = None
    assert gateway.cancel(standin.add_pending(), key=BILLING_KEY).status_code == 401
    assert gateway.cancel(standin.add_pending(), key=BILLING_KEY_2).status_code == 202
    removed = config_records(gateway)[0]["removed"]
    assert removed["key_ids"] == [keys.key_id(keys.stored_form(BILLING_KEY))]


def test_a_removed_key_leaves_the_key_usage_metric(
    gateway_factory: GatewayFactory, standin: StandIn
) -> None:
    gateway = gateway_factory()
    old_id = keys.key_id(keys.stored_form(BILLING_KEY))
    assert metric(gateway, "chroma_sync_gateway_key_requests_total",
                  f'key_id="{old_id}",team="billing"') == 0  # made at load, before any use
    teams = default_teams()
    teams[0]["keys"] = [keys.stored_form(BILLING_KEY_2)]
    rewrite_teams(gateway, teams)
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: config_records(gateway))
    assert old_id not in gateway.client.get("/metrics").text


def test_each_sighup_is_a_reload_and_the_chain_goes_on(gateway: RunningGateway) -> None:
    for count in range(1, 4):  # one at a time: signals sent together may merge into one
        gateway.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda n=count: len(config_records(gateway)) == n)  # type: ignore[misc]
    assert gateway.process.poll() is None
    seqs = [r["seq"] for r in gateway.audit_records()]
    assert seqs == list(range(1, len(seqs) + 1))
