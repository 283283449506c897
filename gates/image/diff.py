"""``diff(a, b) -> ImageDiff``: what changed between two images, whatever their forms.

Layers are compared by ``diff_id`` (the uncompressed layer digest: the same in every form), so
the shared base is recognised even when one side is a ``docker save`` archive. Files are
compared on the final filesystems by type, size, mode, link target and content (sha256, hashed
while the layers stream); Debian packages from ``var/lib/dpkg/status``, Python distributions
from their ``*.dist-info`` names; and the runtime config (env, entrypoint, cmd, user, workdir).
Lists are capped at ``limit`` entries (largest first); counts and byte totals are always exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gates.image.audit import RuntimeConfig, runtime_config
from gates.image.checks import env_dict
from gates.image.contents import debian_packages, python_distributions
from gates.image.layers import Entry, Progress, Walk, walk
from gates.image.reader import Image, ImageRef, open_image

__all__ = ["FileChange", "FilesDiff", "ImageDiff", "LayerBrief", "VersionsDiff", "diff"]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class LayerBrief(BaseModel):
    """A layer on one side only."""

    model_config = _FROZEN

    diff_id: str | None
    unpacked_size: int
    created_by: str | None


class FileChange(BaseModel):
    """A path added (``size_a`` None), removed (``size_b`` None) or changed."""

    model_config = _FROZEN

    path: str
    size_a: int | None
    size_b: int | None


class FilesDiff(BaseModel):
    """Files of the final filesystems (directories are not listed)."""

    model_config = _FROZEN

    added: list[FileChange] = Field(default_factory=list)
    removed: list[FileChange] = Field(default_factory=list)
    changed: list[FileChange] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    bytes_delta: int = 0


class VersionsDiff(BaseModel):
    """Packages by name: added/removed name -> version, changed name -> [a, b]."""

    model_config = _FROZEN

    added: dict[str, str] = Field(default_factory=dict)
    removed: dict[str, str] = Field(default_factory=dict)
    changed: dict[str, list[str]] = Field(default_factory=dict)


class ImageDiff(BaseModel):
    """Everything that differs from A to B; ``identical`` when nothing does."""

    model_config = _FROZEN

    a: str
    b: str
    digest_a: str | None
    digest_b: str | None
    image_id_a: str
    image_id_b: str
    identical: bool
    shared_layers: int
    layers_removed: list[LayerBrief]
    layers_added: list[LayerBrief]
    files: FilesDiff
    debian_packages: VersionsDiff
    python_distributions: VersionsDiff
    config: dict[str, list[Any]] = Field(description="Field -> [A's value, B's value].")


def _versions(a: Mapping[str, str], b: Mapping[str, str]) -> VersionsDiff:
    return VersionsDiff(
        added={k: b[k] for k in sorted(b.keys() - a.keys())},
        removed={k: a[k] for k in sorted(a.keys() - b.keys())},
        changed={k: [a[k], b[k]] for k in sorted(a.keys() & b.keys()) if a[k] != b[k]})


def _same(x: Entry, y: Entry) -> bool:
    return (x.kind, x.size, x.mode & 0o7777, x.link, x.sha256, x.uid) == (
        y.kind, y.size, y.mode & 0o7777, y.link, y.sha256, y.uid)


def _files(a: Mapping[str, Entry], b: Mapping[str, Entry], limit: int) -> FilesDiff:
    files_a = {p: e for p, e in a.items() if e.kind != "d"}
    files_b = {p: e for p, e in b.items() if e.kind != "d"}
    added = [FileChange(path=p, size_a=None, size_b=files_b[p].size)
             for p in files_b.keys() - files_a.keys()]
    removed = [FileChange(path=p, size_a=files_a[p].size, size_b=None)
               for p in files_a.keys() - files_b.keys()]
    changed = [FileChange(path=p, size_a=files_a[p].size, size_b=files_b[p].size)
               for p in files_a.keys() & files_b.keys() if not _same(files_a[p], files_b[p])]
    delta = sum(e.size for e in files_b.values()) - sum(e.size for e in files_a.values())

    def top(changes: list[FileChange]) -> list[FileChange]:
        def weight(c: FileChange) -> tuple[int, str]:
            return (-max(c.size_a or 0, c.size_b or 0), c.path)
        return sorted(changes, key=weight)[:limit]

    return FilesDiff(added=top(added), removed=top(removed), changed=top(changed),
                     counts={"added": len(added), "removed": len(removed),
                             "changed": len(changed)}, bytes_delta=delta)


def _layers(image: Image, result: Walk, start: int) -> list[LayerBrief]:
    history = [h for h in image.config.get("history") or []
               if isinstance(h, dict) and not h.get("empty_layer")]
    return [LayerBrief(diff_id=layer.diff_id, unpacked_size=result.layers[layer.index].bytes,
                       created_by=str(history[layer.index].get("created_by"))
                       if layer.index < len(history) else None)
            for layer in image.layers[start:]]


def _config(a: RuntimeConfig, b: RuntimeConfig) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for field in ("user", "entrypoint", "cmd", "workdir"):
        if getattr(a, field) != getattr(b, field):
            out[field] = [getattr(a, field), getattr(b, field)]
    env_a, env_b = env_dict(a.env), env_dict(b.env)
    for key in sorted(env_a.keys() | env_b.keys()):
        if env_a.get(key) != env_b.get(key):
            out[f"env.{key}"] = [env_a.get(key), env_b.get(key)]
    return out


def diff(a: Image | ImageRef | str, b: Image | ImageRef | str, *, limit: int = 200,
         progress: Progress | None = None) -> ImageDiff:
    """Compare two images (opened, or references opened here; ``ImageError`` if unreadable)."""
    if not isinstance(a, Image):
        with open_image(a) as opened:
            return diff(opened, b, limit=limit, progress=progress).model_copy(
                update={"a": str(a)} if isinstance(a, str) else {})
    if not isinstance(b, Image):
        with open_image(b) as opened:
            return diff(a, opened, limit=limit, progress=progress).model_copy(
                update={"b": str(b)} if isinstance(b, str) else {})
    walk_a = walk(a, hash_files=True, progress=progress)
    walk_b = walk(b, hash_files=True, progress=progress)
    shared = 0
    for la, lb in zip(a.layers, b.layers, strict=False):
        if la.diff_id is None or la.diff_id != lb.diff_id:
            break
        shared += 1
    files = _files(walk_a.entries, walk_b.entries, limit)
    debs = _versions(debian_packages(walk_a.captured), debian_packages(walk_b.captured))
    dists = _versions(python_distributions(walk_a.entries),
                      python_distributions(walk_b.entries))
    config = _config(runtime_config(a.config), runtime_config(b.config))
    removed, added = _layers(a, walk_a, shared), _layers(b, walk_b, shared)
    identical = not (removed or added or any(files.counts.values()) or config
                     or debs.added or debs.removed or debs.changed
                     or dists.added or dists.removed or dists.changed)
    return ImageDiff(a=f"{a.form}:{a.path}", b=f"{b.form}:{b.path}", digest_a=a.manifest_digest,
                     digest_b=b.manifest_digest, image_id_a=a.config_digest,
                     image_id_b=b.config_digest, identical=identical, shared_layers=shared,
                     layers_removed=removed, layers_added=added, files=files,
                     debian_packages=debs, python_distributions=dists, config=config)
