"""What an image's filesystem says it contains: Debian packages, Python distributions, users,
and the GPU libraries (CUDA runtime, cuDNN, TensorRT, ONNX Runtime) with their versions.

All of it is read from the walk's per-path metadata and its few captured small files:
``var/lib/dpkg/status`` (and distroless ``var/lib/dpkg/status.d/*``), ``etc/passwd``, and the
names of ``*.dist-info`` / ``*.egg-info`` directories (``name-version.dist-info`` is the wheel
spec's own spelling of a distribution and its version, so METADATA need not be read).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from gates.image.layers import Entry

__all__ = [
    "LIBRARIES",
    "FoundLibrary",
    "LibraryName",
    "debian_packages",
    "find_libraries",
    "passwd_uid",
    "python_distributions",
    "version_matches",
]

LibraryName = Literal["cuda", "cudnn", "tensorrt", "onnxruntime"]
LIBRARIES: tuple[LibraryName, ...] = ("cuda", "cudnn", "tensorrt", "onnxruntime")

_VERSION = r"(\d+(?:\.\d+)*)"
_SONAMES: dict[LibraryName, re.Pattern[str]] = {
    "cuda": re.compile(rf"libcudart\.so\.{_VERSION}$"),
    "cudnn": re.compile(rf"libcudnn\.so\.{_VERSION}$"),
    "tensorrt": re.compile(rf"libnvinfer\.so\.{_VERSION}$"),
    "onnxruntime": re.compile(rf"libonnxruntime\.so\.{_VERSION}$"),
}
_DISTS: dict[LibraryName, re.Pattern[str]] = {
    "cuda": re.compile(r"nvidia-cuda-runtime-cu\d+$"),
    "cudnn": re.compile(r"nvidia-cudnn-cu\d+$"),
    "tensorrt": re.compile(r"tensorrt(?:-cu\d+)?(?:-libs)?$"),
    "onnxruntime": re.compile(r"onnxruntime(?:-gpu|-training|-directml)?$"),
}
_DEBS: dict[LibraryName, re.Pattern[str]] = {
    "cuda": re.compile(r"cuda-cudart-\d+-\d+$"),
    "cudnn": re.compile(r"libcudnn\d+(?:-cuda-\d+)?$"),
    "tensorrt": re.compile(r"libnvinfer\d+$"),
    "onnxruntime": re.compile(r"libonnxruntime\d*$"),
}
_DIST_DIR = re.compile(r"([^/]+)\.(dist-info|egg-info)$")


@dataclass(frozen=True, order=True)
class FoundLibrary:
    """One GPU library copy: which library, its version, and where the version was read."""

    name: LibraryName
    version: str
    path: str


def debian_packages(captured: Mapping[str, bytes]) -> dict[str, str]:
    """Installed Debian packages -> version, from ``var/lib/dpkg/status`` (and ``status.d``)."""
    out: dict[str, str] = {}
    for path, data in captured.items():
        if path == "var/lib/dpkg/status" or path.startswith("var/lib/dpkg/status.d/"):
            for fields in _paragraphs(data.decode("utf-8", "replace")):
                status = fields.get("status", "install ok installed")
                if "Package" in fields and status.endswith(" installed"):
                    out[fields["Package"]] = fields.get("Version", "")
    return out


def _paragraphs(text: str) -> Iterable[dict[str, str]]:
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1] not in (" ", "\t", "") and ":" in line:
                key, _, value = line.partition(":")
                fields[key if key != "Status" else "status"] = value.strip()
        if fields:
            yield fields


def python_distributions(paths: Iterable[str]) -> dict[str, str]:
    """Installed Python distributions (PEP 503 names) -> version(s), from dist-info names."""
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    for path in paths:
        if "-info" not in path:
            continue
        for i, segment in enumerate(path.split("/")):
            match = _DIST_DIR.match(segment)
            if match is None:
                continue
            key = "/".join(path.split("/")[: i + 1])
            if key not in seen:
                seen.add(key)
                name, _, version = match.group(1).partition("-")
                version = version.split("-")[0]  # egg-info: name-version-py3.11
                found.setdefault(_canonical(name), set()).add(version)
            break
    return {name: ",".join(sorted(v for v in versions if v) or [""])
            for name, versions in sorted(found.items())}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def passwd_uid(captured: Mapping[str, bytes], user: str) -> int | None:
    """The uid of ``user`` (a name or a number) in the image's ``/etc/passwd``; None: unknown."""
    if user.isdigit():
        return int(user)
    for line in captured.get("etc/passwd", b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] == user and parts[2].isdigit():
            return int(parts[2])
    return None


def find_libraries(entries: Mapping[str, Entry], debs: Mapping[str, str],
                   dists: Mapping[str, str]) -> list[FoundLibrary]:
    """Every copy of a CUDA runtime, cuDNN, TensorRT or ONNX Runtime, with its version."""
    found: set[FoundLibrary] = set()
    for path, entry in entries.items():
        if entry.kind == "d":
            continue
        base = path.rpartition("/")[2]
        if not base.startswith("lib"):
            continue
        for name, pattern in _SONAMES.items():
            match = pattern.match(base)
            if match:
                found.add(FoundLibrary(name, match.group(1), path))
    for table, source, kind in ((_DISTS, dists, "python"), (_DEBS, debs, "deb")):
        for package, version in source.items():
            for name, pattern in table.items():
                match = re.match(_VERSION, version.split(":")[-1])
                if pattern.match(package) and match:
                    found.add(FoundLibrary(name, match.group(1), f"{kind}:{package}"))
    return sorted(found)


def version_matches(found: str, pin: str) -> bool:
    """``12.4.127`` matches the pin ``12.4``; a bare soname major (``12``) matches ``12.4``."""
    a, b = found.split("."), pin.split(".")
    n = min(len(a), len(b))
    return a[:n] == b[:n]
