"""``gates.image.reader``: the three forms, references, and every way an input is not an image."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from images import Entry, ImageSpec, LayerSpec, clean_image, write_forms

from gates.image.audit import audit
from gates.image.reader import ImageError, open_image, parse_ref


@pytest.fixture
def forms(tmp_path: Path) -> dict[str, str]:
    return write_forms(clean_image(), tmp_path, "clean")


def test_parse_ref_forms_and_refs(forms: dict[str, str]) -> None:
    layout = forms["oci"].split(":", 1)[1]
    assert parse_ref(forms["oci"]).form == "oci"
    assert parse_ref(f"oci:{layout}:latest").ref == "latest"
    assert parse_ref(layout).form is None
    with open_image(f"oci:{layout}:latest") as image:
        assert image.tags == ("latest",)
    with open_image(forms["docker-archive"]) as image:
        assert image.tags == ("localhost/clean:latest",)
        assert image.manifest_digest is None
    tagged = parse_ref(forms["docker-archive"] + ":localhost/clean:latest")
    assert tagged.ref == "localhost/clean:latest"
    with open_image(tagged) as image:
        assert image.form == "docker-archive"


@pytest.mark.parametrize("text", ["/no/such/image.tar", "oci:/no/such/dir",
                                  "docker-archive:/no/such.tar:tag"])
def test_missing_paths(text: str) -> None:
    with pytest.raises(ImageError, match="no such file"):
        parse_ref(text)


def test_unknown_ref(forms: dict[str, str]) -> None:
    with pytest.raises(ImageError, match="no image named 'v2'"), \
            open_image(forms["oci"] + ":v2"):
        pass


def test_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ImageError, match="not an image archive"), open_image(str(text)):
        pass
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(text, arcname="notes.txt")
    with pytest.raises(ImageError, match=r"neither index\.json nor manifest\.json"), \
            open_image(str(plain)):
        pass
    with pytest.raises(ImageError, match="not an OCI layout"), open_image(f"oci:{tmp_path}"):
        pass


def test_tampered_layer_is_refused(forms: dict[str, str]) -> None:
    layout = Path(forms["oci"].split(":", 1)[1])
    index = json.loads((layout / "index.json").read_text())
    manifest_name = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_name).read_bytes())
    blob = layout / "blobs" / "sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("app/server.py")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    blob.write_bytes(gzip.compress(data.getvalue()))
    with pytest.raises(ImageError, match="does not match its digest"):
        audit(forms["oci"])


def test_tampered_manifest_is_refused(forms: dict[str, str]) -> None:
    layout = Path(forms["oci"].split(":", 1)[1])
    index = json.loads((layout / "index.json").read_text())
    name = index["manifests"][0]["digest"].split(":")[1]
    path = layout / "blobs" / "sha256" / name
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    with pytest.raises(ImageError, match="does not match its digest"), open_image(forms["oci"]):
        pass


def _valid_tar() -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("a")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"2"))
    return data.getvalue()


@pytest.mark.parametrize(("layer", "error"), [
    (b"\x01" * 1024, "not a tar stream"),
    (_valid_tar(), "does not match its digest"),  # a docker layer is checked by its diff_id
])
def test_bad_docker_layer(tmp_path: Path, layer: bytes, error: str) -> None:
    forms = write_forms(ImageSpec([LayerSpec((Entry("a", b"1"),), "x")]), tmp_path, "one")
    docker = Path(forms["docker-archive"].split(":", 1)[1])
    broken = tmp_path / "broken.tar"
    with tarfile.open(docker) as src, tarfile.open(broken, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name.endswith("layer.tar"):
                member.size = len(layer)
                data = io.BytesIO(layer)
            dst.addfile(member, data)
    assert audit(forms["docker-archive"]).files == 1
    with pytest.raises(ImageError, match=error):
        audit(f"docker-archive:{broken}")


def test_zstd_layer_is_bad_input(tmp_path: Path) -> None:
    forms = write_forms(ImageSpec([LayerSpec((Entry("a", b"1"),), "x")]), tmp_path, "z")
    layout = Path(forms["oci"].split(":", 1)[1])
    for blob in (layout / "blobs" / "sha256").iterdir():
        if blob.read_bytes()[:2] == b"\x1f\x8b":
            blob.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 60)
    with pytest.raises(ImageError, match="zstd"):
        audit(forms["oci"])


def test_multi_image_layout_needs_a_ref(forms: dict[str, str]) -> None:
    layout = Path(forms["oci"].split(":", 1)[1])
    index = json.loads((layout / "index.json").read_text())
    second = dict(index["manifests"][0], annotations={
        "org.opencontainers.image.ref.name": "v2"})
    index["manifests"].append(second)
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ImageError, match="2 images"), open_image(forms["oci"]):
        pass
    with open_image(forms["oci"] + ":v2") as image:
        assert image.tags == ("v2",)
