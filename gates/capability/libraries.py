"""Library probe: versions of the CUDA runtime, cuDNN, cuBLAS and TensorRT actually loadable.

Why load rather than read package metadata: what matters is the library the dynamic loader
finds (system path or a pip ``nvidia-*`` wheel), and each library reports its own version
through a call that needs no GPU (``cudaRuntimeGetVersion``, ``cudnnGetVersion``,
``cublasLtGetVersion``, ``getInferLibVersion``). Python distribution versions of the stack
are recorded too, because two ORT wheels installed side by side (``onnxruntime`` shadowing
``onnxruntime-gpu``) is itself a classic cause of CPU fallback.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from gates.capability.snapshot import LibraryName, LibraryVersion

__all__ = [
    "STACK_DISTRIBUTIONS",
    "decode_cublas",
    "decode_cudart",
    "decode_cudnn",
    "decode_tensorrt",
    "probe_libraries",
    "probe_python_packages",
]

#: Python distributions whose presence and version shape the GPU path.
STACK_DISTRIBUTIONS = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "tensorrt",
    "xformers",
    "diffusers",
    "transformers",
    "triton",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cudnn-cu12",
    "nvidia-cublas-cu12",
    "nvidia-cuda-runtime",
    "nvidia-cudnn-cu13",
    "nvidia-cublas",
)


def decode_cudart(v: int) -> str:
    """``cudaRuntimeGetVersion``: 1000*major + 10*minor (12040 -> ``12.4``)."""
    return f"{v // 1000}.{v % 1000 // 10}"


def decode_cudnn(v: int) -> str:
    """``cudnnGetVersion``: cuDNN 9 uses 10000*major + 100*minor + patch, cuDNN <= 8 1000*major."""
    if v >= 90000:
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"


def decode_cublas(v: int) -> str:
    """``cublasLtGetVersion``: 10000*major + 100*minor + patch (120402 -> ``12.4.2``)."""
    return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"


def decode_tensorrt(v: int) -> str:
    """``getInferLibVersion``: TensorRT >= 10 uses 10000*major, older 1000*major."""
    if v >= 100000:
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"


def _call_int_out(fn: Any) -> int:
    """``cudaError_t f(int*)``: the version through an out-parameter."""
    out = ctypes.c_int(0)
    fn.restype = ctypes.c_int
    status = fn(ctypes.byref(out))
    if status != 0:
        raise OSError(f"returned status {status}")
    return out.value


def _call_returning(fn: Any) -> int:
    """``size_t f(void)`` / ``int32_t f(void)``: the version as the return value."""
    fn.restype = ctypes.c_size_t
    return int(fn())


@dataclass(frozen=True)
class _NativeLib:
    name: LibraryName
    sonames: tuple[str, ...]
    symbol: str
    call: Callable[[Any], int]
    decode: Callable[[int], str]


_NATIVE = (
    _NativeLib(
        "cudart",
        ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"),
        "cudaRuntimeGetVersion",
        _call_int_out,
        decode_cudart,
    ),
    _NativeLib(
        "cudnn",
        ("libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"),
        "cudnnGetVersion",
        _call_returning,
        decode_cudnn,
    ),
    _NativeLib(
        "cublas",
        ("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"),
        "cublasLtGetVersion",
        _call_returning,
        decode_cublas,
    ),
    _NativeLib(
        "tensorrt",
        ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"),
        "getInferLibVersion",
        _call_returning,
        decode_tensorrt,
    ),
)


def _candidates(soname: str) -> list[str]:
    """The soname for the system loader, then copies shipped in pip wheels on ``sys.path``."""
    found = [soname]
    for entry in sys.path:
        root = Path(entry)
        for sub in ("nvidia", "tensorrt_libs"):
            base = root / sub
            if base.is_dir():
                found.extend(str(p) for p in sorted(base.glob(f"**/{soname}")))
    return found


def _probe_native(lib: _NativeLib) -> LibraryVersion:
    errors: list[str] = []
    for soname in lib.sonames:
        for path in _candidates(soname):
            try:
                handle = ctypes.CDLL(path)
                version = lib.decode(lib.call(getattr(handle, lib.symbol)))
            except (OSError, AttributeError) as e:
                errors.append(f"{path}: {e}")
                continue
            return LibraryVersion(name=lib.name, version=version, path=path)
    # A file that exists but fails to load (a missing dependency) says more than "not found".
    real = [e for e in errors if "No such file or directory" not in e]
    why = "; ".join(real) if real else f"not found (tried {', '.join(lib.sonames)})"
    return LibraryVersion(name=lib.name, error=why)


def probe_libraries() -> tuple[LibraryVersion, ...]:
    """Load each native library of the GPU stack and ask its version."""
    return tuple(_probe_native(lib) for lib in _NATIVE)


def probe_python_packages() -> dict[str, str]:
    """Installed versions of :data:`STACK_DISTRIBUTIONS` (absent ones are left out)."""
    found: dict[str, str] = {}
    for dist in STACK_DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found
