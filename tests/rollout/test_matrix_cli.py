"""The VersionMatrix document through the policy loader (line-numbered errors, file references
resolved relative to the policy), and ``rollout matrix nodes|render|check``, including the
rendered nodeAffinity applied to the shipped green Deployment and validated strictly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tools import kustomize
from typer.testing import CliRunner

from rollout.cli import app
from rollout.policy.loader import PolicyError, load_matrix, load_policy, parse_matrix

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "policies" / "matrices" / "sd15-hopper.yaml"
NODES = ROOT / "tests" / "data" / "nodes-gfd.json"
SNAPSHOT = ROOT / "bench" / "results" / "snapshot_h100.json"
SD15 = ROOT / "policies" / "examples" / "sd15-512.yaml"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"
runner = CliRunner()

HEAD = "apiVersion: rollout-gates.dev/v1alpha1\nkind: VersionMatrix\nmetadata: {name: m}\n"


def _issues(text: str) -> list[tuple[str, int, str]]:
    with pytest.raises(PolicyError) as e:
        parse_matrix(text, "m.yaml")
    return [(i.path, i.line, i.message) for i in e.value.issues]


def _policy(tmp_path: Path, matrix_block: str) -> Path:
    lines = SD15.read_text("utf-8").splitlines()
    at = lines.index("  matrix:")
    assert lines[at + 1].startswith("    file: ../matrices/sd15-hopper.yaml")
    text = "\n".join([*lines[:at], matrix_block, *lines[at + 2:]]) + "\n"
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- loading ---------------------------------------------------------------------------------

def test_the_shipped_matrix_loads() -> None:
    doc = load_matrix(MATRIX)
    assert doc.metadata.name == "sd15-hopper"
    assert doc.spec.cudnn == "9.19" and doc.spec.driver is not None
    assert doc.spec.driver.branch == "580"


def test_matrix_errors_carry_path_and_line() -> None:
    text = HEAD + "spec:\n  cuda: \"13.0\"\n  cudnn: 9.19\n  gpu:\n    computeCapability: 9.0\n"
    found = {p: (line, message) for p, line, message in _issues(text)}
    assert found["spec.cudnn"][0] == 6 and "quoted" in found["spec.cudnn"][1]
    assert found["spec.gpu.computeCapability"][0] == 8


def test_the_bounded_yaml_rules_apply_to_matrices_too() -> None:
    dup = _issues(HEAD + "spec:\n  cuda: \"13.0\"\n  cuda: \"12.8\"\n")
    assert dup[0][1] == 6 and "duplicate key 'cuda'" in dup[0][2]
    assert "must be a YAML mapping" in _issues("- a\n")[0][2]
    kind = _issues(HEAD.replace("VersionMatrix", "RolloutPolicy") + "spec: {}\n")
    assert any(p == "kind" and line == 2 for p, line, _ in kind)


def test_a_policy_references_a_matrix_file_relative_to_itself() -> None:
    pol = load_policy(SD15)
    assert pol.spec.matrix is not None
    assert pol.spec.matrix.file == str(MATRIX.resolve())
    assert pol.spec.matrix.cudnn == "9.19"  # the pins are inline in the saved copy
    again = type(pol).model_validate_json(pol.model_dump_json(by_alias=True))
    assert again == pol


def test_errors_in_the_referenced_matrix_name_that_file_and_its_line(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(HEAD + "spec:\n  torch: 2.11\n", encoding="utf-8")
    with pytest.raises(PolicyError) as e:
        load_policy(_policy(tmp_path, "  matrix: {file: m.yaml}"))
    (issue,) = e.value.issues
    assert issue.file == str((tmp_path / "m.yaml").resolve())
    assert (issue.path, issue.line) == ("spec.torch", 5)


def test_a_missing_matrix_file_is_an_error_at_the_reference(tmp_path: Path) -> None:
    path = _policy(tmp_path, "  matrix:\n    file: nowhere.yaml")
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    (issue,) = e.value.issues
    assert issue.file == str(path) and issue.path == "spec.matrix.file"
    assert issue.line == path.read_text().splitlines().index("    file: nowhere.yaml") + 1
    assert "not found" in issue.message and str(tmp_path / "nowhere.yaml") in issue.message


def test_file_and_inline_pins_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="either file"):
        load_policy(_policy(tmp_path, "  matrix: {file: m.yaml, cuda: \"13.0\"}"))


def test_an_inline_matrix_is_validated_with_the_policy_lines(tmp_path: Path) -> None:
    path = _policy(tmp_path, "  matrix:\n    cuda: \"13.0\"\n    tensorrt: 10.3")
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    (issue,) = e.value.issues
    assert issue.path == "spec.matrix.tensorrt"
    assert issue.line == path.read_text().splitlines().index("    tensorrt: 10.3") + 1
    ok = load_policy(_policy(tmp_path, "  matrix:\n    cuda: \"13.0\""))
    assert ok.spec.matrix is not None and ok.spec.matrix.cuda == "13.0"


def test_load_matrix_reads_a_policys_matrix() -> None:
    doc = load_matrix(SD15)
    assert doc.metadata.name == "sd15-512" and doc.spec.cuda == "13.0"


# -- rollout matrix nodes ----------------------------------------------------------------------

def _run(*args: str, stdin: str | None = None) -> tuple[int, Any, str]:
    r = runner.invoke(app, ["matrix", *args], input=stdin)
    out = json.loads(r.stdout) if r.stdout.startswith("{") else r.stdout
    return r.exit_code, out, r.stderr


def test_nodes_reports_each_node_with_its_mismatches() -> None:
    code, out, _ = _run("nodes", "--matrix", str(MATRIX), "--nodes", str(NODES), "-o", "json")
    assert code == 0  # at least one node can run green
    by_name = {n["name"]: n for n in out["nodes"]}
    assert list(by_name) == ["gpu-h100-a", "gpu-h100-old-driver", "gpu-a100", "gpu-h100-mig",
                             "cpu-1"]
    assert by_name["gpu-h100-a"] == {"name": "gpu-h100-a", "matches": True, "mismatches": []}
    assert {"label": "nvidia.com/cuda.driver.major", "expected": "580", "observed": "570"} in \
        by_name["gpu-h100-old-driver"]["mismatches"]
    assert not by_name["cpu-1"]["matches"]
    assert [n["matches"] for n in out["nodes"]] == [True, False, False, False, False]


def test_nodes_exit_codes() -> None:
    every = _run("nodes", "-m", str(MATRIX), "--nodes", str(NODES), "--all")
    assert every[0] == 1
    cpu = {"kind": "List", "items": [json.loads(NODES.read_text())["items"][-1]]}
    assert _run("nodes", "-m", str(MATRIX), "--nodes", "-", stdin=json.dumps(cpu))[0] == 1
    assert _run("nodes", "-m", str(MATRIX), "--nodes", "-",
                stdin='{"kind": "List", "items": []}')[0] == 4
    code, _, err = _run("nodes", "-m", str(MATRIX), "--nodes", "-", stdin="[1, 2]")
    assert code == 2 and "items" in err
    code, _, err = _run("nodes", "-m", str(NODES), "--nodes", str(NODES))
    assert code == 2 and f"{NODES}:" in err and "kind" in err


def test_nodes_text_table() -> None:
    code, out, _ = _run("nodes", "-m", str(MATRIX), "--nodes", str(NODES))
    assert code == 0
    assert "1 of 5 node(s) can run green" in out
    line = next(x for x in out.splitlines() if x.startswith("gpu-a100"))
    assert "nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB (expected NVIDIA-H100-80GB-HBM3)" in line


def test_a_bad_matrix_is_exit_2_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text(HEAD + "spec:\n  cudnn: 9.19\n", encoding="utf-8")
    code, _, err = _run("nodes", "-m", str(bad), "--nodes", str(NODES))
    assert code == 2 and f"{bad}:5: spec.cudnn:" in err
    code, out, _ = _run("check", "-m", str(bad), "--snapshot", str(SNAPSHOT), "-o", "json")
    assert code == 2 and out["errors"][0]["line"] == 5


# -- rollout matrix check ----------------------------------------------------------------------

def test_check_a_snapshot_against_the_matrix(tmp_path: Path) -> None:
    assert _run("check", "-m", str(MATRIX), "--snapshot", str(SNAPSHOT))[0] == 0
    off = tmp_path / "m.yaml"
    off.write_text(HEAD + "spec:\n  cudnn: \"9.20\"\n  driver: {branch: \"570\"}\n", "utf-8")
    code, out, _ = _run("check", "-m", str(off), "--snapshot", str(SNAPSHOT), "-o", "json")
    assert code == 1 and not out["matches"]
    assert {"field": "cudnn", "pinned": "9.20", "observed": "9.19.0"} in out["violations"]
    body = tmp_path / "capabilities.json"  # a saved /capabilities body works too
    body.write_text(json.dumps({"snapshot": json.loads(SNAPSHOT.read_text())}), "utf-8")
    assert _run("check", "-m", str(MATRIX), "--snapshot", str(body))[0] == 0
    code, _, err = _run("check", "-m", str(MATRIX), "--snapshot", str(NODES))
    assert code == 2 and "--snapshot" in err


# -- rollout matrix render, applied to the shipped green Deployment ----------------------------

def test_rendered_affinity_patches_the_green_deployment_and_validates(tmp_path: Path) -> None:
    code, out, _ = _run("render", "-m", str(MATRIX))
    assert code == 0 and out.startswith("# nodeAffinity")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "affinity.yaml").write_text(out, encoding="utf-8")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S_BASE, overlay)],
        "patches": [{"path": "affinity.yaml"}]}), encoding="utf-8")
    rendered = subprocess.run([*kustomize(), str(overlay)], check=True, capture_output=True,
                              text=True, timeout=60).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    green = docs["Deployment", "sd-green"]["spec"]["template"]["spec"]
    terms = green["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for e in terms["nodeSelectorTerms"][0]["matchExpressions"]}
    assert {"nvidia.com/cuda.driver.major", "nvidia.com/gpu.product"} <= keys
    assert green["containers"][0]["name"] == "sd-server"  # merged, not replaced
    assert "affinity" not in docs["Deployment", "sd-blue"]["spec"]["template"]["spec"]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump(docs["Deployment", "sd-green"]), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k",
                             "1.31.0", str(path)], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_json_and_deployment_option() -> None:
    code, out, _ = _run("render", "-m", str(MATRIX), "--deployment", "sd-blue",
                        "--namespace", "sd", "-o", "json")
    assert code == 0 and out["metadata"] == {"name": "sd-blue", "namespace": "sd"}
