"""gateway.telemetry.metrics: a registry per instance, and the names and labels the operating
docs (docs/operating.md) document."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.metrics import CONTENT_TYPE, Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operating.md"
PREFIX = "chroma_sync_gateway_"


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `render()`, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def touch_everything(metrics: Metrics) -> None:
    metrics.cancels.labels("cancelled", "billing").inc()
    metrics.request_seconds.labels("/api/v1/invocations/{invocation_id}").observe(0.002)
    metrics.upstream_seconds.observe(0.001)
    metrics.upstream_responses.labels("202").inc()
    metrics.upstream_failures.labels("upstream_timeout", "cancel").inc()
    metrics.audit_failures.inc()
    metrics.audit_records.set(2)
    metrics.audit_ready.set(1)
    metrics.token_available.set(1)
    metrics.token_rotations.inc()
    metrics.key_requests.labels("billing", "0123456789ab").inc()
    metrics.archive(lambda: 3).labels("success").inc()  # with audit.archive set


def documented_metrics() -> dict[str, set[str]]:
    """The docs' metrics table: each metric name and the label names its row lists."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("| metric | labels |"):]
    rows: dict[str, set[str]] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        names_cell, labels_cell = line.strip("|").split("|")[:2]
        labels = set(re.findall(r"`([a-z_]+)`", labels_cell))
        for name in re.findall(r"`(" + PREFIX + r"[a-z_]+)`", names_cell):
            rows[name] = labels
    return rows


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # a shared registry would refuse the second
    assert first.registry is not second.registry
    assert first.registry is not REGISTRY
    first.cancels.labels("cancelled", "billing").inc()
    first.token_rotations.inc()
    first.audit_ready.set(1)
    theirs = samples(second)
    assert ("chroma_sync_gateway_upstream_token_changes_total", ()) in theirs
    assert theirs[("chroma_sync_gateway_upstream_token_changes_total", ())] == 0
    assert theirs[("chroma_sync_gateway_audit_ready", ())] == 0
    assert not any(name == "chroma_sync_gateway_cancel_requests_total" for name, _ in theirs)
    ours = samples(first)
    key = ("chroma_sync_gateway_cancel_requests_total",
           (("outcome", "cancelled"), ("team", "billing")))
    assert ours[key] == 1
    assert ours[("chroma_sync_gateway_upstream_token_changes_total", ())] == 1


def test_nothing_is_registered_in_the_global_registry() -> None:
    Metrics().cancels.labels("cancelled", "billing").inc()
    assert not any(
        family.name.startswith(PREFIX) for family in REGISTRY.collect()
    )


def test_render_is_prometheus_text_with_help_and_type_lines() -> None:
    metrics = Metrics()
    touch_everything(metrics)
    text = metrics.render().decode("utf-8")
    assert CONTENT_TYPE.startswith("text/plain")
    assert "# HELP chroma_sync_gateway_cancel_requests_total " in text
    assert "# TYPE chroma_sync_gateway_cancel_requests_total counter" in text
    assert "# TYPE chroma_sync_gateway_request_duration_seconds histogram" in text
    assert "# TYPE chroma_sync_gateway_audit_ready gauge" in text
    assert text.endswith("\n")


def test_docs_table_lists_metrics_to_check() -> None:
    documented = documented_metrics()
    assert len(documented) >= 10
    assert documented["chroma_sync_gateway_cancel_requests_total"] == {"outcome", "team"}


def test_every_metric_in_the_docs_table_is_rendered_with_its_labels() -> None:
    metrics = Metrics()
    touch_everything(metrics)
    rendered: dict[str, set[str]] = {}
    for name, labels in samples(metrics):
        base = re.sub(r"_(bucket|count|sum|created)$", "", name)
        rendered.setdefault(base, set()).update(k for k, _ in labels if k != "le")
    for name, labels in documented_metrics().items():
        assert name in rendered, f"{name} is in docs/operating.md but not rendered"
        assert rendered[name] == labels, f"{name}: labels {rendered[name]} != docs {labels}"


def test_every_rendered_metric_is_documented_in_the_docs() -> None:
    metrics = Metrics()
    touch_everything(metrics)
    documented = documented_metrics()
    for name, _ in samples(metrics):
        base = re.sub(r"_(bucket|count|sum|created)$", "", name)
        if name.endswith("_created"):
            continue  # prometheus_client's own creation timestamps
        assert base in documented, f"{base} is rendered but not in docs/operating.md's table"


def test_request_duration_buckets_reach_from_a_millisecond_to_ten_seconds() -> None:
    metrics = Metrics()
    metrics.request_seconds.labels("/healthz").observe(0.0005)
    buckets = {
        dict(labels)["le"]: value for (name, labels), value in samples(metrics).items()
        if name == "chroma_sync_gateway_request_duration_seconds_bucket"
    }
    assert buckets["0.001"] == 1
    assert "10.0" in buckets and buckets["+Inf"] == 1
