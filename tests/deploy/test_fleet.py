"""The fleet packaging: what the overlays and components promise, on the rendered objects.

The sidecar overlay keeps every promise of the sidecar base (test_manifests.py runs the same
checks on it) and adds a namespace whose service account the config lists; the shared
StatefulSet gives each replica its own chain behind a PodDisruptionBudget; the components add
a metrics listener scraped by a PodMonitor, an egress policy, the signing key and the archive,
each consistent with the config that uses it. Each check has a negative test on a broken copy.
"""

from __future__ import annotations

import copy
import ipaddress
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from gateway.config.load import parse
from tests.deploy.test_manifests import (
    APP,
    AUDIT_DIR,
    CONFIG_MAP,
    GATEWAY,
    IMAGE,
    OVERLAYS,
    PREFLIGHT,
    SHARED_RENDERS,
    SIDECAR_RENDERS,
    SPEC_CONFIG_KEYS,
    TOKEN_SECRET,
    all_containers,
    check_audit_volume_only_in_gateway,
    check_config_uses_only_spec_keys,
    check_gateway_hardened,
    check_jwks_only_in_gateway,
    check_probes_target_health_endpoints,
    check_projected_token_only_in_app,
    check_team_key_only_in_app,
    check_token_secret_only_in_gateway,
    container,
    containers_mounting,
    containers_using_secret,
    pod_spec,
)
from tests.deploy.tools import RENDERS, render

Doc = dict[str, Any]
Config = dict[str, Any]

SIGNING_SECRET = "chroma-sync-gateway-signing-key"
SIGNING_MOUNT = "/var/run/secrets/chroma-sync-gateway-signing"
GATEWAY_POD_LABEL = "chroma-sync-gateway/gateway"
IRSA = "eks.amazonaws.com/role-arn"
PRIVATE_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")


def objects(kustomization: str) -> list[Doc]:
    return copy.deepcopy(list(render(kustomization)))


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workload(docs: list[Doc]) -> Doc:
    [found] = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    return found


def config_of(docs: list[Doc]) -> Config:
    return tomllib.loads(one(docs, "ConfigMap", CONFIG_MAP)["data"]["config.toml"])


def pod_labels(docs: list[Doc]) -> dict[str, str]:
    labels: dict[str, str] = workload(docs)["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
        if (op == "In" and labels.get(key) not in values) or (
                op == "NotIn" and labels.get(key) in values):
            return False
    return True


def policies_for(docs: list[Doc], kind: str) -> list[Doc]:
    """The NetworkPolicies of `kind` (Ingress or Egress) that select the gateway's pods."""
    labels = pod_labels(docs)
    return [p for p in find(docs, "NetworkPolicy")
            if kind in p["spec"].get("policyTypes", [])
            and selects(p["spec"]["podSelector"], labels)]


# ---------------------------------------------------------------------------------------------
# One version: the image tag


def gateway_images(docs: list[Doc]) -> list[str]:
    return [c["image"] for c in all_containers(workload(docs)).values()
            if c["image"].startswith(IMAGE)]


@pytest.mark.parametrize("kustomization", RENDERS)
def test_image_tag_is_the_package_version(kustomization: str) -> None:
    images = gateway_images(objects(kustomization))
    assert len(images) == 2  # the check-config step and the gateway
    assert set(images) == {f"{IMAGE}:{__version__}"}


def test_version_is_read_from_the_package_by_the_build() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    project = tomllib.loads(text)
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gateway.__version__"}


# ---------------------------------------------------------------------------------------------
# Every configuration: known keys, and loadable by the gateway itself


@pytest.mark.parametrize("kustomization", RENDERS)
def test_config_uses_only_spec_keys_and_loads(kustomization: str) -> None:
    config = config_of(objects(kustomization))
    for section, keys in SPEC_CONFIG_KEYS.items():
        tables = config.get(section, [])
        for table in tables if isinstance(tables, list) else [tables]:
            assert set(table) <= keys, (section, set(table) - keys)
    # The real loader, without the 0.3 audit keys it may not know yet in this tree.
    loadable = copy.deepcopy(config)
    parse(loadable, source=f"{kustomization}/config.toml")


# ---------------------------------------------------------------------------------------------
# The sidecar overlay: every promise of the base, in its namespace


SIDECAR_CHECKS: dict[str, Callable[[Doc, Config], None]] = {
    "token only in gateway": check_token_secret_only_in_gateway,
    "team key only in app": lambda dep, _: check_team_key_only_in_app(dep),
    "hardened": lambda dep, _: check_gateway_hardened(dep),
    "probes": check_probes_target_health_endpoints,
    "audit volume": check_audit_volume_only_in_gateway,
    "projected token": check_projected_token_only_in_app,
    "jwks": check_jwks_only_in_gateway,
    "config keys": lambda _, config: check_config_uses_only_spec_keys(config),
}


@pytest.mark.parametrize("check", sorted(SIDECAR_CHECKS))
def test_sidecar_overlay_keeps_the_base_promises(check: str) -> None:
    docs = objects("overlays/sidecar")
    SIDECAR_CHECKS[check](workload(docs), config_of(docs))


def check_namespace_matches_service_accounts(docs: list[Doc]) -> None:
    """Every object in one namespace, whose pod service account a team lists."""
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    [namespace] = namespaces
    account = pod_spec(workload(docs))["serviceAccountName"]
    one(docs, "ServiceAccount", account)
    listed = [a for t in config_of(docs)["teams"] for a in t.get("service_accounts", [])]
    assert f"{namespace}/{account}" in listed, (namespace, account, listed)


def test_sidecar_overlay_namespace_is_the_service_accounts_namespace() -> None:
    docs = objects("overlays/sidecar")
    check_namespace_matches_service_accounts(docs)
    assert docs[0]["metadata"]["namespace"] == "billing"


def test_namespace_check_rejects_an_unlisted_namespace() -> None:
    docs = objects("overlays/sidecar")
    for d in docs:
        d["metadata"]["namespace"] = "payments"
    with pytest.raises(AssertionError):
        check_namespace_matches_service_accounts(docs)


# ---------------------------------------------------------------------------------------------
# The shared StatefulSet: one chain per replica, a PodDisruptionBudget, callers only


def check_one_chain_per_replica(docs: list[Doc]) -> None:
    sts = one(docs, "StatefulSet")
    config = config_of(docs)
    assert sts["spec"]["replicas"] >= 2
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
    mounts = containers_mounting(sts, claim["metadata"]["name"])
    assert set(mounts) == {GATEWAY, PREFLIGHT}
    assert mounts[GATEWAY]["mountPath"] == AUDIT_DIR == str(Path(config["audit"]["path"]).parent)
    assert mounts[PREFLIGHT]["readOnly"] is True and not mounts[GATEWAY].get("readOnly")
    # Each replica names its chain by its pod name (the default): a fixed instance would
    # give every replica's chain the same name.
    assert "instance" not in config["audit"]
    headless = one(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def check_disruption_budget(docs: list[Doc]) -> None:
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], pod_labels(docs))
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable", 0) >= 1


