"""``gates.image.diff``: layers, files, Debian packages, Python distributions and config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from images import Entry, LayerSpec, bloated_image, clean_image, write_forms

from gates.image.diff import diff

_DPKG_V2 = (b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u7\n\n"
            b"Package: python3.11\nStatus: install ok installed\nVersion: 3.11.2-6\n\n"
            b"Package: curl\nStatus: install ok installed\nVersion: 7.88.1-10\n")


def test_release_diff(tmp_path: Path) -> None:
    v1 = clean_image()
    v2 = clean_image(onnxruntime="1.19.2", extra_env=("ORT_LOG=1",))
    patch = LayerSpec((
        Entry("var/lib/dpkg/status", _DPKG_V2),
        Entry("app/server.py", b"print('serve v2')\n"),
        Entry("app/.wh.old.py", b""),
        Entry("usr/local/lib/python3.11/site-packages/safetensors-0.4.3.dist-info/RECORD"),
    ), "RUN apt-get install curl && pip install safetensors")
    v2 = dataclasses.replace(v2, layers=[*v2.layers, patch], entrypoint=["sd-server"])
    a = write_forms(v1, tmp_path, "v1")
    b = write_forms(v2, tmp_path, "v2")
    result = diff(a["oci-archive"], b["docker-archive"])
    assert not result.identical
    assert result.a == a["oci-archive"]
    assert result.digest_a == a["manifest_digest"] and result.digest_b is None
    assert result.shared_layers == 1
    assert len(result.layers_removed) == 1 and len(result.layers_added) == 2
    assert result.layers_added[-1].created_by == patch.created_by
    added = {c.path for c in result.files.added}
    assert "usr/local/lib/python3.11/site-packages/safetensors-0.4.3.dist-info/RECORD" in added
    removed = {c.path for c in result.files.removed}
    assert {"usr/local/lib/python3.11/site-packages/onnxruntime_gpu-1.18.1.dist-info/METADATA"
            } <= removed
    changed = {c.path: c for c in result.files.changed}
    assert changed["app/server.py"].size_a == len(b"print('serve')\n")
    assert changed["app/server.py"].size_b == len(b"print('serve v2')\n")
    assert "var/lib/dpkg/status" in changed
    assert result.debian_packages.added == {"curl": "7.88.1-10"}
    assert result.debian_packages.changed == {"libc6": ["2.36-9+deb12u4", "2.36-9+deb12u7"]}
    assert result.debian_packages.removed == {}
    assert result.python_distributions.added == {"safetensors": "0.4.3"}
    assert result.python_distributions.changed == {"onnxruntime-gpu": ["1.18.1", "1.19.2"]}
    assert result.config["env.ORT_LOG"] == [None, "1"]
    assert result.config["entrypoint"] == [["python3", "/app/server.py"], ["sd-server"]]
    assert "user" not in result.config


def test_same_image_in_two_forms_is_identical(tmp_path: Path) -> None:
    forms = write_forms(bloated_image(), tmp_path, "b")
    result = diff(forms["oci"], forms["docker-archive"])
    assert result.identical
    assert result.shared_layers == 4
    assert result.files.counts == {"added": 0, "removed": 0, "changed": 0}
    assert result.image_id_a == result.image_id_b


def test_content_change_with_same_size_is_seen(tmp_path: Path) -> None:
    one = write_forms(clean_image(), tmp_path, "one")
    spec = clean_image()
    spec.layers[1] = dataclasses.replace(spec.layers[1], entries=tuple(
        Entry(e.path, b"print('SERVE')\n", uid=10001) if e.path == "app/server.py" else e
        for e in spec.layers[1].entries))
    two = write_forms(spec, tmp_path, "two")
    result = diff(one["oci"], two["oci"])
    assert [c.path for c in result.files.changed] == ["app/server.py"]
    assert result.files.bytes_delta == 0
