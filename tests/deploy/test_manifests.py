"""Checks of the deployment artefacts under deploy/: no network, no container engine.

Every kustomization (the sidecar base, the shared StatefulSet base, and the overlays built on
them with the components) is rendered with `kubectl kustomize`, and every object is
validated: the Kubernetes kinds against the OpenAPI schemas shipped by `kubernetes-validate`
(strict: unknown fields are errors), the Prometheus Operator kinds against their CRD schemas
(tests/deploy/crds). The security properties the examples promise are checked by reading the
rendered objects, the ConfigMap's TOML and the Dockerfile. Each policy check is a helper that
raises AssertionError, and each has a negative test on a deliberately broken copy, so a check
that can't fail would be noticed.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.tools import (
    DEPLOY,
    RENDERS,
    ROOT,
    CustomResourceInvalid,
    crd_validators,
    render,
    validate_custom_resource,
)

DOCKERFILE = DEPLOY / "Dockerfile"

# The oldest Kubernetes with native sidecars (init containers with restartPolicy: Always) on by
# default, and the newest schema set kubernetes-validate ships.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

GATEWAY = "chroma-sync-gateway"
PREFLIGHT = "check-config"  # the init step running `check-config --strict` on the same mounts
HMAC_SECRET = "chroma-sync-gateway-audit-hmac"
HMAC_MOUNT = "/var/run/secrets/chroma-sync-gateway-audit"
AUDIT_VOLUME_BYTES = 1 << 30  # the audit claims' 1Gi
PINNED_BASE = re.compile(r"python:3\.12-slim@sha256:[0-9a-f]{64}")
APP = "app"
TOKEN_SECRET = "chroma-sync-token"
TOKEN_MOUNT = "/var/run/secrets/chroma-sync"
TEAM_KEY_SECRET = "billing-team-key"
CONFIG_MAP = "chroma-sync-gateway-config"
CONFIG_DIR = "/etc/chroma-sync-gateway"
AUDIT_PVC = "chroma-sync-gateway-audit"
AUDIT_DIR = "/var/lib/chroma-sync-gateway"
GATEWAY_UID = 10001
IMAGE = "registry.example.internal/chroma-sync-gateway"
SIDECAR_RENDERS = ("base", "overlays/sidecar")
SHARED_RENDERS = ("shared", "overlays/shared")
OVERLAYS = ("overlays/sidecar", "overlays/shared")

# The keys the configuration reference names as the basics, plus the audit keys of tamper
# evidence, the metrics listener and the audit keys of 0.3.
SPEC_CONFIG_KEYS: dict[str, set[str]] = {
    "server": {"host", "port", "metrics_port", "metrics_host"},
    "upstream": {"base_url", "token_file", "token_env", "ca_file", "connect_timeout", "timeout"},
    "audit": {
        "path",
        "fsync",
        "hmac_key_file",
        "checkpoint_every",
        "checkpoint_seconds",
        "stdout",
        "max_bytes",
        "keep_files",
        "signing_key_file",
        "archive",
        "checkpoint_file",
        "origin",
        "instance",
    },
    "teams": {"name", "keys", "scope", "enabled", "service_accounts"},
    "issuers": {"name", "issuer", "audience", "jwks_file"},
}
# 0.3 keys this tree's config loader may not know yet: left out when the rendered configs are

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Loading


def manifests(kustomization: str = "base") -> list[tuple[str, Doc]]:
    """Every object `kubectl kustomize` renders for `kustomization`, with its name."""
    return [(kustomization, d) for d in render(kustomization)]


MANIFESTS = manifests("base")
ALL_MANIFESTS = [pair for name in RENDERS for pair in manifests(name)]


def only(kind: str, name: str | None = None, kustomization: str = "base") -> Doc:
    found = [
        d
        for _, d in manifests(kustomization)
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment(kustomization: str = "base") -> Doc:
    return copy.deepcopy(only("Deployment", kustomization=kustomization))


def gateway_config_text(kustomization: str = "base") -> str:
    return only("ConfigMap", CONFIG_MAP, kustomization)["data"]["config.toml"]


def gateway_config(kustomization: str = "base") -> dict[str, Any]:
    return tomllib.loads(gateway_config_text(kustomization))


def pod_spec(dep: Doc) -> Doc:
    return dep["spec"]["template"]["spec"]


def all_containers(dep: Doc) -> dict[str, Doc]:
    """Every container of the pod (init, sidecar and main) by name."""
    spec = pod_spec(dep)
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    return {c["name"]: c for c in containers}


def container(dep: Doc, name: str) -> Doc:
    containers = all_containers(dep)
    assert name in containers, f"no container named {name!r}"
    return containers[name]


def volume_names_using_secret(dep: Doc, secret: str) -> set[str]:
    names = set()
    for vol in pod_spec(dep).get("volumes", []):
        if vol.get("secret", {}).get("secretName") == secret:
            names.add(vol["name"])
        for source in vol.get("projected", {}).get("sources", []):
            if source.get("secret", {}).get("name") == secret:
                names.add(vol["name"])
    return names


def containers_using_secret(dep: Doc, secret: str) -> set[str]:
    """Containers that can read `secret`: through env, envFrom or a mounted volume."""
    volumes = volume_names_using_secret(dep, secret)
    users = set()
    for name, c in all_containers(dep).items():
        for env in c.get("env", []):
            if env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret:
                users.add(name)
        for env_from in c.get("envFrom", []):
            if env_from.get("secretRef", {}).get("name") == secret:
                users.add(name)
        if any(m["name"] in volumes for m in c.get("volumeMounts", [])):
            users.add(name)
    return users


def containers_mounting(dep: Doc, volume: str) -> dict[str, Doc]:
    return {
        name: m
        for name, c in all_containers(dep).items()
        for m in c.get("volumeMounts", [])
        if m["name"] == volume
    }


def volume_named(dep: Doc, predicate: Any) -> str:
    names = [v["name"] for v in pod_spec(dep).get("volumes", []) if predicate(v)]
    assert len(names) == 1, f"expected one matching volume, found {names}"
    return names[0]


# ---------------------------------------------------------------------------------------------
# Schema validation


def validate_manifest(doc: Doc, version: str) -> str:
    """Validate one manifest document against Kubernetes `version`'s schema, strictly."""
    return kubernetes_validate.validate(doc, version, strict=True)


