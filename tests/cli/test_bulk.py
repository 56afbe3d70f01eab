"""`chroma-sync-gateway bulk-cancel` end to end: the CLI as a subprocess, the key in the
environment, against the real gateway and the real stand-in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from gateway.cli import main as gateway_cli
from gateway.demo.standin import ReceivedRequest, Respond, StandIn, json_response
from tests.harness import (
    BILLING_KEY,
    FROZEN_KEY,
    RunningGateway,
    Servers,
    free_port,
    running_servers,
)

ENV_KEY = "CHROMA_SYNC_GATEWAY_KEY"
LINE = re.compile(r"([0-9a-f-]{36})  (\S+)  (\S+)(?:  (\S+))?")


def cli(*args: str, key: str | None = BILLING_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMA_SYNC")}
    if key is not None:
        env[ENV_KEY] = key
    return subprocess.run(
        [sys.executable, "-m", "gateway", "bulk-cancel", *args], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )


@pytest.fixture(scope="module")
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with running_servers(tmp_path_factory.mktemp("bulk-cli")) as servers:
        yield servers


@pytest.fixture
def servers(_servers: Servers) -> Servers:
    return _servers.reset()


@pytest.fixture
def gateway(servers: Servers) -> RunningGateway:
    return servers.gateway


@pytest.fixture
def standin(servers: Servers) -> StandIn:
    return servers.standin


def lines(out: str) -> dict[str, tuple[str, ...]]:
    found = {}
    for line in out.splitlines():
        match = LINE.fullmatch(line)
        if match:
            found[match.group(1)] = match.groups()[1:]
    return found


def test_a_source_is_cancelled_with_one_line_each_a_summary_and_exit_0(
    gateway: RunningGateway, standin: StandIn,
) -> None:
    source = str(uuid.uuid4())
    pending = [standin.add_invocation(state="pending", source_id=source) for _ in range(120)]
    done = cli("--url", gateway.base_url, "--source", source)
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == {i: ("cancelled", "202", None) for i in pending}
    assert re.search(r"^batch [0-9a-f-]{36}: matched 120: cancelled 120$", done.stdout, re.M)
    assert "listing and cancelling the pending invocations of source" in done.stderr
    assert all(standin.state_of(i) == "cancelled" for i in pending)
    assert BILLING_KEY not in done.stdout + done.stderr


def test_not_cancelable_ones_still_exit_0(gateway: RunningGateway, standin: StandIn) -> None:
    pending = [standin.add_invocation(state="pending", database="cli-412") for _ in range(3)]

    def refuse_first(request: ReceivedRequest) -> Respond | None:
        if request.method == "PUT" and request.target.endswith(pending[0]):
            return json_response(412, {"error": "InvalidArgumentError", "message": "late"})
        return None

    standin.behaviour = refuse_first
    done = cli("--url", gateway.base_url + "/", "--database", "cli-412")
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout)[pending[0]] == ("not_cancelable", "412", "not_cancelable")
    assert "cancelled 2, not_cancelable 1" in done.stdout


def test_any_other_outcome_exits_1(gateway: RunningGateway, standin: StandIn) -> None:
    pending = [standin.add_invocation(state="pending", database="cli-500") for _ in range(3)]
    standin.behaviour = lambda r: (json_response(500, {"error": "E", "message": "boom"})
                                   if r.method == "PUT" and r.target.endswith(pending[1])
                                   else None)
    done = cli("--url", gateway.base_url, "--database", "cli-500")
    assert done.returncode == 1
    assert lines(done.stdout)[pending[1]] == ("upstream_error", "502", "upstream_error")
    assert standin.state_of(pending[2]) == "cancelled"


def test_a_dry_run_exits_0_and_cancels_nothing(gateway: RunningGateway, standin: StandIn) -> None:
    pending = [standin.add_invocation(state="pending", database="cli-dry") for _ in range(4)]
    done = cli("--url", gateway.base_url, "--database", "cli-dry", "--dry-run", "--limit", "3")
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == {i: ("would_cancel", "-", None) for i in pending[:3]}
    assert "(dry run): matched 3: would_cancel 3" in done.stdout
    assert "more invocations matched than --limit" in done.stderr
    assert all(standin.state_of(i) == "pending" for i in pending)
    assert not [r for r in standin.requests if r.method == "PUT"]


def test_nothing_to_cancel_exits_0(gateway: RunningGateway, standin: StandIn) -> None:
    done = cli("--url", gateway.base_url, "--source", standin.add_source())
    assert done.returncode == 0
    assert "matched 0: nothing to do" in done.stdout


@pytest.mark.parametrize(("key", "error"), [("csg_wrong", "401 (unauthenticated"),
                                            (FROZEN_KEY, "403 (forbidden")])
def test_an_error_answer_exits_1_naming_it(gateway: RunningGateway, key: str, error: str) -> None:
    done = cli("--url", gateway.base_url, "--database", "docs", key=key)
    assert done.returncode == 1
    assert f"the gateway answered {error}" in done.stderr
    assert key not in done.stdout + done.stderr


def test_an_unknown_source_exits_1(gateway: RunningGateway) -> None:
    done = cli("--url", gateway.base_url, "--source", str(uuid.uuid4()))
    assert done.returncode == 1
    assert "404 (NotFoundError: Source not found)" in done.stderr


def test_an_unreachable_gateway_exits_1() -> None:
    done = cli("--url", f"http://127.0.0.1:{free_port()}", "--database", "docs")
    assert done.returncode == 1
    assert "could not reach the gateway" in done.stderr


def test_the_cli_names_the_same_route_and_limit_as_the_gateway() -> None:
    from gateway.cancel import bulk, bulk_request
    from gateway.cli import bulk as bulk_cli

    assert (bulk_cli.ROUTE, bulk_cli.MAX_LIMIT) == (bulk.ROUTE, bulk_request.MAX_LIMIT)


def test_a_missing_key_is_a_usage_error_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    argv = ["bulk-cancel", "--url", "http://127.0.0.1:9", "--database", "docs"]
    assert exit_status(argv) == 2
    assert ENV_KEY in capsys.readouterr().err
    monkeypatch.setenv(ENV_KEY, " ")
    assert exit_status(argv) == 2


def test_a_missing_key_exits_2_from_the_console_too() -> None:
    done = cli("--url", "http://127.0.0.1:9", "--database", "docs", key=None)
    assert done.returncode == 2 and ENV_KEY in done.stderr


@pytest.mark.parametrize("args", [
    ["--url", "http://127.0.0.1:9"],
    ["--url", "http://127.0.0.1:9", "--source", str(uuid.uuid4()), "--database", "d"],
    ["--url", "http://127.0.0.1:9", "--source", "not-a-uuid"],
    ["--url", "http://127.0.0.1:9", "--database", "d", "--limit", "0"],
    ["--url", "http://127.0.0.1:9", "--database", "d", "--limit", "10001"],
    ["--url", "http://127.0.0.1:9", "--database", "d", "--limit", "many"],
    ["--url", "127.0.0.1:9", "--database", "d"],
    ["--database", "d"],
    ["--url", "http://127.0.0.1:9", "--database", "d", "--key", BILLING_KEY],
], ids=["no-selector", "both", "bad-uuid", "limit-0", "limit-10001", "limit-word", "no-scheme",
        "no-url", "key-option"])
def test_usage_errors_exit_2(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(ENV_KEY, BILLING_KEY)
    assert exit_status(["bulk-cancel", *args]) == 2
    assert capsys.readouterr().out == ""


def exit_status(argv: list[str]) -> int | str | None:
    """What the console script would exit with (argparse exits by itself)."""
    try:
        return gateway_cli.main(argv)
    except SystemExit as exc:
        return exc.code
