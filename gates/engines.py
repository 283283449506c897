"""TensorRT engines as artifacts: the engine manifest and its verification against a runtime.

Why: a TensorRT engine (plan) is valid only for the TensorRT release that built it and the GPU
architecture (compute capability) it was built on. Shipped with an image built against another
matrix, ORT's TensorRT EP (or any TensorRT runtime) refuses to deserialize it and builds a new
one at load: minutes of start-up, possibly other tactics, and nothing fails. The talk's remedy:
"pre-built TensorRT engines per model and resolution; plans are artifacts, not runtime
guesses". The manifest says what each engine is; :func:`verify_engines` checks every file
(present, same SHA-256) and every engine's TensorRT and compute capability against a capability
snapshot of the runtime, and says for each mismatch that the engine would be rebuilt at load.

Manifest (JSON or YAML; ``path`` relative to the manifest's directory)::

    {"engines": [{"model": "sd15", "component": "unet", "resolution": "512x512",
                  "path": "unet-512.plan", "sha256": "<64 hex>", "tensorrt": "10.3.0.26",
                  "computeCapability": "9.0", "precision": "fp16"}]}

An engine built during the start-up self-test (the engine cache gained a file, or the log scan
of :mod:`gates.capability.logscan` saw an ``engine-rebuild`` phrase) is a violation too:
:func:`startup_build_violations`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from gates.capability.logscan import LogHit
from gates.capability.snapshot import CapabilitySnapshot
from gates.capability.spec import Violation
from gates.verdict import Verdict

__all__ = [
    "MANIFEST_MAX_BYTES",
    "EngineEntry",
    "EngineManifest",
    "EngineReport",
    "EngineResult",
    "ManifestError",
    "Precision",
    "RuntimeTarget",
    "cache_listing",
    "engines_built",
    "load_manifest",
    "runtime_target",
    "sha256_file",
    "startup_build_violations",
    "tensorrt_compatible",
    "verify_engines",
    "verify_manifest",
]

#: A manifest lists engines, it does not hold them: anything larger is not a manifest.
MANIFEST_MAX_BYTES: Final = 1 << 20
REBUILD_NOTE: Final = "it would be rebuilt at load (minutes of start-up, possibly other tactics)"
Precision = Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8", "fp4", "best"]


class ManifestError(ValueError):
    """The manifest cannot be read or is not a valid engine manifest (bad input)."""


class EngineEntry(BaseModel):
    """One engine file and what it was built for (camelCase keys; snake_case accepted)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True)

    model: str = Field(min_length=1)
    component: str = Field(min_length=1, description="unet, vae_decoder, text_encoder...")
    resolution: str = Field(pattern=r"^[1-9][0-9]*x[1-9][0-9]*$", description="WxH, e.g. 512x512")
    path: str = Field(min_length=1, description="relative to the manifest's directory")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tensorrt: str = Field(pattern=r"^[0-9]+(\.[0-9]+)+$", description="the building TensorRT")
    compute_capability: str = Field(pattern=r"^[0-9]+\.[0-9]+$")
    precision: Precision

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"{v!r}: engine paths are relative to the manifest, without '..'")
        return v

    @property
    def label(self) -> str:
        """``sd15/unet@512x512 (fp16)``: how reports name the engine."""
        return f"{self.model}/{self.component}@{self.resolution} ({self.precision})"


