"""The version matrix of a GPU serving stack and its fingerprint.

Why: most drift that costs speed is a version change somewhere in driver -> CUDA -> cuDNN ->
TensorRT -> ORT/torch, or a different provider bound. Hashing exactly that matrix gives one
string a policy can require to equal blue's, while the matrix itself says *what* moved.
Versions are normalised to the granularity that changes kernels: the driver *branch* (580 in
580.159.04) and the CUDA *minor* (12.4), full versions for the libraries.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["VersionMatrix", "cuda_minor", "driver_branch", "fingerprint_of"]


class VersionMatrix(BaseModel):
    """What a fingerprint hashes. ``None`` means absent or not determinable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    driver_branch: str | None = Field(default=None, description="NVIDIA driver major, e.g. 580")
    cuda_driver: str | None = Field(default=None, description="CUDA version the driver supports")
    cuda_runtime: str | None = Field(default=None, description="CUDA runtime in use (major.minor)")
    cudnn: str | None = None
    tensorrt: str | None = None
    onnxruntime: str | None = None
    torch: str | None = None
    bound_providers: tuple[str, ...] = Field(
        default=(), description="ORT providers the probe session actually bound, in order"
    )


def driver_branch(driver_version: str | None) -> str | None:
    """``"580.159.04"`` -> ``"580"``."""
    if not driver_version:
        return None
    return driver_version.split(".", 1)[0]


def cuda_minor(version: str | None) -> str | None:
    """``"12.4.131"`` -> ``"12.4"``; ``"12"`` stays ``"12"``."""
    if not version:
        return None
    return ".".join(version.split(".")[:2])


def fingerprint_of(matrix: VersionMatrix) -> str:
    """A short, stable hash of the matrix (16 hex digits of SHA-256 over canonical JSON)."""
    canonical = json.dumps(matrix.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
