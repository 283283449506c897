"""The version matrix, pure: prefix pins, snapshot comparison, GFD node labels, nodeAffinity,
and the two admission judges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gates.capability.snapshot import CapabilitySnapshot
from gates.matrix import (
    MatrixInputError,
    MatrixSpec,
    NodePlacement,
    compare_snapshot,
    judge_placements,
    judge_snapshots,
    label_requirements,
    match_node,
    nodes_from_json,
    render_affinity_patch,
    version_matches,
)
from gates.verdict import Verdict

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((ROOT / "bench/results/snapshot_h100.json").read_text())
NODES = json.loads((ROOT / "tests/data/nodes-gfd.json").read_text())
HOPPER = MatrixSpec.model_validate({
    "driver": {"branch": "580"}, "cuda": "13.0",
    "gpu": {"products": ["NVIDIA-H100-80GB-HBM3"], "computeCapability": "9.0"},
    "cudnn": "9.19", "onnxruntime": "1.30", "torch": "2.11"})


def _snapshot(**host: Any) -> CapabilitySnapshot:
    doc = {k: v for k, v in SNAPSHOT.items() if k not in ("versions", "fingerprint")}
    if host:
        doc["host"] = {**doc["host"], **host}
    return CapabilitySnapshot.model_validate(doc)


def _matrix(**changes: Any) -> MatrixSpec:
    return MatrixSpec.model_validate({**HOPPER.model_dump(by_alias=True, exclude_none=True),
                                      **changes})


@pytest.mark.parametrize(("pin", "observed", "ok"), [
    ("9.19", "9.19", True), ("9.19", "9.19.0", True), ("9.19", "9.19.1", True),
    ("9.19", "9.190", False), ("9.19", "9.1", False), ("9.19", "9", False),
    ("2.11", "2.11.0+cu130", True), ("2.11.0", "2.11.0+cu130", True),
    ("580.159.4", "580.159.04", True), ("580", "580.159.04", True), ("580", "5800.1", False),
    ("13.0", "13", False), ("9.19", None, False), ("9.19", "", False),
])
def test_a_version_pin_is_a_prefix_of_whole_parts(pin: str, observed: str | None,
                                                  ok: bool) -> None:
    assert version_matches(pin, observed) is ok


def test_the_recorded_h100_snapshot_is_on_the_hopper_matrix() -> None:
    assert compare_snapshot(HOPPER, _snapshot()) == []
    result = judge_snapshots(HOPPER, {"http://g1:8000": _snapshot()})
    assert result.verdict is Verdict.PASS


def test_each_tooth_out_of_place_is_named_with_pinned_and_observed() -> None:
    matrix = _matrix(driver={"branch": "570"}, cudnn="9.20", tensorrt="10.3",
                     onnxruntime={"version": "1.30", "build": "deadbee"},
                     gpu={"products": ["NVIDIA-A100-SXM4-80GB"], "computeCapability": "8.0"})
    found = {v.field: (v.pinned, v.observed) for v in compare_snapshot(matrix, _snapshot())}
    assert found == {
        "driver.branch": ("570", "580"),
        "cudnn": ("9.20", "9.19.0"),
        "tensorrt": ("10.3", None),  # not in the image: a pin nobody can prove is a violation
        "onnxruntime.build": ("deadbee", SNAPSHOT["provider_probe"]["build_info"]),
        "gpu.products": ("NVIDIA-A100-SXM4-80GB", "GPU 0: NVIDIA-H100-80GB-HBM3"),
        "gpu.computeCapability": ("8.0", "GPU 0: 9.0"),
    }
    result = judge_snapshots(matrix, {"http://g1:8000": _snapshot()})
    assert result.verdict is Verdict.FAIL
    assert "http://g1:8000: cudnn: pinned 9.20, observed 9.19.0" in result.reason
    assert {"field": "tensorrt", "pinned": "10.3", "observed": None} in \
        result.evidence["violations"]["http://g1:8000"]


def test_driver_version_and_cuda_prefixes_read_the_host_facts() -> None:
    assert compare_snapshot(_matrix(driver={"version": "580.159"}, cuda="13"), _snapshot()) == []
    found = compare_snapshot(_matrix(driver={"version": "580.95"}, cuda="12.8"), _snapshot())
    assert [(v.field, v.observed) for v in found] == [("driver.version", "580.159.04"),
                                                      ("cuda", "13.0")]


def test_mig_mode_and_missing_gpus_are_violations() -> None:
    gpu = {**SNAPSHOT["host"]["gpus"][0], "mig_mode": True}
    assert [v.field for v in compare_snapshot(HOPPER, _snapshot(gpus=[gpu]))] == ["gpu.mig"]
    allow = _matrix(gpu={"products": ["NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"], "mig": "allow"})
    assert compare_snapshot(allow, _snapshot(gpus=[gpu])) == []
    assert [(v.field, v.observed) for v in compare_snapshot(HOPPER, _snapshot(gpus=[]))] == [
        ("gpu", "no GPU")]


def test_an_unreadable_snapshot_is_an_error_and_none_is_nodata() -> None:
    assert judge_snapshots(HOPPER, {"http://g1:8000": "HTTP 500"}).verdict is Verdict.ERROR
    assert judge_snapshots(HOPPER, {}).verdict is Verdict.NODATA


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("cudnn", 9.19, "quoted"), ("cuda", "13.x", "pattern"), ("torch", "", "pattern"),
    ("driver", {}, "branch"), ("driver", {"branch": "580", "version": "570.1"}, "not on branch"),
    ("gpu", {"mig": "maybe"}, "forbid"), ("cuddn", "9.19", "Extra inputs"),
])
def test_bad_pins_are_refused(field: str, value: Any, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        MatrixSpec.model_validate({field: value})


def test_onnxruntime_shorthand_is_a_version() -> None:
    assert MatrixSpec.model_validate({"onnxruntime": "1.22"}).onnxruntime is not None
    spec = MatrixSpec.model_validate({"onnxruntime": "1.22"})
    assert spec.onnxruntime is not None and spec.onnxruntime.version == "1.22"


def _nodes() -> dict[str, dict[str, str]]:
    return dict(nodes_from_json(NODES))


def test_node_matching_on_gfd_labels() -> None:
    nodes = _nodes()
    found = {name: match_node(HOPPER, name, labels) for name, labels in nodes.items()}
    assert found["gpu-h100-a"].matches and found["gpu-h100-a"].to_dict()["mismatches"] == []
    old = {m.label: (m.expected, m.observed) for m in found["gpu-h100-old-driver"].mismatches}
    assert old == {"nvidia.com/cuda.driver.major": ("580", "570"),
                   "nvidia.com/cuda.runtime.major": ("13", "12"),
                   "nvidia.com/cuda.runtime.minor": ("0", "8")}
    a100 = {m.label: m.observed for m in found["gpu-a100"].mismatches}
    assert a100 == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                    "nvidia.com/gpu.compute.major": "8"}
    mig = {m.label: m.observed for m in found["gpu-h100-mig"].mismatches}
    assert mig == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
                   "nvidia.com/mig.strategy": "single"}
    cpu = found["cpu-1"]
    assert not cpu.matches
    assert {m.label for m in cpu.mismatches} >= {"nvidia.com/gpu.count",
                                                 "nvidia.com/gpu.product"}
    assert all(m.observed is None for m in cpu.mismatches)


def test_a_node_without_gpu_labels_never_matches_even_an_empty_matrix() -> None:
    empty = MatrixSpec()
    assert not match_node(empty, "cpu-1", _nodes()["cpu-1"]).matches
    assert match_node(empty, "gpu-h100-a", _nodes()["gpu-h100-a"]).matches
    zero = {**_nodes()["gpu-h100-a"], "nvidia.com/gpu.count": "0"}
    assert [m.label for m in match_node(empty, "n", zero).mismatches] == [
        "nvidia.com/gpu.count"]


def test_an_exact_driver_version_pins_major_minor_and_rev() -> None:
    reqs = {r.label: r.values for r in label_requirements(
        _matrix(driver={"version": "580.159.04"}))}
    assert reqs["nvidia.com/cuda.driver.major"] == ("580",)
    assert reqs["nvidia.com/cuda.driver.minor"] == ("159",)
    assert reqs["nvidia.com/cuda.driver.rev"] == ("04",)
    labels = _nodes()["gpu-h100-a"]
    assert match_node(_matrix(driver={"version": "580.159.04"}), "n", labels).matches
    assert not match_node(_matrix(driver={"version": "580.105"}), "n", labels).matches


def test_mig_allowed_lists_the_mig_products() -> None:
    allow = _matrix(gpu={"products": ["NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"], "mig": "allow"})
    assert match_node(allow, "m", _nodes()["gpu-h100-mig"]).matches


@pytest.mark.parametrize("doc", [[], {"kind": "List"}, {"items": [{"metadata": {}}]},
                                 {"items": [{"kind": "Pod", "metadata": {"name": "p"}}]},
                                 {"items": [{"metadata": {"name": "n", "labels": ["x"]}}]}])
def test_what_is_not_a_node_list_is_refused(doc: Any) -> None:
    with pytest.raises(MatrixInputError):
        nodes_from_json(doc)


def test_one_node_object_is_read_too() -> None:
    assert [n for n, _ in nodes_from_json(NODES["items"][0])] == ["gpu-h100-a"]


def test_the_affinity_patch_requires_every_node_label_the_matrix_pins() -> None:
    patch = render_affinity_patch(HOPPER, namespace="sd")
    assert patch["metadata"] == {"name": "sd-green", "namespace": "sd"}
    terms = patch["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    expressions = {e["key"]: (e["operator"], e.get("values")) for e in
                   terms[0]["matchExpressions"]}
    assert expressions == {
        "nvidia.com/gpu.count": ("Exists", None),
        "nvidia.com/cuda.driver.major": ("In", ["580"]),
        "nvidia.com/cuda.runtime.major": ("In", ["13"]),
        "nvidia.com/cuda.runtime.minor": ("In", ["0"]),
        "nvidia.com/gpu.product": ("In", ["NVIDIA-H100-80GB-HBM3"]),
        "nvidia.com/gpu.compute.major": ("In", ["9"]),
        "nvidia.com/gpu.compute.minor": ("In", ["0"]),
        "nvidia.com/mig.strategy": ("NotIn", ["single", "mixed"]),
    }


def test_green_pods_on_non_matching_nodes_fail_naming_pod_node_and_labels() -> None:
    nodes = _nodes()
    ok = NodePlacement("sd-green-1", "gpu-h100-a", nodes["gpu-h100-a"])
    bad = NodePlacement("sd-green-2", "gpu-h100-old-driver", nodes["gpu-h100-old-driver"])
    assert judge_placements(HOPPER, [ok]).verdict is Verdict.PASS
    result = judge_placements(HOPPER, [ok, bad])
    assert result.verdict is Verdict.FAIL
    assert "pod sd-green-2 on node gpu-h100-old-driver: nvidia.com/cuda.driver.major=570 " \
           "(expected 580)" in result.reason
    assert "sd-green-1" not in result.reason
    pending = judge_placements(HOPPER, [NodePlacement("sd-green-3", None, {})])
    assert pending.verdict is Verdict.FAIL and "not scheduled" in pending.reason
    assert judge_placements(HOPPER, []).verdict is Verdict.ERROR