def check_shared_serves_callers_only(docs: list[Doc]) -> None:
    sts, config = one(docs, "StatefulSet"), config_of(docs)
    gw = container(sts, GATEWAY)
    [port] = [p for p in gw["ports"] if p["name"] == "gateway"]
    assert config["server"]["host"] == "0.0.0.0"
    assert port["containerPort"] == config["server"]["port"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        assert gw[probe]["httpGet"] == {"path": path, "port": "gateway"}, probe
    service = one(docs, "Service", "chroma-sync-gateway")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(docs))
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["gateway"]
    ingress = policies_for(docs, "Ingress")
    rules = [r for p in ingress for r in p["spec"].get("ingress", [])]
    to_gateway = [r for r in rules if {"protocol": "TCP", "port": port["containerPort"]}
                  in r.get("ports", [])]
    assert to_gateway, "no policy admits the callers"
    for rule in to_gateway:
        assert rule.get("from"), "the gateway port is open to every pod"
        for peer in rule["from"]:
            assert peer["podSelector"]["matchLabels"] == {"chroma-sync-gateway/client": "true"}


SHARED_CHECKS: dict[str, Callable[[list[Doc]], None]] = {
    "one chain per replica": check_one_chain_per_replica,
    "disruption budget": check_disruption_budget,
    "callers only": check_shared_serves_callers_only,
}


@pytest.mark.parametrize("kustomization", SHARED_RENDERS)
@pytest.mark.parametrize("check", sorted(SHARED_CHECKS))
def test_shared_statefulset(check: str, kustomization: str) -> None:
    SHARED_CHECKS[check](objects(kustomization))


