"""Engine manifests: real engine files verified against a runtime's capability snapshot."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gates.capability.logscan import scan_text
from gates.capability.snapshot import CapabilitySnapshot
from gates.engine_build import (
    BuiltEngine,
    manifest_entry,
    merge_entry,
    parse_shape,
    relative_engine_path,
    tensorrt_unavailable,
    write_manifest,
)
from gates.engines import (
    MANIFEST_MAX_BYTES,
    EngineManifest,
    ManifestError,
    cache_listing,
    engines_built,
    load_manifest,
    sha256_file,
    startup_build_violations,
    tensorrt_compatible,
    verify_engines,
    verify_manifest,
)
from gates.verdict import Verdict


def runtime(tensorrt: str | None = "10.3.0", ccs: tuple[str, ...] = ("9.0",)) -> CapabilitySnapshot:
    """A snapshot whose TensorRT and GPUs are what engines are checked against."""
    doc: dict[str, Any] = {
        "taken_at": datetime(2026, 12, 6, tzinfo=UTC), "hostname": "node-a",
        "deadline_s": 30.0, "duration_s": 1.0,
        "host": {
            "nvml_error": None if ccs else "NVMLError_LibraryNotFound: NVML Shared Library",
            "gpus": [{"index": i, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i}",
                      "memory_total_mib": 81559, "compute_capability": cc}
                     for i, cc in enumerate(ccs)],
        },
        "libraries": [{"name": "tensorrt", "version": tensorrt}] if tensorrt else [],
    }
    return CapabilitySnapshot.model_validate(doc)


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """Two real engine files and their manifest, written by the manifest writer."""
    manifest = tmp_path / "engines" / "manifest.json"
    (tmp_path / "engines" / "sd15").mkdir(parents=True)
    doc: EngineManifest | None = None
    for component, size in (("unet", 3 * 2**20 + 17), ("vae_decoder", 4096)):
        file = tmp_path / "engines" / "sd15" / f"{component}-512.plan"
        file.write_bytes(os.urandom(size))
        built = BuiltEngine(path=file, tensorrt="10.3.0.26", compute_capability="9.0")
        entry = manifest_entry(manifest, built, model="sd15", component=component,
                               resolution="512x512", precision="fp16")
        doc = merge_entry(doc, entry)
    assert doc is not None
    write_manifest(manifest, doc)
    return manifest


def test_all_engines_match_the_runtime(shipped: Path) -> None:
    report = verify_manifest(shipped, runtime())
    assert report.verdict is Verdict.PASS and report.violations == ()
    assert [r.ok for r in report.engines] == [True, True]
    body = report.to_json()
    assert body["verdict"] == "pass"
    assert body["engines"][0]["engine"]["computeCapability"] == "9.0"  # type: ignore[index]
    written = json.loads(shipped.read_text())
    assert written["engines"][0]["path"] == "sd15/unet-512.plan"
    assert written["engines"][0]["sha256"] == hashlib.sha256(
        (shipped.parent / "sd15/unet-512.plan").read_bytes()).hexdigest()


def test_another_tensorrt_names_both_versions_and_the_rebuild(shipped: Path) -> None:
    report = verify_manifest(shipped, runtime(tensorrt="10.4.0"))
    assert report.verdict is Verdict.FAIL
    v = report.violations
    assert {x.check for x in v} == {"engines.tensorrt"} and len(v) == 2
    assert v[0].expected == "10.3.0.26" and v[0].observed == "10.4.0"
    assert "sd15/unet@512x512 (fp16)" in v[0].message
    assert "TensorRT 10.3.0.26" in v[0].message and "TensorRT 10.4.0" in v[0].message
    assert "rebuilt at load" in v[0].message


def test_no_tensorrt_in_the_runtime(shipped: Path) -> None:
    v = verify_manifest(shipped, runtime(tensorrt=None)).violations
    assert {x.check for x in v} == {"engines.tensorrt"}
    assert v[0].observed is None and "no TensorRT" in v[0].message


def test_another_compute_capability(shipped: Path) -> None:
    v = verify_manifest(shipped, runtime(ccs=("8.9",))).violations
    assert {x.check for x in v} == {"engines.compute_capability"}
    assert v[0].expected == "9.0" and v[0].observed == ["8.9"]
    assert "compute capability 9.0" in v[0].message and "8.9" in v[0].message
    assert "rebuilt at load" in v[0].message
    mixed = verify_manifest(shipped, runtime(ccs=("9.0", "8.0"))).violations
    assert {x.check for x in mixed} == {"engines.compute_capability"}


def test_no_gpu_in_the_snapshot(shipped: Path) -> None:
    v = verify_manifest(shipped, runtime(ccs=())).violations
    assert {x.check for x in v} == {"engines.compute_capability"}
    assert "NVMLError_LibraryNotFound" in v[0].message


def test_a_changed_file(shipped: Path) -> None:
    plan = shipped.parent / "sd15" / "vae_decoder-512.plan"
    data = bytearray(plan.read_bytes())
    data[100] ^= 0xFF
    plan.write_bytes(bytes(data))
    report = verify_manifest(shipped, runtime())
    assert [r.ok for r in report.engines] == [True, False]
    (v,) = report.violations
    assert v.check == "engines.sha256" and v.observed == hashlib.sha256(data).hexdigest()
    assert "sd15/vae_decoder@512x512" in v.message


def test_a_missing_file(shipped: Path) -> None:
    (shipped.parent / "sd15" / "unet-512.plan").unlink()
    (v,) = verify_manifest(shipped, runtime()).violations
    assert v.check == "engines.missing" and v.expected == "sd15/unet-512.plan"
    assert "is missing" in v.message and "rebuilt at load" in v.message


def test_everything_wrong_at_once_is_itemized(shipped: Path) -> None:
    (shipped.parent / "sd15" / "unet-512.plan").unlink()
    report = verify_manifest(shipped, runtime(tensorrt="8.6.1", ccs=("8.0",)))
    checks = sorted(v.check for v in report.engines[0].violations)
    assert checks == ["engines.compute_capability", "engines.missing", "engines.tensorrt"]


def test_streamed_hash_equals_hashlib(tmp_path: Path) -> None:
    f = tmp_path / "big.plan"
    f.write_bytes(os.urandom(5 * 2**20 + 3))
    assert sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.parametrize(("built", "runtime_version", "ok"), [
    ("10.3.0.26", "10.3.0", True), ("10.3.0", "10.3.0.26", True), ("10.3", "10.3.0", True),
    ("10.3.0.26", "10.3.1", False), ("10.3.0", "10.4.0", False), ("8.6.1", "10.3.0", False),
    ("10", "10.3.0", False),
])
def test_tensorrt_versions(built: str, runtime_version: str, ok: bool) -> None:
    assert tensorrt_compatible(built, runtime_version) is ok


def test_yaml_manifest_and_base_directory(shipped: Path) -> None:
    doc = load_manifest(shipped)
    as_yaml = shipped.with_suffix(".yaml")
    write_manifest(as_yaml, doc)
    assert "computeCapability: '9.0'" in as_yaml.read_text()
    assert load_manifest(as_yaml) == doc
    report = verify_engines(doc, shipped.parent, runtime())
    assert report.verdict is Verdict.PASS


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"engines": []}', "engines"),
    ('{"engines": [{"model": "m"}]}', "engines.0.component"),
    ("engines: [", "not JSON or YAML"),
    ("[1, 2]", "not a valid engine manifest"),
])
def test_bad_manifests(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=r"m\.yaml") as info:
        load_manifest(path)
    assert fragment in str(info.value)


def test_bad_entries_are_refused(shipped: Path) -> None:
    good = json.loads(shipped.read_text())
    entry = good["engines"][0]
    for field, value, why in (("path", "/abs/unet.plan", "relative"),
                              ("path", "../unet.plan", "relative"),
                              ("sha256", "abc", "sha256"),
                              ("computeCapability", "sm90", "computeCapability"),
                              ("precision", "fp12", "precision"),
                              ("engineVersion", "1", "engineVersion")):
        bad = shipped.with_name("bad.json")
        bad.write_text(json.dumps({"engines": [{**entry, field: value}]}))
        with pytest.raises(ManifestError, match=why):
            load_manifest(bad)
    twice = shipped.with_name("twice.json")
    twice.write_text(json.dumps({"engines": [entry, entry]}))
    with pytest.raises(ManifestError, match="listed twice"):
        load_manifest(twice)


def test_missing_and_oversized_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="No such file"):
        load_manifest(tmp_path / "absent.json")
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (MANIFEST_MAX_BYTES + 1))
    with pytest.raises(ManifestError, match="not a manifest"):
        load_manifest(huge)


def test_merge_replaces_a_rebuild(shipped: Path) -> None:
    doc = load_manifest(shipped)
    rebuilt = doc.engines[0].model_copy(update={"tensorrt": "10.4.0"})
    merged = merge_entry(doc, rebuilt)
    assert len(merged.engines) == 2 and merged.engines[-1].tensorrt == "10.4.0"
    other = rebuilt.model_copy(update={"resolution": "768x768"})
    assert len(merge_entry(merged, other).engines) == 3


def test_engines_outside_the_manifest_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not under"):
        relative_engine_path(tmp_path / "m" / "manifest.json", tmp_path / "elsewhere.plan")
    assert relative_engine_path(tmp_path / "manifest.json", tmp_path / "a" / "b.plan") == "a/b.plan"


def test_parse_shape() -> None:
    assert parse_shape("sample=1x4x64x64:2x4x64x64:4x4x64x64") == (
        "sample", ((1, 4, 64, 64), (2, 4, 64, 64), (4, 4, 64, 64)))
    assert parse_shape("t=1") == ("t", ((1,), (1,), (1,)))
    for bad in ("sample", "=1x2", "s=1x2:1x2", "s=ax2", "s=4x4:2x4:4x4", "s=1x2:1x2x3:1x2",
                "s=0x4"):
        with pytest.raises(ValueError, match=r"expected NAME=|integers|>= 1|MIN <= OPT"):
            parse_shape(bad)


def test_building_needs_tensorrt_and_a_gpu() -> None:
    why = tensorrt_unavailable()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert why is not None and "pip install tensorrt" in why
    else:  # pragma: no cover - the GPU machine
        assert why is None or "GPU" in why


def test_an_engine_built_at_startup_is_a_violation(tmp_path: Path) -> None:
    cache = tmp_path / "trt-cache"
    assert cache_listing(cache) == {}
    cache.mkdir()
    (cache / "old.engine").write_bytes(b"old")
    before = cache_listing(cache)
    (cache / "TensorrtExecutionProvider_TRTKernel_graph_1.engine").write_bytes(b"new")
    (cache / "old.engine").write_bytes(b"rebuilt")
    built = engines_built(before, cache_listing(cache))
    assert built == ["TensorrtExecutionProvider_TRTKernel_graph_1.engine", "old.engine"]
    log = ("[W] engine plan file is not compatible with this version of TensorRT\n"
           "some unrelated line\n")
    hits = scan_text(log, source="stderr")
    out = startup_build_violations(hits, built)
    assert [v.check for v in out] == ["engines.built_at_startup"] * 2
    assert out[0].observed == "stderr:1: " + log.splitlines()[0]
    assert "gained" in out[1].message
    assert startup_build_violations(scan_text("all good\n"), []) == []
