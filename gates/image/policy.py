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

:class:`ImageSpec` adds what admission needs to bind green to an image: the local image to audit
(``archive``), and containers' simple signing (``requireSignature``, ``keys``, ``signatures``,
``identity``; docs/images.md). Its file references are resolved against the policy file's
directory when the loader passes it as the validation context :data:`POLICY_DIR_CONTEXT`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gates.image.contents import LibraryName
from gates.image.reader import FORMS
from gates.image.signing import is_docker_reference

__all__ = [
    "CHECKS",
    "DEFAULT_ALLOW_TESTS",
    "POLICY_DIR_CONTEXT",
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

#: The validation-context key under which the policy loader passes the policy file's directory
#: (the same string as ``rollout.policy.models.POLICY_DIR``: gates never import rollout).
POLICY_DIR_CONTEXT = "policy_dir"

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
    """``spec.image`` of a rollout policy: the audit budget green's image is held to, and
    the signature that binds green's digest to a trusted key (admission gate ``image``)."""

    archive: str | None = Field(None, min_length=1, description=(
        "Green's image as a local file to audit (oci-archive:PATH, oci:DIR or a path, relative "
        "to the policy file; a docker save archive has no manifest digest to bind). Its "
        "manifest digest must equal the digest green declares, or green is refused as "
        "re-tagged."))
    require_signature: bool = Field(False, description=(
        "Green's image digest must carry a simple-signing signature (atomic container "
        "signature, GPG) by one of keys, for identity, found under signatures."))
    keys: tuple[str, ...] = Field((), description=(
        "Trusted public keys: ASCII-armoured or binary OpenPGP key files (gpg --export "
        "[--armor]), relative to the policy file."))
    signatures: str | None = Field(None, min_length=1, description=(
        "Signature directory in containers' lookaside layout "
        "(DIR/<repository path>@sha256=<hex>/signature-N), relative to the policy file."))
    identity: str | None = Field(None, description=(
        "The docker reference the signature must name (e.g. registry.example/sd/server:1.4); "
        "default: the reference green reports (ROLLOUT_IMAGE_REF)."))

    @field_validator("identity")
    @classmethod
    def _docker_reference(cls, v: str | None) -> str | None:
        if v is not None and not is_docker_reference(v):
            raise ValueError(f"{v!r} is not a docker reference such as reg.example/sd/server:1")
        return v

    @field_validator("archive", "signatures")
    @classmethod
    def _resolve_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        """With the loader's context: relative to the policy file, and it must exist now."""
        if v is None:
            return v
        prefix, sep, rest = v.partition(":")
        form = prefix + sep if sep and prefix in FORMS else ""
        path = _resolve(rest if form else v, info)
        if path is not None and not path.exists():
            raise ValueError(f"{v!r}: {path} does not exist")
        return v if path is None else form + str(path)

    @field_validator("keys")
    @classmethod
    def _resolve_keys(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        out = []
        for key in v:
            path = _resolve(key, info)
            if path is not None and not path.is_file():
                raise ValueError(f"key file {key!r} ({path}) does not exist")
            out.append(key if path is None else str(path))
        return tuple(out)

    @model_validator(mode="after")
    def _signature_needs_keys(self) -> ImageSpec:
        if self.require_signature and (not self.keys or self.signatures is None):
            raise ValueError("requireSignature: true needs keys (trusted public key files) and "
                             "signatures (the signature directory)")
        return self


def _resolve(value: str, info: ValidationInfo) -> Path | None:
    """``value`` against the policy's directory; ``None`` without the loader's context (a
    saved copy or a model built in code keeps its paths as written)."""
    context = info.context if isinstance(info.context, dict) else {}
    if POLICY_DIR_CONTEXT not in context:
        return None
    return (Path(context[POLICY_DIR_CONTEXT]) / value).resolve()


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
