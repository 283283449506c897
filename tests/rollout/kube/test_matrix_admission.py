"""Admission on Kubernetes refuses green pods scheduled on nodes off the version matrix: the
platform lists green's pods and reads their nodes' GPU Feature Discovery labels through the
one client (kmock as the API server); ``rollout matrix nodes`` reads the cluster's nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from apiserver import NS, SELECTOR, Cluster, make_policy, seed
from typer.testing import CliRunner

from gates.capability.collect import CapabilitiesDocument
from gates.gate import combine
from gates.matrix import MATRIX_GATE, MATRIX_NODES_GATE
from gates.verdict import Verdict
from rollout.admission import InstanceRead, admission_gates, matrix_gates
from rollout.cli import app
from rollout.k8s.client import NODES, PODS, KubeClient
from rollout.k8s.spec import COLOR_LABEL
from rollout.platforms.kubernetes import KubernetesPlatform, build_kubernetes
from rollout.policy.loader import load_matrix

ROOT = Path(__file__).resolve().parents[3]
MATRIX = load_matrix(ROOT / "policies" / "matrices" / "sd15-hopper.yaml").spec
NODE_LIST = json.loads((ROOT / "tests" / "data" / "nodes-gfd.json").read_text())
SNAPSHOT = json.loads((ROOT / "bench" / "results" / "snapshot_h100.json").read_text())


@pytest.fixture
def fleet(cluster: Cluster, kube: KubeClient) -> KubernetesPlatform:
    """The seeded fleet plus the GFD-labelled nodes and pods, blue serving."""
    def register() -> None:
        for res in ("v1/pods", "v1/nodes"):
            cluster.api.resources[res] = {}
    cluster.call(register)
    seed(kube)
    for node in NODE_LIST["items"]:
        kube.create(NODES, "", node)
    platform, _, _ = build_kubernetes(make_policy(SELECTOR), client=kube)
    assert isinstance(platform, KubernetesPlatform)
    return platform


def _pod(kube: KubeClient, name: str, slot: str, node: str | None, **extra: Any) -> None:
    spec: dict[str, Any] = {"containers": [{"name": "sd", "image": "sd:1"}]}
    if node is not None:
        spec["nodeName"] = node
    kube.create(PODS, NS, {"metadata": {"name": name, "labels": {
        "app": "sd-server", COLOR_LABEL: slot}, **extra}, "spec": spec,
        "status": {"phase": "Running"}})


def _docs(*urls: str) -> dict[str, InstanceRead]:
    return {u: InstanceRead(u, 200, {"snapshot": SNAPSHOT},
                            doc=CapabilitiesDocument.parse({"snapshot": SNAPSHOT}, u))
            for u in urls}


def test_placements_read_each_green_pods_node_labels(fleet: KubernetesPlatform,
                                                     kube: KubeClient) -> None:
    _pod(kube, "sd-green-1", "green", "gpu-h100-a")
    _pod(kube, "sd-green-2", "green", "cpu-1")
    _pod(kube, "sd-blue-1", "blue", "gpu-a100")
    _pod(kube, "sd-green-old", "green", "gpu-a100", deletionTimestamp="2026-01-01T00:00:00Z",
         finalizers=["example.com/keep"])  # terminating: its node does not matter
    found = {p.pod: p for p in fleet.placements("green")}
    assert set(found) == {"sd-green-1", "sd-green-2"}
    assert found["sd-green-1"].node == "gpu-h100-a"
    assert found["sd-green-1"].labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert "nvidia.com/gpu.product" not in found["sd-green-2"].labels
    assert [p.pod for p in fleet.placements("blue")] == ["sd-blue-1"]


def test_admission_refuses_a_green_pod_on_a_non_matching_node(fleet: KubernetesPlatform,
                                                              kube: KubeClient) -> None:
    _pod(kube, "sd-green-1", "green", "gpu-h100-a")
    _pod(kube, "sd-green-2", "green", "gpu-h100-old-driver")
    docs = _docs("http://127.0.0.1:18001", "http://127.0.0.1:18002")
    evidence: dict[str, Any] = {}
    gates = admission_gates(docs, docs, None, (), same_path_as_blue=False, evidence=evidence,
                            matrix=MATRIX, platform=fleet)
    assert gates[MATRIX_GATE].verdict is Verdict.PASS  # the images are on the matrix
    nodes = gates[MATRIX_NODES_GATE]
    assert nodes.verdict is Verdict.FAIL
    assert "pod sd-green-2 on node gpu-h100-old-driver" in nodes.reason
    assert "nvidia.com/cuda.driver.major=570 (expected 580)" in nodes.reason
    assert "sd-green-1" not in nodes.reason
    assert combine(gates)[0] is Verdict.FAIL  # not admitted
    assert evidence["version_matrix_nodes"]["pods"] == [
        {"pod": "sd-green-1", "node": "gpu-h100-a"},
        {"pod": "sd-green-2", "node": "gpu-h100-old-driver"}]


def test_green_on_matching_nodes_is_admitted(fleet: KubernetesPlatform, kube: KubeClient) -> None:
    _pod(kube, "sd-green-1", "green", "gpu-h100-a")
    gates = matrix_gates(MATRIX, _docs("http://127.0.0.1:18001"), fleet, {})
    assert {k: g.verdict for k, g in gates.items()} == {MATRIX_GATE: Verdict.PASS,
                                                        MATRIX_NODES_GATE: Verdict.PASS}


def test_a_node_read_that_is_denied_is_an_error_not_a_pass(
        fleet: KubernetesPlatform, kube: KubeClient, cluster: Cluster) -> None:
    _pod(kube, "sd-green-1", "green", "gpu-h100-a")
    cluster.fault("GET", r"^/api/v1/nodes/", status=403, times=10)
    gates = matrix_gates(MATRIX, _docs("http://127.0.0.1:18001"), fleet, {})
    result = gates[MATRIX_NODES_GATE]
    assert result.verdict is Verdict.ERROR and "get on nodes" in result.reason


def test_without_a_platform_that_knows_nodes_only_snapshots_are_checked() -> None:
    gates = matrix_gates(MATRIX, _docs("http://127.0.0.1:18001"), object(), {})
    assert list(gates) == [MATRIX_GATE]


def test_matrix_nodes_reads_the_cluster(fleet: KubernetesPlatform, tmp_path: Path) -> None:
    kubeconfig = sorted(tmp_path.glob("kubeconfig-*"))[0]
    r = CliRunner().invoke(app, ["matrix", "nodes", "-m", str(ROOT / "policies" / "matrices" /
                                                                  "sd15-hopper.yaml"),
                                 "--kubeconfig", str(kubeconfig), "-o", "json"])
    assert r.exit_code == 0, r.output
    found = {n["name"]: n["matches"] for n in json.loads(r.stdout)["nodes"]}
    assert found == {"gpu-h100-a": True, "gpu-h100-old-driver": False, "gpu-a100": False,
                     "gpu-h100-mig": False, "cpu-1": False}
