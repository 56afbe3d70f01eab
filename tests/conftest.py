"""Shared fixtures: a real Chroma Sync stand-in, real gateways, and clean global state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import settings

from gateway.demo.standin import StandIn
from tests.harness import (
    UPSTREAM_TOKEN,
    RunningGateway,
    free_port,
    start_gateway,
    write_config,
)

# Property tests: no per-example deadline (a loaded CI machine must not turn a slow example
# into a failure; the examples are what the tests check) and no example database written into
# the working tree. A test's own @settings still sets its example count.
settings.register_profile("project", deadline=None, database=None)
settings.load_profile("project")


@pytest.fixture(autouse=True)
def _clean_global_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees another's structlog configuration or gateway environment."""
    monkeypatch.delenv("CHROMA_SYNC_GATEWAY_CONFIG", raising=False)
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn(token=UPSTREAM_TOKEN)
    with server.run_in_thread():
        yield server


GatewayFactory = Callable[..., RunningGateway]


@pytest.fixture
def gateway_factory(tmp_path: Path, standin: StandIn) -> Iterator[GatewayFactory]:
    """Start real gateways (subprocesses) against the stand-in; all are stopped afterwards."""
    started: list[RunningGateway] = []

    def start(
        *, folder: Path | None = None, upstream_url: str | None = None,
        env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None,
        wait_ready: bool = True, **overrides: Any,
    ) -> RunningGateway:
        target = folder or tmp_path
        target.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config_path = write_config(
            target, upstream_url=upstream_url or standin.base_url, port=port, **overrides
        )
        gateway = start_gateway(config_path, port=port, env=env, preexec_fn=preexec_fn,
                                wait_ready=wait_ready)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(gateway_factory: GatewayFactory) -> RunningGateway:
    return gateway_factory()
