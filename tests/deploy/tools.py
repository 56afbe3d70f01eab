"""What the deployment tests share: the external tools, the rendered kustomizations, and
validation of Prometheus Operator objects against their CRD schemas.

kubectl (for `kubectl kustomize`) and promtool are found on PATH, then where
scripts/install-tools puts them. A missing tool skips the tests that need it, with the
reason, except in CI (CI=true), where it fails them: CI must run them.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
MONITORING = DEPLOY / "monitoring"
CRDS = Path(__file__).resolve().parent / "crds"

# Every kustomization a person applies or builds on, relative to deploy/kubernetes.
RENDERS = ("base", "shared", "overlays/sidecar", "overlays/shared")

Doc = dict[str, Any]

_FALLBACKS = {
    "kubectl": ROOT / ".venv" / "bin" / "kubectl",
    "promtool": ROOT / ".tools" / "bin" / "promtool",
}


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    fallback = _FALLBACKS[name]
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


def missing_tool(name: str) -> NoReturn:
    """Skip (or, in CI, fail) the calling test or module: `name` is not installed."""
    reason = f"{name} is not installed here: scripts/install-tools installs it"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_tool(name: str) -> str:
    return find_tool(name) or missing_tool(name)


@cache
def render(kustomization: str) -> tuple[Doc, ...]:
    """`kubectl kustomize deploy/kubernetes/<kustomization>`, as YAML documents."""
    kubectl = require_tool("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / kustomization)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {kustomization}: {done.stderr.strip()}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d is not None)


# ---------------------------------------------------------------------------------------------
# Prometheus Operator kinds


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones, as the API
    server's strict field validation does (JSON Schema would accept them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a validator for every version the shipped CRDs serve."""
    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(
                    schema)
    return validators


class CustomResourceInvalid(Exception):
    """A custom resource that its CRD's schema refuses."""


def validate_custom_resource(doc: Doc) -> None:
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    validator = crd_validators().get(key)
    if validator is None:
        raise CustomResourceInvalid(f"no CRD schema shipped for {key}")
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top)"
        raise CustomResourceInvalid(f"{key[1]} {where}: {first.message}")
    metadata = doc.get("metadata", {})
    if not metadata.get("name"):
        raise CustomResourceInvalid(f"{key[1]} without metadata.name")