def test_deploy_kubernetes_holds_the_sidecar_example_manifests() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in MANIFESTS)
    assert ("Deployment", "billing-worker") in kinds
    assert ("ConfigMap", CONFIG_MAP) in kinds
    assert ("PersistentVolumeClaim", AUDIT_PVC) in kinds


def _doc_id(pair: tuple[str, Doc]) -> str:
    name, doc = pair
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


BUILT_IN = [p for p in ALL_MANIFESTS if (p[1]["apiVersion"], p[1]["kind"]) not in crd_validators()]
CUSTOM = [p for p in ALL_MANIFESTS if (p[1]["apiVersion"], p[1]["kind"]) in crd_validators()]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("file", "doc"), BUILT_IN, ids=[_doc_id(p) for p in BUILT_IN])
def test_manifest_is_valid_against_kubernetes_schema(file: str, doc: Doc, version: str) -> None:
    validated = validate_manifest(doc, version)
    assert validated == version.rsplit(".", 1)[0]


@pytest.mark.parametrize(("file", "doc"), CUSTOM, ids=[_doc_id(p) for p in CUSTOM])
def test_prometheus_operator_object_is_valid_against_its_crd_schema(file: str, doc: Doc) -> None:
    validate_custom_resource(doc)


def test_every_overlay_ships_a_podmonitor_and_the_alert_rules() -> None:
    for overlay in OVERLAYS:
        kinds = {d["kind"] for _, d in manifests(overlay)}
        assert {"PodMonitor", "PrometheusRule"} <= kinds, overlay


@pytest.mark.parametrize(
    ("label", "mutate"),
    [
        ("misspelt field", lambda d: d["spec"]["podMetricsEndpoints"][0].update(prot="metrics")),
        ("port as a number", lambda d: d["spec"]["podMetricsEndpoints"][0].update(port=9090)),
        ("no selector", lambda d: d["spec"].pop("selector")),
        ("bad interval", lambda d: d["spec"]["podMetricsEndpoints"][0].update(interval="30 s")),
    ],
)
def test_crd_validation_rejects_a_broken_podmonitor(label: str, mutate: Any) -> None:
    doc = copy.deepcopy(only("PodMonitor", kustomization="overlays/shared"))
    validate_custom_resource(doc)
    mutate(doc)
    with pytest.raises(CustomResourceInvalid):
        validate_custom_resource(doc)