@pytest.mark.parametrize("kustomization", SHARED_RENDERS)
def test_shared_statefulset_keeps_secrets_in_the_gateway_hardened(kustomization: str) -> None:
    docs = objects(kustomization)
    sts = one(docs, "StatefulSet")
    assert containers_using_secret(sts, TOKEN_SECRET) == {GATEWAY, PREFLIGHT}
    check_gateway_hardened(sts)
    check_jwks_only_in_gateway(sts, config_of(docs))
    assert pod_spec(sts)["automountServiceAccountToken"] is False
    account = one(docs, "ServiceAccount", pod_spec(sts)["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def _pdb_selects_nothing(docs: list[Doc]) -> None:
    one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] = {"app": "other"}


def _fixed_instance(docs: list[Doc]) -> None:
    cm = one(docs, "ConfigMap", CONFIG_MAP)
    cm["data"]["config.toml"] = cm["data"]["config.toml"].replace(
        "[audit]\n", '[audit]\ninstance = "gateway"\n')


def _shared_claim(docs: list[Doc]) -> None:
    one(docs, "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] = [
        "ReadWriteMany"]


def _gateway_open_to_all(docs: list[Doc]) -> None:
    for p in find(docs, "NetworkPolicy"):
        for rule in p["spec"].get("ingress", []):
            rule.pop("from", None)


def _readiness_on_healthz(docs: list[Doc]) -> None:
    container(one(docs, "StatefulSet"), GATEWAY)["readinessProbe"]["httpGet"]["path"] = "/healthz"


SHARED_BREAKAGES = {
    "PDB selects nothing": (_pdb_selects_nothing, "disruption budget"),
    "fixed audit.instance": (_fixed_instance, "one chain per replica"),
    "shared claim": (_shared_claim, "one chain per replica"),
    "gateway open to every pod": (_gateway_open_to_all, "callers only"),
    "readiness on /healthz": (_readiness_on_healthz, "callers only"),
}


@pytest.mark.parametrize("breakage", sorted(SHARED_BREAKAGES))
def test_shared_check_rejects_broken_statefulset(breakage: str) -> None:
    mutate, check_name = SHARED_BREAKAGES[breakage]
    docs = objects("overlays/shared")
    SHARED_CHECKS[check_name](docs)
    mutate(docs)
    with pytest.raises(AssertionError):
        SHARED_CHECKS[check_name](docs)


# ---------------------------------------------------------------------------------------------
# Components: metrics, egress, signing key, archive


def check_metrics_listener(docs: list[Doc]) -> None:
    """The config's metrics listener, on the pod IP, is the port the PodMonitor scrapes, and
    only Prometheus may reach it; the cancel API's exposure is unchanged."""
    config = config_of(docs)
    wl = workload(docs)
    server = config["server"]
    assert server["metrics_host"] == "0.0.0.0" and server["metrics_port"] != server["port"]
    [port] = [p for p in container(wl, GATEWAY).get("ports", []) if p["name"] == "metrics"]
    assert port["containerPort"] == server["metrics_port"]
    monitor = one(docs, "PodMonitor")
    assert selects(monitor["spec"]["selector"], pod_labels(docs))
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"
    admitted = [r for p in policies_for(docs, "Ingress") for r in p["spec"].get("ingress", [])
                if {"protocol": "TCP", "port": server["metrics_port"]} in r.get("ports", [])]
    assert admitted, "no NetworkPolicy admits Prometheus to the metrics port"
    for rule in admitted:
        assert rule.get("from"), "the metrics port is open to every pod"
        for peer in rule["from"]:
            assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def check_egress_dns_and_https_only(docs: list[Doc]) -> None:
    [policy] = policies_for(docs, "Egress")
    rules = policy["spec"]["egress"]
    ports = sorted((p["protocol"], p["port"]) for r in rules for p in r["ports"])
    assert ports == [("TCP", 53), ("TCP", 443), ("UDP", 53)], ports
    for rule in rules:
        assert rule.get("to"), "a rule open to every destination"
        if any(p["port"] == 53 for p in rule["ports"]):
            for peer in rule["to"]:
                assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        else:
            for peer in rule["to"]:
                block = peer["ipBlock"]
                if ipaddress.ip_network(block["cidr"]).version == 4:
                    assert set(PRIVATE_V4) <= set(block.get("except", [])), block


def check_signing_key(docs: list[Doc]) -> None:
    wl, config = workload(docs), config_of(docs)
    assert containers_using_secret(wl, SIGNING_SECRET) == {GATEWAY, PREFLIGHT}
    [volume] = [v["name"] for v in pod_spec(wl)["volumes"]
                if v.get("secret", {}).get("secretName") == SIGNING_SECRET]
    for mount in containers_mounting(wl, volume).values():
        assert mount["mountPath"] == SIGNING_MOUNT and mount["readOnly"] is True
        assert "subPath" not in mount, "subPath is never updated"
    assert config["audit"]["signing_key_file"] == f"{SIGNING_MOUNT}/key"


def check_archive(docs: list[Doc]) -> None:
    wl, config = workload(docs), config_of(docs)
    assert config["audit"]["archive"].startswith("s3://")
    env = {e["name"]: e for e in container(wl, GATEWAY).get("env", [])}
    assert "AWS_REGION" in env
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), "a static AWS key"
    account = one(docs, "ServiceAccount", pod_spec(wl)["serviceAccountName"])
    assert account["metadata"]["annotations"][IRSA].startswith("arn:aws:iam::")
    assert APP not in containers_using_secret(wl, SIGNING_SECRET)


