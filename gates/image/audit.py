"""``audit(image, policy) -> AuditReport``: what an image costs, what it ships, what it breaks.

The report holds the identity of the image (manifest digest where the form has one, config
digest = image ID in every form), its pull size (the layer blobs as stored: compressed in OCI
forms, usually uncompressed in a ``docker save`` archive) and unpacked size, each layer with the
``config.history`` entry that made it (``empty_layer`` entries skipped, as ``docker history``
pairs them), the largest files, wasted bytes, the GPU libraries found, and the violations of
:class:`~gates.image.policy.AuditPolicy`. It is a pure function of the image and the policy.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gates.image.checks import config_checks, path_checks, pull_size_check
from gates.image.contents import (
    FoundLibrary,
    debian_packages,
    find_libraries,
    python_distributions,
)
from gates.image.layers import Progress, Walk, walk
from gates.image.policy import AuditPolicy, Violation
from gates.image.reader import Image, ImageRef, open_image

__all__ = [
    "AuditReport",
    "AuditSummary",
    "LayerReport",
    "LibraryReport",
    "PathSize",
    "RuntimeConfig",
    "audit",
    "runtime_config",
]

_COMPRESSED = ("gzip", "zstd", "+xz", "+bzip2")
_FROZEN = ConfigDict(extra="forbid", frozen=True)


class LayerReport(BaseModel):
    """One layer, bottom first, with the build step that made it."""

    model_config = _FROZEN

    index: int
    digest: str
    diff_id: str | None
    media_type: str
    size: int = Field(description="Blob bytes as stored (what a pull transfers).")
    unpacked_size: int
    files: int
    whiteouts: int
    created_by: str | None = None
    created: str | None = None
    comment: str | None = None


class PathSize(BaseModel):
    """A file of the final filesystem and the layer that wrote it."""

    model_config = _FROZEN

    path: str
    size: int
    layer: int


class LibraryReport(BaseModel):
    """A GPU library copy found inside (``path`` is ``python:NAME``/``deb:NAME`` for packages)."""

    model_config = _FROZEN

    name: str
    version: str
    path: str


class RuntimeConfig(BaseModel):
    """What the image runs and as whom (from its config)."""

    model_config = _FROZEN

    user: str
    env: list[str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str


class AuditReport(BaseModel):
    """The whole audit; ``verdict`` is fail when there is any violation."""

    model_config = _FROZEN

    image: str
    form: str
    digest: str | None = Field(description="Manifest digest (none in a docker save archive).")
    image_id: str = Field(description="Config digest: the same in every form of one image.")
    tags: list[str]
    verdict: Literal["pass", "fail"]
    pull_size: int
    pull_size_compressed: bool
    unpacked_size: int
    final_size: int
    files: int
    wasted_bytes: int
    removable_bytes: int
    layers: list[LayerReport]
    largest_paths: list[PathSize]
    libraries: list[LibraryReport]
    debian_packages: int
    python_distributions: int
    config: RuntimeConfig
    violations: list[Violation]


class AuditSummary(BaseModel):
    """What a release baseline keeps of an audit: sizes, the build steps, libraries, user and
    violations, without the file lists (a baseline stays a few KB whatever the image)."""

    model_config = _FROZEN

    digest: str | None
    image_id: str
    pull_size: int
    unpacked_size: int
    final_size: int
    files: int
    wasted_bytes: int
    user: str
    layers: list[str] = Field(description="Each layer's build step (created_by), bottom first.")
    libraries: dict[str, list[str]] = Field(description="GPU library -> versions found.")
    violations: list[str] = Field(description="'check: message' of each violation.")

    @classmethod
    def of(cls, report: AuditReport) -> AuditSummary:
        """The summary of a full audit."""
        libraries: dict[str, list[str]] = {}
        for lib in report.libraries:
            versions = libraries.setdefault(lib.name, [])
            if lib.version not in versions:
                versions.append(lib.version)
        return cls(digest=report.digest, image_id=report.image_id, pull_size=report.pull_size,
                   unpacked_size=report.unpacked_size, final_size=report.final_size,
                   files=report.files, wasted_bytes=report.wasted_bytes,
                   user=report.config.user, layers=[ly.created_by or ly.digest
                                                    for ly in report.layers],
                   libraries={k: sorted(v) for k, v in sorted(libraries.items())},
                   violations=[f"{v.check}: {v.message}" for v in report.violations])

    def changes(self, new: AuditSummary) -> dict[str, Any]:
        """What differs from ``self`` (the older release) to ``new``: ``[old, new]`` per
        scalar field, ``added``/``removed`` for layers and violations, ``[old, new]``
        versions per library. Empty when nothing differs."""
        out: dict[str, Any] = {}
        for key in ("digest", "image_id", "pull_size", "unpacked_size", "final_size", "files",
                    "wasted_bytes", "user"):
            old, now = getattr(self, key), getattr(new, key)
            if old != now:
                out[key] = [old, now]
        for key in ("layers", "violations"):
            old_items, new_items = getattr(self, key), getattr(new, key)
            added = [x for x in new_items if x not in old_items]
            removed = [x for x in old_items if x not in new_items]
            if added or removed:
                out[key] = {"added": added, "removed": removed}
        libraries = {name: [self.libraries.get(name), new.libraries.get(name)]
                     for name in sorted(self.libraries.keys() | new.libraries.keys())
                     if self.libraries.get(name) != new.libraries.get(name)}
        if libraries:
            out["libraries"] = libraries
        return out


def runtime_config(config: Mapping[str, Any]) -> RuntimeConfig:
    """User, env, entrypoint, cmd and workdir of an image config."""
    runtime = config.get("config") or {}
    return RuntimeConfig(user=str(runtime.get("User") or ""),
                         env=[str(e) for e in runtime.get("Env") or []],
                         entrypoint=[str(e) for e in runtime.get("Entrypoint") or []],
                         cmd=[str(e) for e in runtime.get("Cmd") or []],
                         workdir=str(runtime.get("WorkingDir") or ""))


def _history(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The history entries that made a layer, in layer order (``empty_layer`` ones skipped)."""
    history = config.get("history") or []
    return [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]


