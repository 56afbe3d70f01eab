"""`[traces]`: off by default; an endpoint, a service name and a sample ratio, each checked."""

from __future__ import annotations

import pytest

from gateway.access import keys
from gateway.config import load as config
from gateway.config.model import TracesConfig
from gateway.errors import ConfigError

BASE = {
    "upstream": {"token_env": "T"}, "audit": {"path": "/tmp/a.jsonl"},
    "teams": [{"name": "a", "keys": [keys.stored_form(keys.new_key())], "scope": ["*"]}],
}


def parse(traces: dict[str, object] | None) -> TracesConfig:
    return config.parse({**BASE, **({"traces": traces} if traces is not None else {})},
                        source="c.toml").traces


def test_tracing_is_off_unless_an_endpoint_is_set() -> None:
    assert parse(None) == TracesConfig(None, "chroma-sync-gateway", 1.0)
    assert parse({"service_name": "gw"}).otlp_endpoint is None


def test_an_endpoint_a_name_and_a_ratio_are_taken() -> None:
    assert parse({"otlp_endpoint": "http://otel-collector:4318/v1/traces",
                  "service_name": "billing-gw", "sample_ratio": 0.25}) == TracesConfig(
        "http://otel-collector:4318/v1/traces", "billing-gw", 0.25)


@pytest.mark.parametrize(("traces", "message"), [
    ({"otlp_endpoint": "grpc://c:4317"}, "traces.otlp_endpoint must be an http:// or https://"),
    ({"otlp_endpoint": "http://user:secret@c:4318"}, "with userinfo"),
    ({"sample_ratio": 1.5}, "traces.sample_ratio must be a number from 0 to 1, got 1.5"),
    ({"sample_ratio": True}, "traces.sample_ratio must be a number from 0 to 1"),
    ({"exporter": "otlp"}, "traces.exporter is not a known key"),
])
def test_a_bad_traces_key_is_one_line_naming_it(traces: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(traces)
    assert message in str(info.value) and "secret" not in str(info.value)
