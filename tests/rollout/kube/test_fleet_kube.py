"""A colour is a fleet on Kubernetes: the platform lists every ready pod of a slot from its
Service's EndpointSlices with the pod (``targetRef``) and its node (``nodeName``), the analyzer's
canary spreads over all of them, and a green pod that alone is slower fails the step naming
that pod and node. The prompt set comes from a ConfigMap (``canary.prompts.configMapRef``),
read when the analysis starts; a missing one is an error naming it.

kmock is the API server (real HTTP); the pods are loopback image servers, one EndpointSlice
each (a slice has one port list and every server here has its own port).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from apiserver import NS, SELECTOR, make_policy, seed
from fleet import loopback_fleet

from gates.canary.fleet import Instance
from gates.canary.loopback import LoopbackBehaviour, LoopbackServer
from gates.verdict import Verdict
from rollout.analysis import PolicyAnalyzer
from rollout.errors import BadInputError
from rollout.k8s.client import CONFIG_MAPS, ENDPOINT_SLICES, KubeClient
from rollout.machine import Plan, RolloutStatus
from rollout.platforms.kubernetes import build_kubernetes
from rollout.policy.models import CanarySpec, ConfigMapKeyRef, ConfigMapPrompts, RolloutPolicy
from rollout.report import CanaryRun, ReportData, render_report

ROOT = Path(__file__).resolve().parents[3]
FAST = LoopbackBehaviour(service_s=0.01, jitter_s=0.004)
SLOW = LoopbackBehaviour(service_s=0.02, jitter_s=0.004)
NODES = ("gpu-a", "gpu-b", "gpu-c")


def _endpoint(ip: str, pod: str, node: str, ready: bool = True) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": NS, "name": pod}}


def serve_slot(kube: KubeClient, slot: str, servers: Sequence[LoopbackServer]) -> None:
    """The slot's Service is backed by these servers, pod sd-SLOT-i on node NODES[i]: the
    seeded slice takes the first, one more slice per other server."""
    for i, s in enumerate(servers):
        body = {"ports": [{"name": "http", "port": s.port}],
                "endpoints": [_endpoint("127.0.0.1", f"sd-{slot}-{i}", NODES[i])]}
        if i == 0:
            kube.patch(ENDPOINT_SLICES, NS, f"sd-{slot}-abcde", body)
        else:
            kube.create(ENDPOINT_SLICES, NS, {"metadata": {"name": f"sd-{slot}-{i}", "labels": {
                "kubernetes.io/service-name": f"sd-{slot}"}}, "addressType": "IPv4", **body})


def fleet_policy() -> RolloutPolicy:
    policy = make_policy(SELECTOR)
    canary = CanarySpec(prompts=ConfigMapPrompts(config_map_ref=ConfigMapKeyRef(
        name="sd-prompts", key="prompts.yaml")), concurrency=4, max_requests=1500,
        warmup_requests=1, timeout_seconds=10, deadline_seconds=120)
    return policy.model_copy(update={"spec": policy.spec.model_copy(update={"canary": canary})})


def add_prompts(kube: KubeClient) -> None:
    text = (ROOT / "policies" / "prompts" / "tiny-64.yaml").read_text()
    kube.create(CONFIG_MAPS, NS, {"metadata": {"name": "sd-prompts"},
                                  "data": {"prompts.yaml": text}})


def test_instances_carry_the_pod_and_node_of_each_ready_endpoint(kube: KubeClient) -> None:
    seed(kube)
    kube.patch(ENDPOINT_SLICES, NS, "sd-green-abcde", {"endpoints": [
        _endpoint("127.0.20.1", "sd-green-x1", "gpu-a"),
        _endpoint("127.0.20.2", "sd-green-x2", "gpu-b", ready=False),
        {"addresses": ["127.0.20.3"], "conditions": {}}]})  # no targetRef, no node: the URL
    platform, _, _ = build_kubernetes(make_policy(SELECTOR), client=kube)
    assert platform.instances("green") == [
        Instance("http://127.0.20.1:8000", pod="sd-green-x1", node="gpu-a"),
        Instance("http://127.0.20.3:8000")]
    assert platform.endpoints("green") == ["http://127.0.20.1:8000", "http://127.0.20.3:8000"]


def test_a_slow_green_pod_fails_the_step_naming_pod_and_node(kube: KubeClient,
                                                             tmp_path: Path) -> None:
    seed(kube)
    add_prompts(kube)
    policy = fleet_policy()
    with loopback_fleet(FAST, FAST) as blue, loopback_fleet(FAST, FAST, SLOW) as green:
        serve_slot(kube, "blue", blue)
        serve_slot(kube, "green", green)
        platform, _, _ = build_kubernetes(policy, client=kube)
        analyzer = PolicyAnalyzer(policy, platform, records_dir=tmp_path)
        obs = analyzer.analyze(RolloutStatus(name="sd", plan=Plan(weights=(0,))), 0)
    latency = obs.gates["latency"]
    assert latency.verdict is Verdict.FAIL, latency.reason
    assert "pod sd-green-2 on node gpu-c" in latency.reason, latency.reason
    instances = obs.evidence["instances"]
    assert instances == obs.evidence["canary"]["instances"]
    green = {i["pod"]: i for i in instances if i["arm"] == "green"}
    assert set(green) == {"sd-green-0", "sd-green-1", "sd-green-2"}
    assert green["sd-green-2"]["node"] == "gpu-c" and green["sd-green-2"]["verdict"] == "fail"
    assert all(i["n"] > 0 for i in instances)
    assert {i["pod"] for i in instances if i["arm"] == "blue"} == {"sd-blue-0", "sd-blue-1"}
    # the report shows the same table: the pod and node to look at
    html = render_report(ReportData(name="sd", source="test", phase="RolledBack",
                                    reason=latency.reason, canaries=(CanaryRun(
                                        label="step-0", path=None, rows=(), gates=(),
                                        recorded=obs.evidence["canary"]),)))
    table = html[html.index("<h3>Per instance</h3>"):]
    assert "sd-green-2" in table and "gpu-c" in table


def test_a_missing_config_map_is_an_error_naming_it(kube: KubeClient, tmp_path: Path) -> None:
    seed(kube)
    policy = fleet_policy()
    platform, _, _ = build_kubernetes(policy, client=kube)
    with pytest.raises(BadInputError, match=r"ConfigMap sd/sd-prompts not found"):
        platform.config_map_text("sd-prompts", "prompts.yaml")
    obs = PolicyAnalyzer(policy, platform, records_dir=tmp_path).analyze(
        RolloutStatus(name="sd", plan=Plan(weights=(0,))), 0)
    assert obs.gates["latency"].verdict is Verdict.ERROR
    assert "ConfigMap sd/sd-prompts not found" in obs.gates["latency"].reason
    kube.create(CONFIG_MAPS, NS, {"metadata": {"name": "sd-prompts"}, "data": {"other": "x"}})
    with pytest.raises(BadInputError, match=r"has no key 'prompts.yaml' \(it has: other\)"):
        platform.config_map_text("sd-prompts", "prompts.yaml")
