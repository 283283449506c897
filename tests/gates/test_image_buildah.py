"""A real image, built with buildah (no daemon, no registry), audited in two of its forms.

``buildah from scratch`` + ``copy`` + ``config --user`` + ``commit``, then ``push`` to an OCI
archive and a docker archive, in a private vfs store under the test's temporary directory (the
machine's own image store is not touched). buildah is installed with apt-get when missing (as
root, as in CI); this test never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gates.image.audit import audit

_APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _buildah() -> str:
    found = shutil.which("buildah")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("buildah is missing and only root may install it: apt-get install buildah")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=_APT_ENV, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "buildah"], check=True, env=_APT_ENV,
                   timeout=600)
    found = shutil.which("buildah")
    assert found, "apt-get installed buildah but it is not on PATH"
    return found


def _context(root: Path) -> Path:
    ctx = root / "ctx"
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:10001:10001::/app:/bin/sh\n",
        "app/server.py": "print('serve')\n",
        "app/.git/HEAD": "ref: refs/heads/main\n",
        "app/explore.ipynb": '{"cells": []}\n',
        "opt/models/unet.onnx": "ONNX" * 256,
    }
    for name, text in files.items():
        path = ctx / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ctx


def test_buildah_built_image_audits(tmp_path: Path) -> None:
    buildah = _buildah()
    store = [buildah, "--root", str(tmp_path / "store"), "--runroot", str(tmp_path / "run"),
             "--storage-driver", "vfs"]
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}

    def run(*args: str) -> str:
        done = subprocess.run([*store, *args], capture_output=True, text=True, env=env,
                              timeout=300, check=False)
        assert done.returncode == 0, f"buildah {args[0]}: {done.stderr}"
        return done.stdout.strip()

    ctr = run("from", "scratch")
    run("copy", ctr, f"{_context(tmp_path)}/", "/")
    run("config", "--user", "app", "--env", "NVIDIA_VISIBLE_DEVICES=all", "--env",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility", "--entrypoint",
        '["python3", "/app/server.py"]', ctr)
    run("commit", "--quiet", ctr, "localhost/audit-test:1")
    run("rm", ctr)
    oci, docker = tmp_path / "img.oci.tar", tmp_path / "img.docker.tar"
    run("push", "--quiet", "localhost/audit-test:1", f"oci-archive:{oci}")
    run("push", "--quiet", "localhost/audit-test:1", f"docker-archive:{docker}")

    report = audit(f"oci-archive:{oci}")
    checks = {v.check: v for v in report.violations}
    assert set(checks) == {"vcs", "notebooks", "weights"}, report.violations
    assert checks["vcs"].paths == ["app/.git"]
    assert checks["notebooks"].paths == ["app/explore.ipynb"]
    assert checks["weights"].paths == ["opt/models/unet.onnx"]
    assert report.config.user == "app"
    assert report.digest is not None and report.digest.startswith("sha256:")
    assert report.files == 5 and report.pull_size_compressed
    assert len(report.layers) == 1

    twin = audit(f"docker-archive:{docker}")
    assert twin.image_id == report.image_id  # buildah writes the same config in both forms
    assert twin.layers[0].diff_id == report.layers[0].diff_id == twin.layers[0].digest
    assert twin.violations == report.violations
    assert twin.final_size == report.final_size
