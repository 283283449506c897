"""Open a container image in the three forms a user hands an auditor, without unpacking it.

* ``oci-archive:PATH`` - a tar of an OCI image layout (``buildah push IMG oci-archive:PATH``);
* ``oci:DIR`` - an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``);
* ``docker-archive:PATH`` - what ``docker save`` writes (``manifest.json``, the config, one tar
  per layer; Docker >= 25 writes an OCI layout beside it, which is then preferred).

A bare path is recognised from its content. ``oci:DIR:REF`` / ``oci-archive:PATH:REF`` pick one
image of a layout by its ``org.opencontainers.image.ref.name``; ``docker-archive:PATH:TAG`` one
of several saved images. Only the small JSON documents are read whole (bounded); every digest
that names them is verified, and layer blobs are opened as streams whose digest the layer walker
verifies. Anything that is not such an image raises :class:`ImageError` (the CLI's exit 2).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

__all__ = ["FORMS", "Form", "Image", "ImageError", "ImageRef", "Layer", "manifest_bytes",
           "open_image", "parse_ref"]

Form = Literal["oci-archive", "docker-archive", "oci"]
FORMS: tuple[Form, ...] = ("oci-archive", "docker-archive", "oci")

#: Bound on a JSON document (index, manifest, config): far above any real one.
_MAX_JSON = 16 << 20
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_REF_NAME = "org.opencontainers.image.ref.name"


class ImageError(Exception):
    """Not an image, or a corrupt or unreadable one: bad input, never a verdict."""


@dataclass(frozen=True)
class ImageRef:
    """``[FORM:]PATH[:REF]`` resolved to an existing path; ``form`` None means detect it."""

    form: Form | None
    path: Path
    ref: str | None = None


@dataclass(frozen=True)
class Layer:
    """One layer blob as the manifest describes it (``digest`` None: only known once read)."""

    index: int
    name: str
    digest: str | None
    diff_id: str | None
    size: int
    media_type: str


@dataclass(frozen=True)
class Image:
    """An opened image: its documents parsed and verified, its layers ready to stream."""

    form: Form
    path: Path
    manifest_digest: str | None
    config_digest: str
    config: dict[str, Any]
    layers: tuple[Layer, ...]
    tags: tuple[str, ...]
    store: Store

    def open_layer(self, layer: Layer) -> IO[bytes]:
        """The layer's blob as a binary stream (the caller closes it)."""
        return self.store.open(layer.name)


class Store(Protocol):
    """Named files of a layout: a directory or the members of an outer tar."""

    def exists(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def open(self, name: str) -> IO[bytes]: ...


class _DirStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ImageError(f"{name!r} points outside {self.root}")
        return path

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def open(self, name: str) -> IO[bytes]:
        try:
            return self._path(name).open("rb")
        except OSError as e:
            raise ImageError(f"{self.root}: cannot read {name}: {e.strerror}") from e


class _TarStore:
    def __init__(self, tar: tarfile.TarFile, path: Path) -> None:
        self.tar, self.path = tar, path
        self.members = {_clean(m.name): m for m in tar.getmembers() if m.isfile()}

    def exists(self, name: str) -> bool:
        return _clean(name) in self.members

    def size(self, name: str) -> int:
        return self.members[_clean(name)].size

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(_clean(name))
        stream = self.tar.extractfile(member) if member is not None else None
        if stream is None:
            raise ImageError(f"{self.path}: no file {name!r} in the archive")
        return stream


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def parse_ref(text: str) -> ImageRef:
    """``oci-archive:P``, ``docker-archive:P``, ``oci:DIR`` (each with an optional ``:REF``) or
    a bare path; the path must exist."""
    form: Form | None = None
    rest = text
    for prefix in FORMS:
        if text.startswith(prefix + ":"):
            form, rest = prefix, text[len(prefix) + 1 :]
            break
    path, ref = rest, None
    if form is not None and not Path(rest).exists():  # PATH:REF, the REF may hold colons
        cuts = [i for i, c in enumerate(rest) if c == ":" and i > 0 and Path(rest[:i]).exists()]
        if cuts:
            path, ref = rest[: cuts[0]], rest[cuts[0] + 1 :]
    if not path or not Path(path).exists():
        raise ImageError(f"{text}: no such file or directory")
    return ImageRef(form, Path(path), ref or None)


def _read_bytes(store: Store, name: str, digest: str | None = None) -> bytes:
    if not store.exists(name):
        raise ImageError(f"missing {name}")
    if store.size(name) > _MAX_JSON:
        raise ImageError(f"{name}: larger than {_MAX_JSON} bytes, not an image document")
    with store.open(name) as f:
        data = f.read(_MAX_JSON + 1)
    if digest is not None and _sha256(data) != digest:
        raise ImageError(f"{name}: content does not match its digest {digest}")
    return data


def _read_json(store: Store, name: str, digest: str | None = None) -> Any:
    return _parse_json(_read_bytes(store, name, digest), name)


def _parse_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImageError(f"{name}: not JSON ({e})") from e


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_name(digest: object) -> str:
    if not isinstance(digest, str) or ":" not in digest:
        raise ImageError(f"bad digest {digest!r}")
    algorithm, hexa = digest.split(":", 1)
    if algorithm != "sha256" or len(hexa) != 64 or not all(c in "0123456789abcdef" for c in hexa):
        raise ImageError(f"unsupported or malformed digest {digest!r} (sha256 only)")
    return f"blobs/sha256/{hexa}"


def _pick_descriptor(index: dict[str, Any], ref: str | None, where: str) -> dict[str, Any]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"{where}: no manifests in index.json")
    if ref is not None:
        named = [m for m in manifests if m.get("annotations", {}).get(_REF_NAME) == ref]
        if not named:
            raise ImageError(f"{where}: no image named {ref!r} in the layout")
        return dict(named[0])
    platforms = [m for m in manifests if m.get("platform", {}).get("os") in (None, "linux")]
    amd64 = [m for m in platforms if m.get("platform", {}).get("architecture") == "amd64"]
    if len(manifests) == 1 or len(amd64) == 1:
        return dict(manifests[0] if len(manifests) == 1 else amd64[0])
    names = [m.get("annotations", {}).get(_REF_NAME, m.get("digest")) for m in manifests]
    raise ImageError(f"{where}: {len(manifests)} images; name one as oci:PATH:REF ({names})")


