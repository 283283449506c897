"""A small image built for real (buildah, chroot isolation, the cached Debian base) and audited.

Two Containerfiles with known contents: a bloated one that commits every sin the audit knows
(compilers, headers, a pip cache, ``.git``, a notebook, a tests directory, a setuid binary, a
private key deleted by a later step, root, no GPU plumbing, over its pull budget), and a clean
multi-stage one (non-root by name, GPU env set, runtime stage that only copies). Each finding is
asserted by name and path, with the exit code and the history step that made each layer.
"""

from __future__ import annotations

from pathlib import Path

from image_build_support import REQUIRES_TOOLS, audit_image, buildah, run_in_image

pytestmark = REQUIRES_TOOLS

KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjE\\n"
       "-----END OPENSSH PRIVATE KEY-----\\n")
BLOATED = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
COPY app/ /app/
RUN mkdir -p /usr/include/demo /root/.cache/pip/http \\
 && echo '#define DEMO 1' > /usr/include/demo/demo.h \\
 && head -c 65536 /dev/urandom > /root/.cache/pip/http/0123 \\
 && printf '#!/bin/sh\\nexit 1\\n' > /usr/local/bin/gcc && chmod 755 /usr/local/bin/gcc \\
 && cp /usr/bin/true /usr/local/bin/escalate && chmod 4755 /usr/local/bin/escalate
RUN printf -- '{KEY}' > /root/id_ed25519
RUN rm /root/id_ed25519
ENTRYPOINT ["python3", "/app/server.py"]
"""
CLEAN = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS build
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app
FROM ${BASE_IMAGE}
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build /etc/passwd /etc/group /etc/
COPY app/server.py /app/server.py
USER app
ENTRYPOINT ["python3", "/app/server.py"]
"""
APP = {
    "app/server.py": "import os\nprint('serving as', os.getuid())\n",
    "app/.git/HEAD": "ref: refs/heads/main\n",
    "app/explore.ipynb": '{"cells": []}\n',
    "app/tests/test_server.py": "def test_nothing():\n    pass\n",
}


def _build(tmp_path: Path, containerfile: str, base_tag: str, tag: str) -> Path:
    """Build CONTAINERFILE over the APP files with buildah; the image as an OCI archive."""
    ctx = tmp_path / "ctx"
    for name, text in {**APP, "Containerfile": containerfile}.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    buildah("bud", "--isolation", "chroot", "--layers", "--format", "oci",
            "--build-arg", f"BASE_IMAGE={base_tag}", "-t", tag, str(ctx))
    archive = tmp_path / "image.oci.tar"
    buildah("push", "--quiet", tag, f"oci-archive:{archive}")
    return archive


def test_bloated_image_every_finding_by_name(tmp_path: Path, base_tag: str,
                                             scratch_tag: str) -> None:
    archive = _build(tmp_path, BLOATED, base_tag, scratch_tag)
    code, report = audit_image(f"oci-archive:{archive}", "--gpu", "--max-pull-size", "20MB")

    assert code == 1 and report["verdict"] == "fail"
    found = {v["check"]: v for v in report["violations"]}
    assert set(found) == {"pull-size", "compilers", "headers", "package-caches", "vcs",
                          "notebooks", "tests", "setuid", "private-keys", "root-user",
                          "gpu-env"}, report["violations"]
    assert found["compilers"]["paths"] == ["usr/local/bin/gcc"]
    # Paths are reported at their root, with the count: the base itself ships no header.
    assert (found["headers"]["paths"], found["headers"]["count"]) == (["usr/include"], 1)
    caches = found["package-caches"]
    assert (caches["paths"], caches["count"], caches["bytes"]) == (["root/.cache/pip"], 1, 65536)
    assert found["vcs"]["paths"] == ["app/.git"]
    assert found["notebooks"]["paths"] == ["app/explore.ipynb"]
    assert found["tests"]["paths"] == ["app/tests"]
    assert found["setuid"]["paths"] == ["usr/local/bin/escalate"]
    assert found["private-keys"]["paths"] == ["root/id_ed25519"]
    assert report["pull_size"] > 20_000_000

    # One layer per step, each paired with the history entry that made it (`docker history`).
    made_by = [layer["created_by"] for layer in report["layers"]]
    assert made_by[0].startswith("mmdebstrap --variant=minbase")
    assert "COPY" in made_by[1]
    assert "/usr/include/demo" in made_by[2]
    assert "id_ed25519" in made_by[3] and "rm /root/id_ed25519" in made_by[4]
    assert len(made_by) == 5
    # The deleted key is still in layer 3's blob: dive counts it (and its whiteout) as waste.
    assert report["wasted_bytes"] >= len(KEY) - 6
    assert report["config"]["user"] == ""


def test_clean_multi_stage_image_passes(tmp_path: Path, base_tag: str, scratch_tag: str) -> None:
    archive = _build(tmp_path, CLEAN, base_tag, scratch_tag)
    code, report = audit_image(str(archive), "--gpu", "--max-pull-size", "100MB")

    assert (code, report["verdict"], report["violations"]) == (0, "pass", [])
    assert report["config"]["user"] == "app"
    # Only the runtime stage ships: the base plus the two COPY layers, no RUN.
    made_by = [layer["created_by"] for layer in report["layers"]]
    assert len(made_by) == 3 and all("COPY" in step for step in made_by[1:])
    assert report["removable_bytes"] < 10_000  # only /etc/passwd and /etc/group overwritten
    # The user name resolves to the uid the audit judged non-root, in a real run of the image.
    assert run_in_image(scratch_tag, "python3", "/app/server.py") == "serving as 10001"