class EngineManifest(BaseModel):
    """The engines shipped with an image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engines: tuple[EngineEntry, ...] = Field(min_length=1)

    @field_validator("engines")
    @classmethod
    def _unique(cls, v: tuple[EngineEntry, ...]) -> tuple[EngineEntry, ...]:
        seen: set[tuple[str, ...]] = set()
        for e in v:
            key = (e.model, e.component, e.resolution, e.precision)
            if key in seen:
                raise ValueError(f"{e.label} is listed twice")
            seen.add(key)
        return v

    def to_json(self) -> dict[str, object]:
        """The manifest document (camelCase keys), as :func:`load_manifest` reads it."""
        return self.model_dump(mode="json", by_alias=True)


def load_manifest(path: Path) -> EngineManifest:
    """Read a JSON or YAML engine manifest (at most :data:`MANIFEST_MAX_BYTES`).

    Raises:
        ManifestError: unreadable, too large, not JSON/YAML, or not a valid manifest.
    """
    try:
        with path.open("rb") as f:
            raw = f.read(MANIFEST_MAX_BYTES + 1)
    except OSError as e:
        raise ManifestError(f"{path}: {e}") from e
    if len(raw) > MANIFEST_MAX_BYTES:
        raise ManifestError(f"{path}: larger than {MANIFEST_MAX_BYTES} bytes: not a manifest")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise ManifestError(f"{path}: not JSON or YAML: {e}") from e
    try:
        return EngineManifest.model_validate(data)
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, x['loc'])) or '(top)'}: {x['msg']}"
                          for x in e.errors())
        raise ManifestError(f"{path}: not a valid engine manifest: {where}") from e


def sha256_file(path: Path) -> str:
    """The file's SHA-256, streamed (engines are gigabytes).

    Raises:
        OSError: the file cannot be read.
    """
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class RuntimeTarget(BaseModel):
    """What the engines must have been built for, read from a capability snapshot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensorrt: str | None
    compute_capabilities: tuple[str, ...]
    note: str | None = Field(default=None, description="why a value is missing")


def runtime_target(snapshot: CapabilitySnapshot) -> RuntimeTarget:
    """The TensorRT version and the GPUs' compute capabilities in ``snapshot``."""
    host = snapshot.host
    gpus = host.gpus if host is not None else ()
    ccs = tuple(sorted({g.compute_capability for g in gpus if g.compute_capability}))
    note = None
    if not ccs:
        fact = snapshot.probe("host")
        why = (host.nvml_error if host else None) or (fact.error if fact else None)
        note = f"no GPU compute capability in the snapshot ({why or 'no GPU listed'})"
    return RuntimeTarget(tensorrt=snapshot.versions.tensorrt, compute_capabilities=ccs, note=note)


def tensorrt_compatible(built: str, runtime: str) -> bool:
    """Same TensorRT release: major.minor.patch equal (the build number is ignored; a
    version with only major.minor matches on those two)."""
    a, b = built.split(".")[:3], runtime.split(".")[:3]
    n = min(len(a), len(b))
    return n >= 2 and a[:n] == b[:n]


class EngineResult(BaseModel):
    """One engine's verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineEntry
    file: str
    ok: bool
    violations: tuple[Violation, ...] = ()


class EngineReport(BaseModel):
    """Every engine's verdict, against one runtime."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: str
    runtime: RuntimeTarget
    engines: tuple[EngineResult, ...]

    @property
    def violations(self) -> tuple[Violation, ...]:
        return tuple(v for e in self.engines for v in e.violations)

    @property
    def verdict(self) -> Verdict:
        """``pass`` when every engine matches, else ``fail``."""
        return Verdict.FAIL if self.violations else Verdict.PASS

    def to_json(self) -> dict[str, object]:
        """``{"verdict", "manifest", "runtime", "engines": [...], "violations": [...]}``."""
        body = self.model_dump(mode="json", by_alias=True)
        return {"verdict": self.verdict.value, **body,
                "violations": [v.model_dump(mode="json") for v in self.violations]}


def _check_file(e: EngineEntry, file: Path, hasher: Callable[[Path], str]) -> Iterator[Violation]:
    try:
        digest = hasher(file)
    except FileNotFoundError:
        yield Violation(check="engines.missing", expected=e.path, observed=None,
                        message=f"{e.label}: {file} is missing; {REBUILD_NOTE}")
        return
    except OSError as e2:
        yield Violation(check="engines.unreadable", expected=e.path, observed=str(e2),
                        message=f"{e.label}: {file} cannot be read ({e2}); {REBUILD_NOTE}")
        return
    if digest != e.sha256:
        yield Violation(check="engines.sha256", expected=e.sha256, observed=digest,
                        message=f"{e.label}: {file} has SHA-256 {digest}, the manifest says "
                        f"{e.sha256}: not the engine that was built and tested")


