"""Settings of one server process, resolved once from the command line.

Everything is a frozen dataclass so that what ``/capabilities`` reports as *requested* can never
drift from what the loader was asked to build; what was actually built is read back from the
modules themselves (:mod:`sd_server.paths`), never from these settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

__all__ = [
    "MODEL_SD15_ARCH",
    "MODEL_TINY",
    "AdmissionConfig",
    "Attention",
    "BatchingConfig",
    "DType",
    "Device",
    "FaultConfig",
    "Limits",
    "PathConfig",
    "ServerConfig",
    "UnetBackend",
]

MODEL_TINY = "tiny"
MODEL_SD15_ARCH = "sd15-arch"


class Device(StrEnum):
    """Where the pipeline runs; ``auto`` means CUDA when torch can use it, else CPU."""

    AUTO = "auto"
    CUDA = "cuda"
    CPU = "cpu"


class DType(StrEnum):
    """Weight and activation precision; unset means fp16 on CUDA and fp32 on CPU."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


class Attention(StrEnum):
    """``sdpa``: torch's fused scaled-dot-product attention; ``math``: the generic kernels."""

    SDPA = "sdpa"
    MATH = "math"


class UnetBackend(StrEnum):
    """Who runs the UNet: torch, or an exported ONNX graph in ONNX Runtime."""

    TORCH = "torch"
    ORT = "onnxruntime"


@dataclass(frozen=True)
class PathConfig:
    """The requested execution path (the loader reports what it actually got)."""

    model: str = MODEL_TINY
    device: Device = Device.AUTO
    dtype: DType | None = None
    attention: Attention = Attention.SDPA
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    unet_backend: UnetBackend = UnetBackend.TORCH
    ort_providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    onnx_cache_dir: Path | None = None
    threads: int | None = None
    weights_seed: int = 0

    def __post_init__(self) -> None:
        if self.compile and self.unet_backend is UnetBackend.ORT:
            raise ValueError("--compile applies to the torch UNet, not --unet-backend onnxruntime")


@dataclass(frozen=True)
class Limits:
    """Request bounds; anything outside is a 4xx with the reason, never a silent clamp."""

    min_side: int = 64
    max_side: int = 1024
    max_steps: int = 100
    max_images: int = 8
    max_prompt_chars: int = 2000
    max_body_bytes: int = 64 * 1024
    max_guidance_scale: float = 30.0


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching: wait at most ``max_wait_s`` after the oldest request to fill a batch."""

    max_batch: int = 8
    max_wait_s: float = 0.025
    queue_size: int = 64


@dataclass(frozen=True)
class FaultConfig:
    """Deliberate faults for reliability tests of the controller, never a degraded-path stand-in.

    Any non-zero setting marks the server in ``/capabilities`` and ``sd_fault_injection_active``.
    """

    latency_s: float = 0.0
    error_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 0.0
    seed: int | None = None

    @property
    def active(self) -> bool:
        return (
            self.latency_s > 0
            or self.error_rate > 0
            or (self.stall_rate > 0 and self.stall_s > 0)
        )


@dataclass(frozen=True)
class AdmissionConfig:
    """What must hold before the server calls itself ready."""

    require_gpu: bool = False
    policy: Path | None = None
    allow_degraded: bool = False
    self_test_max_s: float | None = None


@dataclass(frozen=True)
class ServerConfig:
    """One server process."""

    host: str = "127.0.0.1"
    port: int = 8000
    path: PathConfig = field(default_factory=PathConfig)
    limits: Limits = field(default_factory=Limits)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    auth_token: str | None = field(default=None, repr=False)
    default_size: int | None = None
    default_steps: int = 25
    default_guidance_scale: float = 7.5
    access_log: bool = False