def _oci_image(store: Store, ref: ImageRef, form: Form) -> Image:
    where = str(ref.path)
    desc = _pick_descriptor(_read_json(store, "index.json"), ref.ref, where)
    for _ in range(2):  # an index may point to a (multi-platform) index
        if desc.get("mediaType") not in _INDEX_TYPES:
            break
        desc = _pick_descriptor(_read_json(store, _blob_name(desc.get("digest")),
                                           desc.get("digest")), None, where)
    manifest_digest = str(desc.get("digest"))
    manifest = _read_json(store, _blob_name(manifest_digest), manifest_digest)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ImageError(f"{where}: the manifest has no config")
    config_digest = str(manifest["config"].get("digest"))
    config = _read_json(store, _blob_name(config_digest), config_digest)
    diff_ids = _diff_ids(config, where)
    layers = []
    for i, blob in enumerate(manifest.get("layers") or []):
        name = _blob_name(blob.get("digest"))
        if not store.exists(name):
            raise ImageError(f"{where}: layer {i} blob {blob.get('digest')} is missing")
        layers.append(Layer(i, name, str(blob["digest"]), diff_ids[i] if i < len(diff_ids)
                            else None, store.size(name), str(blob.get("mediaType", ""))))
    ref_name = (desc.get("annotations") or {}).get(_REF_NAME)
    tags = [str(ref_name)] if ref_name else []
    return Image(form, ref.path, manifest_digest, config_digest, config, tuple(layers),
                 tuple(tags), store)


def _diff_ids(config: Any, where: str) -> list[str]:
    if not isinstance(config, dict) or not isinstance(config.get("rootfs"), dict):
        raise ImageError(f"{where}: the image config has no rootfs")
    return [str(d) for d in config["rootfs"].get("diff_ids") or []]


def _docker_image(store: Store, ref: ImageRef) -> Image:
    where = str(ref.path)
    entries = _read_json(store, "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{where}: manifest.json lists no image")
    if ref.ref is not None:
        entries = [e for e in entries if ref.ref in (e.get("RepoTags") or [])]
        if not entries:
            raise ImageError(f"{where}: no image tagged {ref.ref!r}")
    elif len(entries) > 1:
        tags = [e.get("RepoTags") for e in entries]
        raise ImageError(f"{where}: {len(entries)} images; name one as docker-archive:PATH:TAG "
                         f"({tags})")
    entry = entries[0]
    config_name = str(entry.get("Config"))
    config_bytes = _read_bytes(store, config_name)
    config = _parse_json(config_bytes, config_name)
    diff_ids = _diff_ids(config, where)
    layers = []
    for i, name in enumerate(entry.get("Layers") or []):
        if not store.exists(name):
            raise ImageError(f"{where}: layer {i} ({name}) is missing")
        digest = "sha256:" + name.rsplit("/", 1)[1] if name.startswith("blobs/sha256/") else None
        layers.append(Layer(i, name, digest, diff_ids[i] if i < len(diff_ids) else None,
                            store.size(name), "application/vnd.docker.image.rootfs.diff.tar"))
    return Image("docker-archive", ref.path, None, _sha256(config_bytes), config, tuple(layers),
                 tuple(str(t) for t in entry.get("RepoTags") or []), store)


def manifest_bytes(image: Image) -> bytes:
    """The manifest exactly as stored (its sha256 is :attr:`Image.manifest_digest`): what a
    simple-signing signature's ``docker-manifest-digest`` names.

    Raises:
        ImageError: the form has no manifest (a ``docker save`` archive).
    """
    if image.manifest_digest is None:
        raise ImageError(f"{image.form}:{image.path}: a docker save archive has no manifest "
                         "digest to sign; convert it (skopeo copy docker-archive:P "
                         "oci-archive:Q) and sign that")
    return _read_bytes(image.store, _blob_name(image.manifest_digest), image.manifest_digest)


@contextmanager
def open_image(ref: ImageRef | str) -> Iterator[Image]:
    """Open ``ref``; the image's layers can be read until the context exits."""
    if isinstance(ref, str):
        ref = parse_ref(ref)
    with ExitStack() as stack:
        store: Store
        if ref.path.is_dir():
            store = _DirStore(ref.path)
        else:
            try:
                tar = stack.enter_context(tarfile.open(ref.path, "r:*"))
            except (tarfile.TarError, OSError, EOFError) as e:
                raise ImageError(f"{ref.path}: not an image archive ({e})") from e
            store = _TarStore(tar, ref.path)
        yield _open_form(store, ref)


def _open_form(store: Store, ref: ImageRef) -> Image:
    form = ref.form
    if form is None:
        if store.exists("index.json"):
            form = "oci" if ref.path.is_dir() else "oci-archive"
        elif store.exists("manifest.json"):
            form = "docker-archive"
        else:
            raise ImageError(f"{ref.path}: not an image (neither index.json nor manifest.json)")
    if form == "docker-archive":
        return _docker_image(store, ref)
    if not store.exists("index.json"):
        raise ImageError(f"{ref.path}: not an OCI layout (no index.json)")
    return _oci_image(store, ref, form)
