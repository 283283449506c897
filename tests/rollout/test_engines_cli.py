"""``rollout engines verify`` and ``build`` on real files, registered on a local typer app."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gates.capability.collect import capabilities_document
from gates.capability.snapshot import CapabilitySnapshot
from gates.engine_build import BuiltEngine, manifest_entry, merge_entry, write_manifest
from gates.engines import EngineManifest
from rollout.cli.engines import register

app = typer.Typer(callback=lambda: None)  # a command group, like rollout.cli.app
register(app)
runner = CliRunner()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def snapshot(tensorrt: str, cc: str) -> CapabilitySnapshot:
    return CapabilitySnapshot.model_validate({
        "taken_at": datetime(2026, 12, 6, tzinfo=UTC), "hostname": "node-a",
        "deadline_s": 30.0, "duration_s": 1.0,
        "host": {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-0",
                           "memory_total_mib": 81559, "compute_capability": cc}]},
        "libraries": [{"name": "tensorrt", "version": tensorrt}],
    })


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    manifest = tmp_path / "image" / "engines.yaml"
    doc: EngineManifest | None = None
    for component in ("unet", "vae_decoder"):
        plan = tmp_path / "image" / f"{component}.plan"
        plan.parent.mkdir(exist_ok=True)
        plan.write_bytes(os.urandom(70_000))
        built = BuiltEngine(path=plan, tensorrt="10.3.0.26", compute_capability="9.0")
        doc = merge_entry(doc, manifest_entry(manifest, built, model="sd15", component=component,
                                              resolution="512x512", precision="fp16"))
    assert doc is not None
    write_manifest(manifest, doc)
    return manifest


def snap_file(tmp_path: Path, tensorrt: str = "10.3.0", cc: str = "9.0", *,
              capabilities: bool = False) -> str:
    snap = snapshot(tensorrt, cc)
    path = tmp_path / ("capabilities.json" if capabilities else "snapshot.json")
    body = capabilities_document(snap) if capabilities else snap.model_dump(mode="json")
    path.write_text(json.dumps(body))
    return str(path)


def test_verify_passes_when_everything_matches(shipped: Path, tmp_path: Path) -> None:
    r = run("engines", "verify", str(shipped), "--snapshot", snap_file(tmp_path))
    assert r.exit_code == 0, r.output
    assert "pass: 0 of 2" in r.stdout and "sd15/unet@512x512 (fp16)" in r.stdout
    r = run("engines", "verify", str(shipped), "--snapshot",
            snap_file(tmp_path, capabilities=True), "--output", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "pass" and doc["violations"] == []
    assert doc["runtime"] == {"tensorrt": "10.3.0", "compute_capabilities": ["9.0"], "note": None}


def test_verify_fails_naming_engine_versions_and_rebuild(shipped: Path, tmp_path: Path) -> None:
    r = run("engines", "verify", str(shipped), "--snapshot", snap_file(tmp_path, "10.4.1", "8.9"))
    assert r.exit_code == 1, r.output
    assert "sd15/unet@512x512" in r.stdout and "10.3.0.26" in r.stdout and "10.4.1" in r.stdout
    assert "rebuilt at load" in r.stdout and "fail: 2 of 2" in r.stdout
    r = run("engines", "verify", str(shipped), "--snapshot", snap_file(tmp_path, "10.4.1", "8.9"),
            "-o", "json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["verdict"] == "fail"
    assert {v["check"] for v in doc["violations"]} == {"engines.tensorrt",
                                                      "engines.compute_capability"}


def test_verify_changed_and_missing_files(shipped: Path, tmp_path: Path) -> None:
    (shipped.parent / "unet.plan").unlink()
    (shipped.parent / "vae_decoder.plan").write_bytes(b"tampered")
    r = run("engines", "verify", str(shipped), "--snapshot", snap_file(tmp_path), "-o", "json")
    assert r.exit_code == 1, r.output
    checks = [v["check"] for v in json.loads(r.stdout)["violations"]]
    assert checks == ["engines.missing", "engines.sha256"]


def test_verify_bad_input_exits_2(shipped: Path, tmp_path: Path) -> None:
    good = snap_file(tmp_path)
    r = run("engines", "verify", str(tmp_path / "absent.json"), "--snapshot", good)
    assert r.exit_code == 2 and "absent.json" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"engines": [{"model": "x"}]}')
    r = run("engines", "verify", str(bad), "--snapshot", good, "-o", "json")
    assert r.exit_code == 2 and json.loads(r.stdout)["verdict"] == "error"
    not_snap = tmp_path / "not-a-snapshot.json"
    not_snap.write_text('{"hello": 1}')
    r = run("engines", "verify", str(shipped), "--snapshot", str(not_snap))
    assert r.exit_code == 2 and "not a valid capability snapshot" in r.stderr
    r = run("engines", "verify", str(shipped))
    assert r.exit_code == 2  # --snapshot is required (click's usage error)


def build_args(tmp_path: Path, *extra: str) -> list[str]:
    onnx = tmp_path / "unet.onnx"
    onnx.write_bytes(b"not really onnx")
    return ["engines", "build", str(onnx), "--output-engine", str(tmp_path / "out" / "unet.plan"),
            "--manifest", str(tmp_path / "engines.json"), "--model", "sd15",
            "--component", "unet", "--resolution", "512x512", *extra]


def test_build_checks_its_arguments_before_tensorrt(tmp_path: Path) -> None:
    cases = [
        (["--precision", "fp12"], "--precision 'fp12'"),
        (["--shape", "sample=ax4"], "dimensions must be integers"),
        (["--resolution", "512"], "--resolution"),
        (["--output-engine", str(tmp_path.parent / "elsewhere.plan")], "not under"),
    ]
    for extra, message in cases:
        r = run(*build_args(tmp_path, *extra))
        assert r.exit_code == 2, (extra, r.output)
        assert message in r.stderr, (extra, r.stderr)
    r = run("engines", "build", str(tmp_path / "absent.onnx"), *build_args(tmp_path)[3:])
    assert r.exit_code == 2 and "no such ONNX file" in r.stderr
    (tmp_path / "engines.json").write_text("{broken")
    r = run(*build_args(tmp_path))
    assert r.exit_code == 2 and "engines.json" in r.stderr


def test_build_without_tensorrt_or_gpu_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - the GPU machine builds for real (GPU issue)
        pytest.skip("TensorRT is installed: building is exercised on the GPU")
    r = run(*build_args(tmp_path, "--shape", "sample=1x4x64x64:2x4x64x64:2x4x64x64", "-o", "json"))
    assert r.exit_code == 2, r.output
    assert "cannot build engines here" in r.stderr and "pip install tensorrt" in r.stderr
    assert json.loads(r.stdout)["verdict"] == "error"
    assert not (tmp_path / "engines.json").exists()
