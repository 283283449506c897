"""deploy/k8s renders through kustomize, validates offline at a pinned Kubernetes version, runs
the controller as the contract says, and grants each identity exactly what its code calls:
no wildcards, named objects wherever RBAC can name them, and every unnamed or "create" grant
on a list that says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_manifests import K8S, OVERLAYS, objects, one, rendered, validate

from rollout.k8s.spec import (
    COLOR_LABEL,
    GatewayApiRouterSpec,
    ServiceSelectorRouterSpec,
)
from rollout.platforms.kube_store import object_name
from rollout.policy.loader import parse_policy
from rollout.policy.models import ConfigMapPrompts, RolloutPolicy

#: Kinds kubernetes-validate has no schema for: checked here and in test_crd instead.
NO_SCHEMA = {"HTTPRoute", "RolloutPolicy"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
#: The contract's argv of the controller Deployment and of the GitOps step.
CONTROLLER_ARGS = ["controller", "--namespace", "$(POD_NAMESPACE)", "--lease-name",
                   "rollout-controller", "--lease-duration", "15", "--health-port", "8080"]
PROMOTE_ARGS = ["promote", "--platform", "kubernetes", "--policy", "/etc/rollout/policy.yaml",
                "--wait", "--timeout", "7200", "--output", "json"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_validate_strictly(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered(overlay), encoding="utf-8")
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    objs = objects(overlay)
    passed = result.stdout.count("INFO") + result.stderr.count("INFO")
    assert passed == len([o for o in objs if o["kind"] not in NO_SCHEMA])
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {k} " in line for k in NO_SCHEMA), line
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "PodDisruptionBudget",
            "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Lease", "Job",
            "RolloutPolicy"} <= {o["kind"] for o in objs}
    assert all(o["metadata"].get("namespace") == "sd" for o in objs
               if o["kind"] not in CLUSTER_SCOPED)


def test_validation_catches_a_broken_manifest(tmp_path: Path) -> None:
    """The validator is really strict here: an unknown field fails the run."""
    deployment = one(objects("service-selector"), "Deployment", "rollout-controller")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment), encoding="utf-8")
    result = validate(path)
    assert result.returncode != 0 and "imagePullPolcy" in result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_crd_and_the_policy_are_the_committed_ones(overlay: str) -> None:
    objs = objects(overlay)
    committed = yaml.safe_load((K8S / "base" / "crd.yaml").read_text("utf-8"))
    rendered_crd = one(objs, "CustomResourceDefinition", committed["metadata"]["name"])
    assert rendered_crd["spec"] == committed["spec"]  # test_crd: and it is up to date
    cr = one(objs, "RolloutPolicy", "sd")
    source = yaml.safe_load((K8S / "overlays" / overlay / "policy.yaml").read_text("utf-8"))
    assert cr["spec"] == source["spec"]
    # What the controller reads: the object less the cluster's metadata, through the loader.
    kept = {**cr, "metadata": {k: v for k, v in cr["metadata"].items()
                               if k in ("name", "namespace", "labels")}}
    kept["metadata"]["labels"] = {k: v for k, v in kept["metadata"].get("labels", {}).items()}
    assert parse_policy(yaml.safe_dump(kept), "cr.yaml").metadata.namespace == "sd"


def _container(objs: list[dict[str, Any]], kind: str, name: str) -> tuple[dict[str, Any],
                                                                          dict[str, Any]]:
    pod = one(objs, kind, name)["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod, pod["containers"][0]


def _hardened(pod: dict[str, Any], c: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["enableServiceLinks"] is False
    assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    assert "/tmp" in mounts  # a writable scratch dir on a read-only root


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_controller_is_a_two_replica_deployment_running_the_contract(overlay: str) -> None:
    objs = objects(overlay)
    assert one(objs, "Deployment", "rollout-controller")["spec"]["replicas"] == 2
    pod, c = _container(objs, "Deployment", "rollout-controller")
    assert "command" not in c and c["args"] == CONTROLLER_ARGS  # the image's ENTRYPOINT: rollout
    assert pod["serviceAccountName"] == "rollout-controller"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    port = int(c["args"][c["args"].index("--health-port") + 1])
    assert [p["containerPort"] for p in c["ports"]] == [port]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"]["path"] == path
        assert c[probe]["httpGet"]["port"] in (port, c["ports"][0]["name"])
    _hardened(pod, c)
    lease = c["args"][c["args"].index("--lease-name") + 1]
    one(objs, "Lease", lease)  # pre-created: the Role cannot "create" leases
    pdb = one(objs, "PodDisruptionBudget", "rollout-controller")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        one(objs, "Deployment", "rollout-controller")["spec"]["template"]["metadata"][
            "labels"].items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postsync_job_waits_for_the_verdict_of_this_policy(overlay: str) -> None:
    objs = objects(overlay)
    job = one(objs, "Job", "rollout-promote")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PostSync"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"] == (
        "BeforeHookCreation")
    pod, c = _container(objs, "Job", "rollout-promote")
    assert "command" not in c and c["args"] == PROMOTE_ARGS
    timeout = int(c["args"][c["args"].index("--timeout") + 1])
    assert job["spec"]["activeDeadlineSeconds"] > timeout  # the CLI answers 3 before a kill
    assert job["spec"]["backoffLimit"] == 0
    assert pod["serviceAccountName"] == "rollout-promote"
    _hardened(pod, c)
    policy_path = Path(c["args"][c["args"].index("--policy") + 1])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(policy_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = one(objs, "ConfigMap", volume["configMap"]["name"])  # kustomize's hashed name
    assert cm["data"][policy_path.name] == (K8S / "overlays" / overlay / "policy.yaml"
                                            ).read_text("utf-8")


def _rules(objs: list[dict[str, Any]], role: str | None = None) -> list[dict[str, Any]]:
    return [r for o in objs if o["kind"] in ("Role", "ClusterRole")
            and (role is None or o["metadata"]["name"] == role) for r in o["rules"]]


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(group, resource, verb, name or '*') for every grant."""
    return {(g, res, v, n) for r in rules for g in r["apiGroups"] for res in r["resources"]
            for v in r["verbs"] for n in r.get("resourceNames", ["*"])}


