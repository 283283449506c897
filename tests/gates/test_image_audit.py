"""``gates.image.audit`` on images synthesized layer by layer with known contents.

The bloated image carries every finding the issue names (compilers, headers, pip/apt caches, a
notebook, ``.git``, private keys, a setuid file, weights, tests, no USER); the clean one is a
slim non-root GPU image. Each finding is asserted by check name and path; the three forms of one
image audit identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from images import PEM_KEY, bloated_image, clean_image, write_forms

from gates.image.audit import AuditReport, audit
from gates.image.policy import AuditPolicy, glob_match

GPU_POLICY = AuditPolicy.model_validate({
    "gpu": True, "pins": {"cuda": "12.4", "onnxruntime": "1.18"},
    "allowWeights": ["opt/models"]})


@pytest.fixture(scope="module")
def bloated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_forms(bloated_image(), tmp_path_factory.mktemp("bloated"), "bloated")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_forms(clean_image(), tmp_path_factory.mktemp("clean"), "clean")


def by_check(report: AuditReport) -> dict[str, Any]:
    return {v.check: v for v in report.violations}


def test_bloated_image_every_finding_by_name(bloated: dict[str, str]) -> None:
    policy = AuditPolicy.model_validate({"maxPullSize": "10kB", "gpu": True,
                                         "pins": {"cuda": "12.4"}})
    report = audit(bloated["oci-archive"], policy)
    found = by_check(report)
    assert report.verdict == "fail"
    assert set(found) == {"pull-size", "compilers", "headers", "package-caches", "vcs",
                          "notebooks", "tests", "weights", "private-keys", "setuid",
                          "root-user", "gpu-env", "pins"}
    assert set(found["compilers"].paths) == {
        "usr/bin/gcc", "usr/bin/gcc-12", "usr/lib/gcc/x86_64-linux-gnu/12/cc1"}
    assert found["headers"].paths == ["usr/include"]
    assert set(found["package-caches"].paths) == {
        "var/lib/apt/lists", "var/cache/apt", "root/.cache/pip"}
    assert found["vcs"].paths == ["app/.git"]
    assert found["vcs"].count == 2
    assert found["notebooks"].paths == ["app/notebooks/explore.ipynb"]
    assert found["tests"].paths == ["app/tests"]  # numpy/tests under site-packages is allowed
    assert found["weights"].paths == ["app/model/unet.safetensors"]
    assert found["private-keys"].paths == ["app/deploy_key", "root/.ssh/id_rsa"]
    assert "deleted by a later layer" in found["private-keys"].message
    assert found["setuid"].paths == ["usr/bin/su"]
    assert "no USER" in found["root-user"].message
    assert "NVIDIA_VISIBLE_DEVICES" in found["gpu-env"].message
    assert "NVIDIA_DRIVER_CAPABILITIES" in found["gpu-env"].message
    assert found["pins"].paths == ["python:nvidia-cuda-runtime-cu12"]
    assert "12.1.105" in found["pins"].message
    assert found["pull-size"].bytes == report.pull_size


def test_bloated_sizes_waste_and_history(bloated: dict[str, str]) -> None:
    report = audit(bloated["oci"])
    overwritten = len(b"print('v1')\n" * 10)
    deleted = 300_000 + len(PEM_KEY) + 7000
    assert report.wasted_bytes == deleted + overwritten + len(b"print('v2')\n" * 12)
    assert report.removable_bytes == deleted + overwritten
    assert report.unpacked_size == report.final_size + report.removable_bytes
    assert report.pull_size == sum(layer.size for layer in report.layers)
    assert report.pull_size_compressed
    assert [layer.created_by for layer in report.layers] == [
        "/bin/sh -c #(nop) ADD rootfs.tar /", "RUN pip install numpy onnxruntime-gpu  # buildkit",
        "COPY . /app",  # the ENV step before it made no layer: skipped, as docker history does
        "RUN rm -rf /tmp/big.bin /root/.ssh/id_rsa /app/build/* && edit server.py"]
    assert report.layers[3].whiteouts == 3
    assert report.largest_paths[0].path == "root/.cache/pip/http/a/b/c/0123456789"
    assert "tmp/big.bin" not in {p.path for p in report.largest_paths}
    assert report.digest == bloated["manifest_digest"]
    assert report.image_id == bloated["image_id"]
    assert report.debian_packages == 3  # removed-pkg is config-files only
    assert {(lib.name, lib.version) for lib in report.libraries} == {
        ("cuda", "12"), ("cuda", "12.1.105"), ("onnxruntime", "1.18.0")}


def test_clean_image_passes(clean: dict[str, str]) -> None:
    report = audit(clean["oci-archive"], GPU_POLICY)
    assert report.violations == []
    assert report.verdict == "pass"
    assert report.config.user == "app"
    assert report.wasted_bytes == 0
    assert ("cuda", "12.4.127") in {(lib.name, lib.version) for lib in report.libraries}


def test_clean_image_without_allowances(clean: dict[str, str]) -> None:
    policy = AuditPolicy.model_validate({"pins": {"cuda": "12.1", "tensorrt": "10"}})
    found = by_check(audit(clean["oci"], policy))
    assert set(found) == {"weights", "pins"}
    assert found["weights"].paths == ["opt/models/unet.onnx"]
    messages = sorted(v.message for v in audit(clean["oci"], policy).violations
                      if v.check == "pins")
    assert messages == ["cuda pinned to 12.1, found 12.4.127",
                        "tensorrt pinned to 10 but not found"]


def test_allow_and_skip(bloated: dict[str, str]) -> None:
    policy = AuditPolicy.model_validate({
        "allow": {"setuid": ["usr/bin/su"], "private-keys": ["app/deploy_key"]},
        "allowWeights": ["app/model/*.safetensors"], "skip": ["compilers", "headers"]})
    found = by_check(audit(bloated["oci"], policy))
    assert not {"setuid", "weights", "compilers", "headers"} & set(found)
    assert found["private-keys"].paths == ["root/.ssh/id_rsa"]


@pytest.mark.parametrize("form", ["oci-archive", "docker-archive"])
def test_forms_audit_identically(bloated: dict[str, str], form: str) -> None:
    def findings(report: AuditReport) -> dict[str, Any]:
        data = report.model_dump(exclude={"image", "form", "digest", "pull_size",
                                           "pull_size_compressed", "tags"})
        for layer in data["layers"]:
            del layer["digest"], layer["media_type"], layer["size"]
        return data

    reference = audit(bloated["oci"], GPU_POLICY)
    other = audit(bloated[form], GPU_POLICY)
    assert findings(other) == findings(reference)
    assert other.image_id == reference.image_id
    if form == "docker-archive":
        assert other.digest is None
        assert not other.pull_size_compressed
        assert [layer.digest for layer in other.layers] == [
            layer.diff_id for layer in reference.layers]
    else:
        assert other.model_dump(exclude={"image", "form"}) == reference.model_dump(
            exclude={"image", "form"})


def test_bare_paths_are_recognised(bloated: dict[str, str]) -> None:
    for ref, form in ((bloated["oci"], "oci"), (bloated["oci-archive"], "oci-archive"),
                      (bloated["docker-archive"], "docker-archive")):
        path = ref.split(":", 1)[1]
        assert audit(path).form == form
        assert Path(path).exists()


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("opt/models", "opt/models/unet.onnx", True),
    ("/opt/models/", "opt/models/a/b.plan", True),
    ("opt/models", "opt/models2/x.onnx", False),
    ("**/*.onnx", "a/b/c.onnx", True),
    ("*.onnx", "a/c.onnx", False),
    ("**/site-packages/**", "usr/lib/python3/site-packages/numpy/tests", True),
    ("usr/lib/python3*/**", "usr/lib/python3.11/test/x.py", True),
])
def test_glob_match(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected
