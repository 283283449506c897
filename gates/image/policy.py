"""What an image audit enforces (:class:`AuditPolicy`) and what it reports (:class:`Violation`).

``AuditPolicy`` uses the policy language's conventions (camelCase keys, unknown keys refused), so
a rollout policy can embed it as ``spec.image``::

    image:
      maxPullSize: 2GB
      gpu: true
      pins: {cuda: "12.4", cudnn: "9", onnxruntime: "1.18"}
      allowWeights: ["opt/models/**"]
      allow: {setuid: ["usr/bin/su"]}
      skip: [tests]

Paths are image paths without the leading ``/``; patterns are globs where ``*`` stays within one
path segment, ``**`` crosses segments, and a pattern also matches everything below what it names.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from gates.image.contents import LibraryName

__all__ = [
    "CHECKS",
    "DEFAULT_ALLOW_TESTS",
    "AuditPolicy",
    "CheckName",
    "ImageSpec",
    "Violation",
    "glob_match",
]

CheckName = Literal[
    "pull-size", "compilers", "headers", "package-caches", "vcs", "notebooks", "tests",
    "weights", "private-keys", "setuid", "root-user", "gpu-env", "pins",
]
CHECKS: tuple[CheckName, ...] = (
    "pull-size", "compilers", "headers", "package-caches", "vcs", "notebooks", "tests",
    "weights", "private-keys", "setuid", "root-user", "gpu-env", "pins",
)
#: Test directories that belong to installed distributions or the interpreter: not the image
#: author's own tests, and removing them breaks the distributions' RECORD (see docs/images.md).
DEFAULT_ALLOW_TESTS: tuple[str, ...] = (
    "**/site-packages/**", "**/dist-packages/**", "usr/lib/python3*/**",
    "usr/local/lib/python3*/**",
)

_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True)


class AuditPolicy(BaseModel):
    """The budget and exceptions an image is audited against (all optional)."""

    model_config = _CONFIG

    max_pull_size: ByteSize | None = Field(None, description=(
        "Largest compressed size of the layers (what a pull transfers), e.g. 2GB or 1.5GiB."))
    gpu: bool = Field(False, description=(
        "The image serves a GPU: NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES "
        "(compute,utility) must be set in its environment."))
    pins: dict[LibraryName, str] = Field(default_factory=dict, description=(
        "Library -> version prefix every copy inside must match (cuda, cudnn, tensorrt, "
        "onnxruntime); a pinned library that is absent is a violation."))
    allow_weights: tuple[str, ...] = Field((), description=(
        "Where model weights (*.safetensors, *.ckpt, *.onnx, *.plan, ...) may live."))
    allow_tests: tuple[str, ...] = Field(DEFAULT_ALLOW_TESTS, description=(
        "Where directories named tests/ or test/ are accepted."))
    allow: dict[CheckName, tuple[str, ...]] = Field(default_factory=dict, description=(
        "Per check, paths that are accepted (e.g. setuid: [usr/bin/su])."))
    skip: tuple[CheckName, ...] = Field((), description="Checks not run.")

    @field_validator("pins")
    @classmethod
    def _pins_are_versions(cls, pins: dict[LibraryName, str]) -> dict[LibraryName, str]:
        for name, version in pins.items():
            if not re.fullmatch(r"\d+(?:\.\d+)*", version):
                raise ValueError(f"pin {name}={version!r}: want a version such as 12.4")
        return pins

    @field_validator("allow_weights", "allow_tests")
    @classmethod
    def _globs(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(p.strip().lstrip("/") for p in patterns if p.strip())

    def allowed(self, check: CheckName, path: str) -> bool:
        """Whether ``path`` is an accepted exception to ``check``."""
        extra = self.allow_weights if check == "weights" else (
            self.allow_tests if check == "tests" else ())
        return any(glob_match(p, path) for p in (*self.allow.get(check, ()), *extra))


class ImageSpec(AuditPolicy):
    """``spec.image`` of a rollout policy: the audit budget green's image is held to."""


class Violation(BaseModel):
    """One failed check: which, why, and the paths (at most 50 listed; ``count`` has all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: CheckName
    message: str
    paths: list[str] = Field(default_factory=list)
    count: int = 0
    bytes: int = 0


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    pattern = pattern.strip().strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            c = pattern[i]
            out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
            i += 1
    return re.compile("".join(out) + "(?:/.*)?")


def glob_match(pattern: str, path: str) -> bool:
    """``opt/models`` matches ``opt/models/unet.onnx``; ``**/*.onnx`` any ``.onnx``."""
    return _glob_regex(pattern).fullmatch(path) is not None
