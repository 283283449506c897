"""The deploy/k8s overlays as kustomize renders them, shared by the manifest tests.

A module with a unique name (not ``conftest``): tests in this directory import it directly.
"""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from tools import kustomize

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
GITOPS = ROOT / "deploy" / "gitops"
OVERLAYS = ("service-selector", "gateway-api")
#: Oldest Kubernetes we support (kubernetes-validate ships its OpenAPI schemas offline).
KUBERNETES_VERSION = "1.31.0"


@cache
def rendered(overlay: str) -> str:
    return subprocess.run([*kustomize(), str(K8S / "overlays" / overlay)], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def objects(overlay: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered(overlay)) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate, strict (unknown fields fail), at the oldest supported version."""
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION,
         str(path)], check=False, capture_output=True, text=True, timeout=120)