def _layers(image: Image, result: Walk) -> list[LayerReport]:
    history = _history(image.config)
    out = []
    for layer, stats in zip(image.layers, result.layers, strict=True):
        made = history[layer.index] if layer.index < len(history) else {}
        media = layer.media_type
        if image.form == "docker-archive" and stats.digest != layer.diff_id:
            media += ".gzip"  # a docker-archive layer stored compressed
        out.append(LayerReport(
            index=layer.index, digest=stats.digest, diff_id=layer.diff_id, media_type=media,
            size=layer.size, unpacked_size=stats.bytes, files=stats.files,
            whiteouts=stats.whiteouts, created_by=_str(made.get("created_by")),
            created=_str(made.get("created")), comment=_str(made.get("comment"))))
    return out


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _largest(result: Walk, n: int) -> list[PathSize]:
    files = ((e.size, p, e.layer) for p, e in result.entries.items() if e.kind == "f")
    return [PathSize(path=p, size=s, layer=i) for s, p, i in heapq.nlargest(n, files)]


def audit(image: Image | ImageRef | str, policy: AuditPolicy | None = None, *,
          largest: int = 10, progress: Progress | None = None) -> AuditReport:
    """Audit ``image`` against ``policy`` (None: the default policy, no budget, no pins).

    ``image`` is an opened :class:`Image`, or a reference (``oci-archive:P``,
    ``docker-archive:P``, ``oci:DIR`` or a path) opened here; raises
    :class:`~gates.image.reader.ImageError` when it is not a readable image.
    """
    if not isinstance(image, Image):
        with open_image(image) as opened:
            report = audit(opened, policy, largest=largest, progress=progress)
        return report.model_copy(update={"image": str(image)}) if isinstance(image, str) \
            else report
    policy = policy or AuditPolicy()
    result = walk(image, progress=progress)
    layers = _layers(image, result)
    compressed = bool(layers) and all(_is_compressed(layer) for layer in layers)
    pull_size = sum(layer.size for layer in layers)
    debs = debian_packages(result.captured)
    dists = python_distributions(result.entries)
    libraries = find_libraries(result.entries, debs, dists)
    violations = [
        *pull_size_check(pull_size, compressed, policy),
        *path_checks(result, policy),
        *config_checks(image.config, result.captured, libraries, policy),
    ]
    return AuditReport(
        image=f"{image.form}:{image.path}", form=image.form,
        digest=image.manifest_digest, image_id=image.config_digest, tags=list(image.tags),
        verdict="fail" if violations else "pass", pull_size=pull_size,
        pull_size_compressed=compressed, unpacked_size=result.unpacked_size,
        final_size=result.final_size,
        files=sum(1 for e in result.entries.values() if e.kind == "f"),
        wasted_bytes=result.wasted_bytes,
        removable_bytes=result.unpacked_size - result.final_size, layers=layers,
        largest_paths=_largest(result, largest), libraries=_library_reports(libraries),
        debian_packages=len(debs), python_distributions=len(dists),
        config=runtime_config(image.config), violations=violations)


def _is_compressed(layer: LayerReport) -> bool:
    return any(marker in layer.media_type for marker in _COMPRESSED)


def _library_reports(libraries: Sequence[FoundLibrary]) -> list[LibraryReport]:
    return [LibraryReport(name=lib.name, version=lib.version, path=lib.path) for lib in libraries]
