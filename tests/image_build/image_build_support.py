"""Real processes the image-build tests drive: build.py, buildah, ``rollout audit-image``.

A module of its own (not conftest) so the tests import it by a name no other directory uses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

__all__ = ["BUILD_SCRIPT", "REQUIRES_TOOLS", "audit_image", "buildah", "run_build_script",
           "run_in_image"]

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "images" / "build.py"
_MISSING = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
# The only reason these tests skip: CI installs both (`make system-deps`).
REQUIRES_TOOLS = pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed: real image builds need buildah "
    "and mmdebstrap (`make system-deps`, or apt-get install buildah mmdebstrap)")


def run_build_script(*args: str, timeout: float = 900) -> dict[str, Any]:
    """``deploy/images/build.py ARGS --output json`` as a real process; its JSON summary."""
    done = subprocess.run([sys.executable, str(BUILD_SCRIPT), *args, "--output", "json"],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"build.py {' '.join(args)} exited {done.returncode}:\n" \
        f"{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def audit_image(image: str, *options: str) -> tuple[int, dict[str, Any]]:
    """``rollout audit-image IMAGE OPTIONS --output json`` as a real process: exit code, report."""
    done = subprocess.run([sys.executable, "-m", "rollout.cli", "audit-image", image, *options,
                           "--output", "json"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.stdout, f"audit-image printed nothing (exit {done.returncode}): {done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


def buildah(*args: str, timeout: float = 600) -> str:
    """buildah ARGS in the machine's image store (where build.py imported the base); stdout."""
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr[-4000:]}"
    return done.stdout.strip()


def run_in_image(tag: str, *command: str) -> str:
    """Run COMMAND in a container of TAG (chroot isolation, the image's USER); its stdout."""
    ctr = buildah("from", "--quiet", tag)
    try:
        return buildah("run", "--isolation", "chroot", ctr, "--", *command)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