def test_crd_validation_rejects_a_rule_without_expr() -> None:
    doc = copy.deepcopy(only("PrometheusRule", kustomization="overlays/shared"))
    validate_custom_resource(doc)
    del doc["spec"]["groups"][0]["rules"][0]["expr"]
    with pytest.raises(CustomResourceInvalid):
        validate_custom_resource(doc)


def test_schema_validation_rejects_deployment_whose_containers_is_a_string() -> None:
    bad = deployment()
    pod_spec(bad)["containers"] = "app"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(bad, K8S_VERSIONS[-1])


def test_schema_validation_is_strict_about_misspelt_fields() -> None:
    bad = deployment()
    container(bad, GATEWAY)["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(bad, K8S_VERSIONS[-1])


def test_no_secret_manifest_with_a_value_is_shipped() -> None:
    # Secrets are created with kubectl (docs/deployment.md): a placeholder Secret applied with
    # the rest of the directory would overwrite a real, rotated one.
    assert [d for _, d in ALL_MANIFESTS if d.get("kind") == "Secret"] == []


# ---------------------------------------------------------------------------------------------
# Policy checks (each raises AssertionError) and their tests


def check_token_secret_only_in_gateway(dep: Doc, config: dict[str, Any]) -> None:
    assert containers_using_secret(dep, TOKEN_SECRET) == {GATEWAY, PREFLIGHT}
    volume = volume_named(dep, lambda v: v.get("secret", {}).get("secretName") == TOKEN_SECRET)
    mounts = containers_mounting(dep, volume)
    assert set(mounts) == {GATEWAY, PREFLIGHT}
    assert mounts[PREFLIGHT] == mounts[GATEWAY]
    mount = mounts[GATEWAY]
    assert mount["mountPath"] == TOKEN_MOUNT
    assert mount.get("readOnly") is True
    assert "subPath" not in mount and "subPathExpr" not in mount, "subPath breaks rotation"
    assert config["upstream"]["token_file"] == f"{TOKEN_MOUNT}/token"
    assert "token_env" not in config["upstream"]


def check_team_key_only_in_app(dep: Doc) -> None:
    assert containers_using_secret(dep, TEAM_KEY_SECRET) == {APP}
    env = {e["name"]: e for e in container(dep, APP).get("env", [])}
    ref = env["CHROMA_SYNC_GATEWAY_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == TEAM_KEY_SECRET


def check_gateway_hardened(dep: Doc) -> None:
    gw = container(dep, GATEWAY)
    sc = gw["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc.get("privileged") is not True
    for kind in ("requests", "limits"):
        assert set(gw["resources"][kind]) == {"cpu", "memory"}


def probe_url(probe: Doc) -> str:
    """The URL an exec probe fetches; httpGet probes can't reach a loopback-bound gateway."""
    assert "httpGet" not in probe and "tcpSocket" not in probe, (
        "the kubelet probes the pod IP, which a gateway on 127.0.0.1 doesn't listen on"
    )
    command = " ".join(probe["exec"]["command"])
    urls = re.findall(r"https?://[^\s'\"]+", command)
    assert len(urls) == 1, f"expected one URL in {command!r}"
    return urls[0]


def check_probes_target_health_endpoints(dep: Doc, config: dict[str, Any]) -> None:
    gw = container(dep, GATEWAY)
    base = f"http://{config['server']['host']}:{config['server']['port']}"
    assert probe_url(gw["livenessProbe"]) == f"{base}/healthz"
    assert probe_url(gw["readinessProbe"]) == f"{base}/readyz"
    if "startupProbe" in gw:
        assert probe_url(gw["startupProbe"]) == f"{base}/healthz"


def check_config_uses_only_spec_keys(config: dict[str, Any]) -> None:
    assert set(config) <= set(SPEC_CONFIG_KEYS), (
        f"unknown sections {set(config) - set(SPEC_CONFIG_KEYS)}"
    )
    for section, keys in SPEC_CONFIG_KEYS.items():
        tables = config.get(section, [] if section in ("teams", "issuers") else {})
        if section == "teams":
            assert isinstance(tables, list) and tables, "teams must be a non-empty [[teams]] array"
        elif section == "issuers":
            assert isinstance(tables, list), "issuers must be an [[issuers]] array"
        else:
            tables = [tables]
        for table in tables:
            assert isinstance(table, dict), f"{section} must be a table"
            unknown = set(table) - keys
            assert not unknown, f"unknown keys in {section}: {sorted(unknown)}"
    assert config["server"]["host"] == "127.0.0.1"
    assert config["server"]["port"] == 8080
    assert config["upstream"]["base_url"] == "https://sync.trychroma.com"
    assert ("token_file" in config["upstream"]) != ("token_env" in config["upstream"])
    assert config["audit"]["fsync"] is True
    for team in config["teams"]:
        for key in team.get("keys", []):
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", key), f"not a stored key form: {key!r}"


def check_audit_volume_only_in_gateway(dep: Doc, config: dict[str, Any]) -> None:
    volume = volume_named(
        dep, lambda v: v.get("persistentVolumeClaim", {}).get("claimName") == AUDIT_PVC
    )
    mounts = containers_mounting(dep, volume)
    assert set(mounts) == {GATEWAY, PREFLIGHT}
    assert mounts[PREFLIGHT]["readOnly"] is True  # it checks the folder, never writes it
    assert mounts[GATEWAY]["mountPath"] == mounts[PREFLIGHT]["mountPath"] == AUDIT_DIR
    assert not mounts[GATEWAY].get("readOnly")
    assert str(Path(config["audit"]["path"]).parent) == AUDIT_DIR


def test_token_secret_is_mounted_only_in_gateway_without_subpath() -> None:
    check_token_secret_only_in_gateway(deployment(), gateway_config())


def test_team_key_secret_is_referenced_only_by_app() -> None:
    check_team_key_only_in_app(deployment())


def test_gateway_runs_non_root_read_only_without_capabilities() -> None:
    check_gateway_hardened(deployment())


def test_gateway_probes_target_healthz_and_readyz_on_loopback() -> None:
    check_probes_target_health_endpoints(deployment(), gateway_config())


def test_configmap_config_parses_and_uses_only_spec_keys_on_loopback() -> None:
    check_config_uses_only_spec_keys(gateway_config())


def test_audit_volume_is_mounted_only_in_gateway_where_config_writes() -> None:
    check_audit_volume_only_in_gateway(deployment(), gateway_config())
    assert only("PersistentVolumeClaim", AUDIT_PVC)


def test_app_calls_gateway_on_loopback_port_from_config() -> None:
    config = gateway_config()
    env = {e["name"]: e.get("value") for e in container(deployment(), APP).get("env", [])}
    assert env["CHROMA_SYNC_URL"] == f"http://127.0.0.1:{config['server']['port']}"


def test_gateway_reads_config_from_configmap_directory_mount() -> None:
    dep = deployment()
    volume = volume_named(dep, lambda v: v.get("configMap", {}).get("name") == CONFIG_MAP)
    mounts = containers_mounting(dep, volume)
    assert set(mounts) == {GATEWAY, PREFLIGHT}
    assert mounts[GATEWAY]["mountPath"] == CONFIG_DIR
    assert "subPath" not in mounts[GATEWAY]
    assert container(dep, GATEWAY)["args"] == ["serve", "--config", f"{CONFIG_DIR}/config.toml"]


def test_one_pod_writes_the_audit_chain() -> None:
    dep = deployment()
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert pod_spec(dep)["terminationGracePeriodSeconds"] == 30


def _mount_token_in_app(dep: Doc) -> None:
    container(dep, APP).setdefault("volumeMounts", []).append(
        {"name": "chroma-sync-token", "mountPath": TOKEN_MOUNT, "readOnly": True}
    )


def _token_as_app_env(dep: Doc) -> None:
    container(dep, APP)["env"].append(
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": "token"}}}
    )


def _token_by_subpath(dep: Doc) -> None:
    for m in container(dep, GATEWAY)["volumeMounts"]:
        if m["mountPath"] == TOKEN_MOUNT:
            m["mountPath"] = f"{TOKEN_MOUNT}/token"
            m["subPath"] = "token"


def _team_key_in_gateway(dep: Doc) -> None:
    container(dep, GATEWAY).setdefault("envFrom", []).append(
        {"secretRef": {"name": TEAM_KEY_SECRET}}
    )


def _gateway_as_root(dep: Doc) -> None:
    container(dep, GATEWAY)["securityContext"]["runAsUser"] = 0


def _gateway_writable_root(dep: Doc) -> None:
    container(dep, GATEWAY)["securityContext"]["readOnlyRootFilesystem"] = False


def _gateway_keeps_capabilities(dep: Doc) -> None:
    container(dep, GATEWAY)["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}


def _liveness_on_readyz(dep: Doc) -> None:
    probe = container(dep, GATEWAY)["livenessProbe"]
    probe["exec"]["command"] = [
        part.replace("/healthz", "/readyz") for part in probe["exec"]["command"]
    ]


def _readiness_by_http_get(dep: Doc) -> None:
    container(dep, GATEWAY)["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 8080}}


def _audit_in_app(dep: Doc) -> None:
    container(dep, APP).setdefault("volumeMounts", []).append(
        {"name": "audit", "mountPath": AUDIT_DIR}
    )


BROKEN_DEPLOYMENTS = {
    "token mounted in app": (_mount_token_in_app, "token"),
    "token as app env": (_token_as_app_env, "token"),
    "token by subPath": (_token_by_subpath, "token"),
    "team key in gateway": (_team_key_in_gateway, "team_key"),
    "gateway as root": (_gateway_as_root, "hardened"),
    "gateway writable root": (_gateway_writable_root, "hardened"),
    "gateway keeps capabilities": (_gateway_keeps_capabilities, "hardened"),
    "liveness on readyz": (_liveness_on_readyz, "probes"),
    "readiness by httpGet": (_readiness_by_http_get, "probes"),
    "audit volume in app": (_audit_in_app, "audit"),
}

DEPLOYMENT_CHECKS = {
    "token": lambda dep: check_token_secret_only_in_gateway(dep, gateway_config()),
    "team_key": check_team_key_only_in_app,
    "hardened": check_gateway_hardened,
    "probes": lambda dep: check_probes_target_health_endpoints(dep, gateway_config()),
    "audit": lambda dep: check_audit_volume_only_in_gateway(dep, gateway_config()),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_DEPLOYMENTS))
def test_policy_check_rejects_broken_deployment(breakage: str) -> None:
    mutate, check_name = BROKEN_DEPLOYMENTS[breakage]
    check = DEPLOYMENT_CHECKS[check_name]
    dep = deployment()
    check(dep)  # the unbroken deployment passes...
    mutate(dep)
    with pytest.raises(AssertionError):  # ...and the broken one doesn't
        check(dep)


@pytest.mark.parametrize(
    ("label", "old", "new"),
    [
        ("host on all interfaces", 'host = "127.0.0.1"', 'host = "0.0.0.0"'),
        ("unknown key", "fsync = true", "fsync = true\nretention_days = 30"),
        ("unknown section", "[server]", "[metrics]\nenabled = true\n\n[server]"),
        ("plaintext team key", "sha256:0157ff", "csg_0157ff"),
    ],
)
def test_config_check_rejects_bad_config(label: str, old: str, new: str) -> None:
    text = gateway_config_text()
    assert old in text, label
    with pytest.raises(AssertionError):
        check_config_uses_only_spec_keys(tomllib.loads(text.replace(old, new, 1)))


# ---------------------------------------------------------------------------------------------
# Workload identity: the app's projected token, the gateway's JWKS


IDENTITY_VOLUME_AUDIENCE = "chroma-sync-gateway"
MAX_TOKEN_SECONDS = 3600  # "short-lived": the kubelet's default is an hour; the example uses 600
JWKS_CONFIG_MAP = "cluster-jwks"


def projected_token_sources(volume: Doc) -> list[Doc]:
    return [s["serviceAccountToken"] for s in volume.get("projected", {}).get("sources", [])
            if "serviceAccountToken" in s]


def check_projected_token_only_in_app(dep: Doc, config: dict[str, Any]) -> None:
    spec = pod_spec(dep)
    token_volumes = [v for v in spec.get("volumes", []) if projected_token_sources(v)]
    assert len(token_volumes) == 1, "expected one projected service-account token volume"
    [source] = projected_token_sources(token_volumes[0])
    [issuer] = config["issuers"]
    assert source["audience"] == IDENTITY_VOLUME_AUDIENCE == issuer["audience"]
    assert 600 <= source["expirationSeconds"] <= MAX_TOKEN_SECONDS, "not short-lived"
    mounts = containers_mounting(dep, token_volumes[0]["name"])
    assert set(mounts) == {APP}, "the gateway needs no token of its own"
    assert mounts[APP].get("readOnly") is True and "subPath" not in mounts[APP]
    file = f"{mounts[APP]['mountPath']}/{source['path']}"
    env = {e["name"]: e.get("value") for e in container(dep, APP).get("env", [])}
    assert env["CHROMA_SYNC_GATEWAY_TOKEN_FILE"] == file
    # The pod's account is one a team lists; the API-server token is never mounted.
    account = spec["serviceAccountName"]
    listed = [a for t in config["teams"] for a in t.get("service_accounts", [])]
    assert any(a.split("/", 1)[1] == account for a in listed), (account, listed)
    assert spec["automountServiceAccountToken"] is False


def check_jwks_only_in_gateway(dep: Doc, config: dict[str, Any]) -> None:
    volume = volume_named(
        dep, lambda v: v.get("configMap", {}).get("name") == JWKS_CONFIG_MAP)
    mounts = containers_mounting(dep, volume)
    assert set(mounts) == {GATEWAY}
    mount = mounts[GATEWAY]
    assert mount.get("readOnly") is True
    assert "subPath" not in mount and "subPathExpr" not in mount, "subPath is never updated"
    [issuer] = config["issuers"]
    assert str(Path(issuer["jwks_file"]).parent) == mount["mountPath"]


def test_app_gets_a_short_lived_token_for_the_gateways_audience() -> None:
    check_projected_token_only_in_app(deployment(), gateway_config())


def test_jwks_configmap_is_mounted_only_in_gateway_where_config_reads_it() -> None:
    check_jwks_only_in_gateway(deployment(), gateway_config())


def test_the_pods_service_account_is_shipped_without_an_api_token() -> None:
    account = only("ServiceAccount", pod_spec(deployment())["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def test_no_jwks_configmap_is_shipped() -> None:
    # It is the cluster's own (docs/deployment.md): a shipped one would overwrite the real keys.
    assert [d for _, d in ALL_MANIFESTS if d.get("kind") == "ConfigMap"
            and d["metadata"]["name"] == JWKS_CONFIG_MAP] == []


def _token_volume(dep: Doc) -> Doc:
    return next(v for v in pod_spec(dep)["volumes"] if projected_token_sources(v))


def _token_for_another_audience(dep: Doc) -> None:
    projected_token_sources(_token_volume(dep))[0]["audience"] = "kubernetes"


def _long_lived_token(dep: Doc) -> None:
    projected_token_sources(_token_volume(dep))[0]["expirationSeconds"] = 86400


def _token_in_gateway(dep: Doc) -> None:
    container(dep, GATEWAY)["volumeMounts"].append(
        {"name": _token_volume(dep)["name"], "mountPath": "/t", "readOnly": True})


def _api_token_automounted(dep: Doc) -> None:
    pod_spec(dep)["automountServiceAccountToken"] = True


def _jwks_by_subpath(dep: Doc) -> None:
    for m in container(dep, GATEWAY)["volumeMounts"]:
        if m["name"] == "cluster-jwks":
            m["mountPath"] += "/jwks.json"
            m["subPath"] = "jwks.json"


def _jwks_in_app(dep: Doc) -> None:
    container(dep, APP)["volumeMounts"].append(
        {"name": "cluster-jwks", "mountPath": "/jwks", "readOnly": True})


IDENTITY_BREAKAGES = {
    "token for another audience": (_token_for_another_audience, check_projected_token_only_in_app),
    "long-lived token": (_long_lived_token, check_projected_token_only_in_app),
    "token in gateway": (_token_in_gateway, check_projected_token_only_in_app),
    "API token automounted": (_api_token_automounted, check_projected_token_only_in_app),
    "JWKS by subPath": (_jwks_by_subpath, check_jwks_only_in_gateway),
    "JWKS in app": (_jwks_in_app, check_jwks_only_in_gateway),
}


@pytest.mark.parametrize("breakage", sorted(IDENTITY_BREAKAGES))
def test_identity_check_rejects_broken_deployment(breakage: str) -> None:
    mutate, check = IDENTITY_BREAKAGES[breakage]
    dep = deployment()
    check(dep, gateway_config())
    mutate(dep)
    with pytest.raises(AssertionError):
        check(dep, gateway_config())


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            word, _, rest = pending.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
        pending = ""
    if pending.strip():
        word, _, rest = pending.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|(^|_)KEY(_|$)|AUTH", re.I)
SECRET_VALUE = re.compile(r"csg_[A-Za-z0-9_-]{8,}|sha256:[0-9a-f]{64}|BEGIN [A-Z ]*PRIVATE KEY")


def env_and_arg_names(instructions: list[tuple[str, str]]) -> list[str]:
    names = []
    for word, rest in instructions:
        if word not in ("ENV", "ARG"):
            continue
        parts = shlex.split(rest)
        if word == "ENV" and parts and "=" not in parts[0]:
            names.append(parts[0])  # legacy `ENV NAME value`
        else:
            names.extend(part.split("=", 1)[0] for part in parts)
    return names


def check_dockerfile_bakes_no_secret(text: str) -> None:
    instructions = dockerfile_instructions(text)
    secretish = [n for n in env_and_arg_names(instructions) if SECRET_NAME.search(n)]
    assert not secretish, f"ENV/ARG that looks like a secret: {secretish}"
    for word, rest in instructions:
        # A base image's digest is a sha256 too, and no secret.
        shown = PINNED_BASE.sub("", rest) if word == "FROM" else rest
        assert not SECRET_VALUE.search(shown), f"secret-looking value in {word}"
        if word in ("COPY", "ADD"):
            assert not re.search(r"config\.toml|token|secret|\.key\b|\.pem\b", rest, re.I), rest


def check_dockerfile_runs_as_non_root_uid(text: str) -> int:
    users = [rest for word, rest in dockerfile_instructions(text) if word == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":", 1)[0]
    assert user.isdigit(), f"USER {users[-1]!r} isn't numeric (runAsNonRoot can't verify it)"
    assert int(user) != 0, "USER is root"
    return int(user)


def dockerfile_text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_dockerfile_bakes_in_no_token_or_key() -> None:
    check_dockerfile_bakes_no_secret(dockerfile_text())


def test_dockerfile_runs_as_fixed_non_root_uid_matching_kubernetes() -> None:
    uid = check_dockerfile_runs_as_non_root_uid(dockerfile_text())
    assert uid == GATEWAY_UID
    dep = deployment()
    assert container(dep, GATEWAY)["securityContext"]["runAsUser"] == uid
    assert pod_spec(dep)["securityContext"]["fsGroup"] == uid


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    instructions = dockerfile_instructions(dockerfile_text())
    stages = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert len(stages) >= 2
    assert all(PINNED_BASE.fullmatch(image) for image in stages), stages


def dockerfile_args(word: str) -> list[str]:
    """The arguments of every `word` instruction of the Dockerfile, in order."""
    return [rest for w, rest in dockerfile_instructions(dockerfile_text()) if w == word]


def test_dockerfile_entrypoint_and_cmd_match_kubernetes_args() -> None:
    assert json.loads(dockerfile_args("ENTRYPOINT")[-1]) == ["chroma-sync-gateway"]
    cmd = json.loads(dockerfile_args("CMD")[-1])
    assert cmd == ["serve", "--config", f"{CONFIG_DIR}/config.toml"]
    assert container(deployment(), GATEWAY)["args"] == cmd
    assert dockerfile_args("EXPOSE") == ["8080"]


def test_dockerfile_sets_python_runtime_env() -> None:
    env = " ".join(dockerfile_args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env


def test_dockerfile_creates_audit_dir_owned_by_the_gateway_user() -> None:
    runs = " ".join(dockerfile_args("RUN"))
    assert re.search(rf"install -d -o {GATEWAY_UID} -g {GATEWAY_UID} .*{AUDIT_DIR}", runs)


LOCKED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", re.M)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_locked_packages() -> set[str]:
    """The packages pinned by the lock files the image's RUN steps install (`-r FILE`)."""
    runs = " ".join(dockerfile_args("RUN"))
    locks = {ROOT / Path(name).name for name in re.findall(r"-r\s+(\S+)", runs)}
    assert locks, "the Dockerfile installs from no lock file"
    return {normalized(m) for lock in locks for m in LOCKED.findall(lock.read_text())}


def extra_packages(extra: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"][extra]
    return {normalized(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for req in requirements}


def check_image_has_what_configs_need(configs: dict[str, dict[str, Any]],
                                      locked: set[str]) -> None:
    """A config that archives to S3 needs the `s3` extra in the image, or the archive's
    process reports it unavailable at start and nothing leaves the pod."""
    for name, config in configs.items():
        if str(config.get("audit", {}).get("archive", "")).startswith("s3://"):
            missing = extra_packages("s3") - locked
            assert not missing, f"{name} archives to S3; the image's lock lacks {missing}"


def test_image_installs_the_s3_extra_the_overlays_archive_with() -> None:
    configs = {overlay: gateway_config(overlay) for overlay in OVERLAYS}
    assert any(str(c["audit"].get("archive", "")).startswith("s3://") for c in configs.values())
    check_image_has_what_configs_need(configs, image_locked_packages())


UNUSED_BY_THE_GATEWAY = {"watchfiles", "websockets", "python-dotenv", "pyyaml"}
"""What `uvicorn[standard]` would bring: uvicorn imports watchfiles whenever it is installed
(~1.7 MiB of each gateway's memory), and the gateway uses none of them."""


def test_image_locks_uvicorns_fast_parts_without_the_rest_of_its_standard_extra() -> None:
    locked = image_locked_packages()
    assert {"uvicorn", "uvloop", "httptools"} <= locked
    assert not locked & UNUSED_BY_THE_GATEWAY, locked & UNUSED_BY_THE_GATEWAY


def test_image_check_fails_when_the_lock_lacks_the_s3_extra() -> None:
    configs = {"overlays/sidecar": gateway_config("overlays/sidecar")}
    with pytest.raises(AssertionError, match="obstore"):
        check_image_has_what_configs_need(configs, image_locked_packages() - {"obstore"})


@pytest.mark.parametrize(
    "snippet",
    [
        "ENV CHROMA_SYNC_TOKEN=abc123",
        "ENV CHROMA_SYNC_TOKEN abc123",
        "ARG API_KEY",
        "ENV A=1 \\\n    GATEWAY_KEY=xyz",
        "ARG HMAC_KEY_FILE=/run/k",
        "ENV DEMO=csg_0123456789abcdef",
        "COPY config.toml /etc/chroma-sync-gateway/config.toml",
    ],
)
def test_dockerfile_secret_check_rejects_baked_secret(snippet: str) -> None:
    check_dockerfile_bakes_no_secret(dockerfile_text())
    with pytest.raises(AssertionError):
        check_dockerfile_bakes_no_secret(dockerfile_text() + "\n" + snippet + "\n")


@pytest.mark.parametrize("user_line", ["USER root", "USER 0", "USER 0:0", "USER gateway", None])
def test_dockerfile_user_check_rejects_root_or_named_user(user_line: str | None) -> None:
    lines = [ln for ln in dockerfile_text().splitlines() if not ln.startswith("USER ")]
    if user_line:
        lines.append(user_line)
    with pytest.raises(AssertionError):
        check_dockerfile_runs_as_non_root_uid("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Operating it: the pre-deploy check, the HMAC key, retention, every container hardened


def test_check_config_strict_runs_first_as_a_plain_init_step() -> None:
    spec = pod_spec(deployment())
    first = spec["initContainers"][0]
    assert first["name"] == PREFLIGHT
    assert first["args"] == ["check-config", "--strict", "--config", f"{CONFIG_DIR}/config.toml"]
    assert "restartPolicy" not in first  # not a sidecar: the pod waits until it exits 0
    assert first["image"] == container(deployment(), GATEWAY)["image"]


def test_audit_hmac_key_secret_is_mounted_as_a_directory_where_the_config_reads_it() -> None:
    dep = deployment()
    assert containers_using_secret(dep, HMAC_SECRET) == {GATEWAY, PREFLIGHT}
    volume = volume_named(dep, lambda v: v.get("secret", {}).get("secretName") == HMAC_SECRET)
    for mount in containers_mounting(dep, volume).values():
        assert mount["mountPath"] == HMAC_MOUNT and mount["readOnly"] is True
        assert "subPath" not in mount
    assert gateway_config()["audit"]["hmac_key_file"] == f"{HMAC_MOUNT}/key"


def test_audit_rotation_and_retention_fit_the_volume() -> None:
    audit = gateway_config()["audit"]
    storage = only("PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"]
    assert storage == "1Gi"
    # The live file and keep_files rotated ones, each at most max_bytes (plus one batch).
    used = audit["max_bytes"] * (audit["keep_files"] + 1)
    assert used <= 0.75 * AUDIT_VOLUME_BYTES, f"{used} bytes leave too little headroom"


@pytest.mark.parametrize("name", [APP, PREFLIGHT, GATEWAY])
def test_every_container_is_hardened(name: str) -> None:
    sc = container(deployment(), name)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_deployment_docs_show_how_checkpoints_leave_the_pod() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "audit.checkpoint" in text and "[FILTER]" in text and "Fluent Bit" in text
    assert "kubectl create secret generic chroma-sync-gateway-audit-hmac" in text