#: Every grant RBAC cannot limit by name, and why (rbac.yaml says the same).
UNNAMED = {
    ("rollout-gates.dev", "rolloutpolicies", "get", "*"),    # the controller serves every
    ("rollout-gates.dev", "rolloutpolicies", "list", "*"),   # policy of the namespace
    ("rollout-gates.dev", "rolloutpolicies", "watch", "*"),
    ("rollout-gates.dev", "rolloutpolicies", "patch", "*"),  # kopf's annotations, finalizer
    ("rollout-gates.dev", "rolloutpolicies/status", "patch", "*"),
    ("rollout-gates.dev", "rolloutpolicies/finalizers", "update", "*"),  # ownerReferences
    ("rollout-gates.dev", "rolloutpolicies", "create", "*"),  # promote: no name in a create
    ("", "configmaps", "create", "*"),                        # history ConfigMaps, same
    ("", "events", "create", "*"),                            # same
    ("discovery.k8s.io", "endpointslices", "get", "*"),       # generated names, read-only
    ("discovery.k8s.io", "endpointslices", "list", "*"),
    ("discovery.k8s.io", "endpointslices", "watch", "*"),
    ("", "pods", "list", "*"),
    ("", "nodes", "get", "*"),                                # cluster-scoped node labels
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_names_objects_wherever_kubernetes_allows(overlay: str) -> None:
    objs = objects(overlay)
    rules = _rules(objs)
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), (key, rule)
    grants = _grants(rules)
    assert {g for g in grants if g[3] == "*"} == UNNAMED
    verbs = {g[2] for g in grants}
    assert not verbs & {"delete", "deletecollection", "escalate", "bind", "impersonate"}
    assert {g[:2] for g in grants if g[2] == "update"} == {
        ("rollout-gates.dev", "rolloutpolicies/finalizers")}
    assert {g[:2] for g in grants if g[2] == "create"} == {
        ("rollout-gates.dev", "rolloutpolicies"), ("", "configmaps"), ("", "events")}
    assert not {g for g in grants if g[1] in ("secrets", "serviceaccounts")}
    # Cluster scope only to read node labels (the version matrix's node admission).
    assert _rules([o for o in objs if o["kind"] == "ClusterRole"]) == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    # The Job only applies and follows: it can create and patch RolloutPolicies and read the
    # decision trail for its report, nothing else.
    assert {g[:3] for g in _grants(_rules(objs, "rollout-promote"))} == {
        ("rollout-gates.dev", "rolloutpolicies", v)
        for v in ("create", "get", "list", "watch", "patch")} | {("", "configmaps", "get")}
    bindings = [o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert {s["name"] for b in bindings for s in b["subjects"]} == {"rollout-controller",
                                                                   "rollout-promote"}


def _policy(overlay: str) -> tuple[RolloutPolicy, Any]:
    """The overlay's policy (validated by the policy models) and its router block."""
    raw = yaml.safe_load((K8S / "overlays" / overlay / "policy.yaml").read_text("utf-8"))
    policy = RolloutPolicy.model_validate(raw)
    return policy, policy.spec.router


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str,
             name: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and name in r.get("resourceNames", [name]) for r in rules)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_what_the_controller_calls_for_this_policy(overlay: str) -> None:
    objs = objects(overlay)
    bound = {b["roleRef"]["name"] for b in objs if b["kind"] in ("RoleBinding",
                                                                  "ClusterRoleBinding")
             and any(s["name"] == "rollout-controller" for s in b["subjects"])}
    rules = [r for o in objs if o["kind"] in ("Role", "ClusterRole")
             and o["metadata"]["name"] in bound for r in o["rules"]]
    policy, router = _policy(overlay)
    name = policy.metadata.name
    needed = [("rollout-gates.dev", "rolloutpolicies", v, name)
              for v in ("get", "list", "watch", "patch")]
    needed += [("rollout-gates.dev", "rolloutpolicies/status", "patch", name),
               ("", "configmaps", "create", object_name(name)),
               ("", "events", "create", "any")]
    needed += [("", "configmaps", v, object_name(name)) for v in ("get", "patch")]
    needed += [("coordination.k8s.io", "leases", v, lease) for v in ("get", "patch")
               for lease in (object_name(name), "rollout-controller")]
    for slot in ("blue", "green"):
        t = getattr(policy.spec.targets, slot)
        needed += [("apps", "deployments", v, t.deployment) for v in ("get", "watch", "patch")]
        needed += [("", "services", "get", t.service),
                   ("discovery.k8s.io", "endpointslices", "list", "any"),
                   ("", "pods", "list", "any"), ("", "nodes", "get", "any")]
    if isinstance(router, ServiceSelectorRouterSpec):
        assert router.preview_service is not None
        needed += [("", "services", v, s) for v in ("get", "patch")
                   for s in (router.active_service, router.preview_service)]
    else:
        assert isinstance(router, GatewayApiRouterSpec)
        needed += [("gateway.networking.k8s.io", "httproutes", v, router.http_route)
                   for v in ("get", "patch")]
    prompts = policy.spec.canary.prompts
    if isinstance(prompts, ConfigMapPrompts):
        needed.append(("", "configmaps", "get", prompts.config_map_ref.name))
        cm = one(objs, "ConfigMap", prompts.config_map_ref.name)  # shipped, unhashed name
        assert prompts.config_map_ref.key in cm["data"]
    missing = [n for n in needed if not _allowed(rules, *n)]
    assert not missing
    for lease in (object_name(name), "rollout-controller"):
        one(objs, "Lease", lease)  # pre-created: the Role has no "create" on leases


def test_both_ways_of_shipping_prompts_in_cluster_are_used() -> None:
    kinds = {type(_policy(o)[0].spec.canary.prompts).__name__ for o in OVERLAYS}
    assert kinds == {"PromptSet", "ConfigMapPrompts"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_slots_request_gpus_probe_readyz_and_start_through_admission(overlay: str) -> None:
    objs = objects(overlay)
    for slot in ("blue", "green"):
        d = one(objs, "Deployment", f"sd-{slot}")
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


def test_gateway_route_splits_between_the_slot_services() -> None:
    """kubernetes-validate has no Gateway API schema: check what the router relies on."""
    route = one(objects("gateway-api"), "HTTPRoute", "sd")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    refs = route["spec"]["rules"][GatewayApiRouterSpec(http_route="sd").rule]["backendRefs"]
    assert {(r["name"], r["weight"]) for r in refs} == {("sd-blue", 100), ("sd-green", 0)}
    assert all(set(r) <= {"name", "port", "weight", "kind", "group", "namespace"} for r in refs)
