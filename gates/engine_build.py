"""Build TensorRT engines from ONNX files, and write the engine manifest that describes them.

Why here: an engine is an artifact of the version matrix (TensorRT release x GPU
architecture), so whoever builds it must record what it was built with, next to its hash, in
the manifest that :func:`gates.engines.verify_engines` checks at admission. Building needs
TensorRT (PyPI ``tensorrt``) and an NVIDIA GPU; the manifest writing is pure and runs anywhere.

TensorRT's Python API (``Builder`` -> network -> ``OnnxParser`` -> ``BuilderConfig`` with one
optimization profile per dynamic input -> ``build_serialized_network``) is imported inside
:func:`build_engine` only.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gates.engines import EngineEntry, EngineManifest, Precision, sha256_file

__all__ = [
    "BuildError",
    "BuildRequest",
    "BuiltEngine",
    "Shape",
    "build_engine",
    "buildable",
    "manifest_entry",
    "merge_entry",
    "parse_shape",
    "relative_engine_path",
    "tensorrt_unavailable",
    "write_manifest",
]

#: An input's (min, opt, max) dimensions for the optimization profile.
Shape = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
_BUILDABLE: frozenset[str] = frozenset({"fp32", "tf32", "fp16", "bf16", "int8", "fp8"})


class BuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build the engine (its errors in the message)."""


def parse_shape(text: str) -> tuple[str, Shape]:
    """``sample=1x4x64x64:2x4x64x64:2x4x64x64`` (or one ``DIMS`` for min = opt = max).

    Raises:
        ValueError: not ``NAME=DIMS[:DIMS:DIMS]`` with positive integer dimensions.
    """
    name, sep, dims = text.partition("=")
    parts = dims.split(":")
    if not sep or not name.strip() or len(parts) not in (1, 3):
        raise ValueError(f"{text!r}: expected NAME=DIMS or NAME=MIN:OPT:MAX (DIMS like 2x4x64x64)")
    try:
        shapes = [tuple(int(d) for d in p.split("x")) for p in parts]
    except ValueError:
        raise ValueError(f"{text!r}: dimensions must be integers like 2x4x64x64") from None
    if any(d < 1 for s in shapes for d in s) or len({len(s) for s in shapes}) != 1:
        raise ValueError(f"{text!r}: dimensions must be >= 1 and of the same rank")
    lo, opt, hi = (shapes * 3)[:3] if len(shapes) == 1 else shapes
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise ValueError(f"{text!r}: need MIN <= OPT <= MAX in every dimension")
    return name.strip(), (lo, opt, hi)


@dataclass(frozen=True)
class BuildRequest:
    """One engine to build."""

    onnx: Path
    output: Path
    precision: Precision = "fp16"
    shapes: Mapping[str, Shape] = field(default_factory=dict)
    workspace_bytes: int | None = None
    device: int = 0


@dataclass(frozen=True)
class BuiltEngine:
    """An engine file and what built it."""

    path: Path
    tensorrt: str
    compute_capability: str


def tensorrt_unavailable() -> str | None:
    """Why engines cannot be built here (no TensorRT, no NVIDIA GPU), or None."""
    if importlib.util.find_spec("tensorrt") is None:
        return ("TensorRT is not installed: `pip install tensorrt` on a machine with an NVIDIA "
                "GPU; engines are built on the GPU architecture they will run on")
    if _compute_capability(0) is None:
        return "no NVIDIA GPU visible (NVML lists none): engines are built on a GPU"
    return None


def _compute_capability(device: int) -> str | None:
    from gates.capability.host import probe_host

    gpus = probe_host().gpus
    return gpus[device].compute_capability if device < len(gpus) else None


def _network(trt: Any, builder: Any, logger: Any, onnx: Path) -> tuple[Any, Any]:
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx}: TensorRT's ONNX parser failed: {errors}")
    return network, parser


def _profile(builder: Any, network: Any, shapes: Mapping[str, Shape]) -> Any:
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        if inp.name in shapes:
            profile.set_shape(inp.name, *shapes[inp.name])
        elif any(d < 0 for d in inp.shape):
            raise BuildError(f"input {inp.name!r} has dynamic dimensions {tuple(inp.shape)}: "
                             f"give --shape {inp.name}=MIN:OPT:MAX")
    return profile


def build_engine(req: BuildRequest) -> BuiltEngine:
    """Build one serialized engine with TensorRT's Python API and write it to ``req.output``
    (atomically: a crashed build leaves no half-written plan).

    Raises:
        BuildError: TensorRT missing, no GPU, parse or build failure.
    """
    if (why := tensorrt_unavailable()) is not None:
        raise BuildError(why)
    trt: Any = importlib.import_module("tensorrt")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _network(trt, builder, logger, req.onnx)
    config = builder.create_builder_config()
    if req.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, req.workspace_bytes)
    flag = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8", "fp8": "FP8", "tf32": "TF32"}
    if req.precision in flag:
        config.set_flag(getattr(trt.BuilderFlag, flag[req.precision]))
    config.add_optimization_profile(_profile(builder, network, req.shapes))
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{req.onnx}: TensorRT could not build the engine (see its log)")
    req.output.parent.mkdir(parents=True, exist_ok=True)
    partial = req.output.with_name(req.output.name + ".partial")
    partial.write_bytes(bytes(plan))
    partial.replace(req.output)
    cc = _compute_capability(req.device)
    if cc is None:
        raise BuildError(f"GPU {req.device}: NVML gives no compute capability")
    return BuiltEngine(path=req.output, tensorrt=trt.__version__, compute_capability=cc)


def relative_engine_path(manifest_path: Path, engine: Path) -> str:
    """``engine`` relative to the manifest's directory, POSIX-style.

    Raises:
        ValueError: the engine is not under the manifest's directory (the manifest ships with
            its engines, so their paths are relative to it).
    """
    base = manifest_path.resolve().parent
    try:
        return engine.resolve().relative_to(base).as_posix()
    except ValueError:
        raise ValueError(f"{engine} is not under {base}, the manifest's directory") from None


def manifest_entry(manifest_path: Path, built: BuiltEngine, *, model: str, component: str,
                   resolution: str, precision: Precision) -> EngineEntry:
    """The manifest entry of a built engine: relative path, streamed SHA-256, what built it.

    Raises:
        ValueError: the engine is outside the manifest's directory or an invalid field.
        OSError: the engine file cannot be read.
    """
    return EngineEntry(
        model=model, component=component, resolution=resolution,
        path=relative_engine_path(manifest_path, built.path), sha256=sha256_file(built.path),
        tensorrt=built.tensorrt, compute_capability=built.compute_capability,
        precision=precision,
    )


def merge_entry(manifest: EngineManifest | None, entry: EngineEntry) -> EngineManifest:
    """``manifest`` with ``entry`` added, replacing the entry for the same model, component,
    resolution and precision (a rebuild)."""
    key = (entry.model, entry.component, entry.resolution, entry.precision)
    kept = [e for e in (manifest.engines if manifest else ())
            if (e.model, e.component, e.resolution, e.precision) != key]
    return EngineManifest(engines=(*kept, entry))


def write_manifest(path: Path, manifest: EngineManifest) -> None:
    """Write ``manifest`` to ``path`` atomically: YAML for ``.yaml``/``.yml``, else JSON.

    Raises:
        OSError: the file cannot be written.
    """
    doc = manifest.to_json()
    if path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(doc, sort_keys=False)
    else:
        text = json.dumps(doc, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def buildable(precision: str) -> bool:
    """Whether ``build_engine`` can set a builder flag for ``precision``."""
    return precision in _BUILDABLE