COMPONENT_CHECKS: dict[str, Callable[[list[Doc]], None]] = {
    "metrics": check_metrics_listener,
    "egress": check_egress_dns_and_https_only,
    "signing key": check_signing_key,
    "archive": check_archive,
}
OVERLAY_COMPONENTS = {
    "overlays/sidecar": ("metrics", "signing key", "archive"),
    "overlays/shared": ("metrics", "egress", "signing key", "archive"),
}


@pytest.mark.parametrize(
    ("overlay", "check"),
    [(o, c) for o, checks in OVERLAY_COMPONENTS.items() for c in checks],
)
def test_overlay_component(overlay: str, check: str) -> None:
    COMPONENT_CHECKS[check](objects(overlay))


def test_the_bases_carry_none_of_the_components() -> None:
    for base in ("base", "shared"):
        docs = objects(base)
        config = config_of(docs)
        assert not find(docs, "PodMonitor") and not policies_for(docs, "Egress")
        assert "metrics_port" not in config["server"]
        assert not {"signing_key_file", "archive"} & set(config["audit"])


def _metrics_port_differs(docs: list[Doc]) -> None:
    for port in container(workload(docs), GATEWAY)["ports"]:
        if port["name"] == "metrics":
            port["containerPort"] = 9100


def _monitor_selects_other_pods(docs: list[Doc]) -> None:
    one(docs, "PodMonitor")["spec"]["selector"] = {"matchLabels": {"app": "other"}}


def _metrics_open_to_all(docs: list[Doc]) -> None:
    for p in find(docs, "NetworkPolicy", "chroma-sync-gateway-metrics"):
        p["spec"]["ingress"][0].pop("from")


def _egress_to_anything(docs: list[Doc]) -> None:
    policies_for(docs, "Egress")[0]["spec"]["egress"].append(
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 80}]})


def _egress_to_the_cluster(docs: list[Doc]) -> None:
    for rule in policies_for(docs, "Egress")[0]["spec"]["egress"]:
        for peer in rule["to"]:
            peer.get("ipBlock", {}).pop("except", None)


def _signing_key_by_subpath(docs: list[Doc]) -> None:
    for m in container(workload(docs), GATEWAY)["volumeMounts"]:
        if m["name"] == "audit-signing-key":
            m["subPath"] = "key"


def _signing_key_elsewhere(docs: list[Doc]) -> None:
    cm = one(docs, "ConfigMap", CONFIG_MAP)
    cm["data"]["config.toml"] = cm["data"]["config.toml"].replace(SIGNING_MOUNT, "/keys")


def _signing_key_in_app(docs: list[Doc]) -> None:
    container(workload(docs), APP)["volumeMounts"].append(
        {"name": "audit-signing-key", "mountPath": "/k", "readOnly": True})


def _static_aws_key(docs: list[Doc]) -> None:
    container(workload(docs), GATEWAY)["env"].append(
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "a", "key": "k"}}})


COMPONENT_BREAKAGES = {
    "metrics port differs": (_metrics_port_differs, "metrics"),
    "PodMonitor selects other pods": (_monitor_selects_other_pods, "metrics"),
    "metrics open to every pod": (_metrics_open_to_all, "metrics"),
    "egress to anything on 80": (_egress_to_anything, "egress"),
    "egress into the cluster": (_egress_to_the_cluster, "egress"),
    "signing key by subPath": (_signing_key_by_subpath, "signing key"),
    "signing key read elsewhere": (_signing_key_elsewhere, "signing key"),
    "signing key in app": (_signing_key_in_app, "signing key"),
    "static AWS key": (_static_aws_key, "archive"),
}


@pytest.mark.parametrize("breakage", sorted(COMPONENT_BREAKAGES))
def test_component_check_rejects_broken_overlay(breakage: str) -> None:
    mutate, check_name = COMPONENT_BREAKAGES[breakage]
    overlay = "overlays/sidecar" if check_name != "egress" else "overlays/shared"
    docs = objects(overlay)
    COMPONENT_CHECKS[check_name](docs)
    mutate(docs)
    with pytest.raises(AssertionError):
        COMPONENT_CHECKS[check_name](docs)


def test_sidecar_overlay_keeps_the_cancel_api_on_loopback() -> None:
    docs = objects("overlays/sidecar")
    assert config_of(docs)["server"]["host"] == "127.0.0.1"
    assert [d for d in docs if d["kind"] == "Service"] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_shipped_by_an_overlay(overlay: str) -> None:
    assert find(objects(overlay), "Secret") == []


@pytest.mark.parametrize("kustomization", SIDECAR_RENDERS)
def test_sidecar_runs_one_pod_per_chain(kustomization: str) -> None:
    dep = workload(objects(kustomization))
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