def _check_target(e: EngineEntry, rt: RuntimeTarget) -> Iterator[Violation]:
    if rt.tensorrt is None:
        yield Violation(check="engines.tensorrt", expected=e.tensorrt, observed=None,
                        message=f"{e.label}: built by TensorRT {e.tensorrt}; the snapshot "
                        f"shows no TensorRT in the runtime: the engine cannot be loaded")
    elif not tensorrt_compatible(e.tensorrt, rt.tensorrt):
        yield Violation(check="engines.tensorrt", expected=e.tensorrt, observed=rt.tensorrt,
                        message=f"{e.label}: built by TensorRT {e.tensorrt}, the runtime has "
                        f"TensorRT {rt.tensorrt}; {REBUILD_NOTE}")
    if not rt.compute_capabilities:
        yield Violation(check="engines.compute_capability", expected=e.compute_capability,
                        observed=None, message=f"{e.label}: built for compute capability "
                        f"{e.compute_capability}; {rt.note}")
    elif any(cc != e.compute_capability for cc in rt.compute_capabilities):
        got = ", ".join(rt.compute_capabilities)
        yield Violation(check="engines.compute_capability", expected=e.compute_capability,
                        observed=list(rt.compute_capabilities),
                        message=f"{e.label}: built for compute capability "
                        f"{e.compute_capability}, the runtime's GPUs are {got}; {REBUILD_NOTE}")


def verify_engines(manifest: EngineManifest, base_dir: Path, snapshot: CapabilitySnapshot, *,
                   hasher: Callable[[Path], str] = sha256_file,
                   source: str = "manifest") -> EngineReport:
    """Check every engine of ``manifest`` (files under ``base_dir``) against ``snapshot``."""
    rt = runtime_target(snapshot)
    results = []
    for e in manifest.engines:
        file = base_dir / e.path
        found = [*_check_file(e, file, hasher), *_check_target(e, rt)]
        results.append(EngineResult(engine=e, file=str(file), ok=not found,
                                    violations=tuple(found)))
    return EngineReport(manifest=source, runtime=rt, engines=tuple(results))


def verify_manifest(path: Path, snapshot: CapabilitySnapshot) -> EngineReport:
    """Load the manifest at ``path`` and verify it against ``snapshot``: what admission calls
    when a policy names an engine manifest (its violations join the capability gate's).

    Raises:
        ManifestError: the manifest cannot be read or is invalid (bad input).
    """
    manifest = load_manifest(path)
    return verify_engines(manifest, path.parent, snapshot, source=str(path))


def cache_listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Engine-cache files under ``directory``: relative name -> (size, mtime_ns); ``{}`` when
    the directory does not exist."""
    if not directory.is_dir():
        return {}
    return {str(p.relative_to(directory)): (st.st_size, st.st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() and (st := p.stat())}


def engines_built(before: Mapping[str, tuple[int, int]],
                  after: Mapping[str, tuple[int, int]]) -> list[str]:
    """Cache files that appeared or changed between two :func:`cache_listing` calls."""
    return sorted(name for name, stat in after.items() if before.get(name) != stat)


def startup_build_violations(log_hits: Sequence[LogHit] = (),
                             built: Sequence[str] = ()) -> list[Violation]:
    """An engine built during the start-up self-test: a violation in production.

    ``log_hits`` are the log scan's hits (only ``engine-rebuild`` ones count); ``built`` the
    engine-cache files that appeared or changed during start-up (:func:`engines_built`).
    """
    out = [Violation(check="engines.built_at_startup", expected="no engine built at start-up",
                     observed=f"{h.source or 'log'}:{h.line}: {h.text}",
                     message=f"TensorRT built an engine at start-up ({h.phrase}): the shipped "
                     "engines do not match this runtime")
           for h in log_hits if h.category == "engine-rebuild"]
    if built:
        out.append(Violation(check="engines.built_at_startup",
                             expected="no engine built at start-up", observed=list(built),
                             message=f"the TensorRT engine cache gained {', '.join(built)} "
                             "during start-up: engines were built, not loaded"))
    return out
