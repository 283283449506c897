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
    "OrtRuntime",
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
class OrtRuntime:
    """ONNX Runtime settings of the UNet session (``None``: ORT's default).

    They reach ORT as provider options (CUDA: ``arena_extend_strategy``, ``gpu_mem_limit``,
    ``cudnn_conv_algo_search``; TensorRT: its engine and timing caches) and session options
    (``enable_cpu_mem_arena``); the probe session of the capability snapshot gets the same, and
    both report what ORT says is in effect.
    """

    arena_extend_strategy: str | None = None
    gpu_mem_limit: int | None = None
    cudnn_conv_algo_search: str | None = None
    cpu_mem_arena: bool = True
    trt_cache_dir: Path | None = None
    trt_fp16: bool = False

    def provider_options(self) -> dict[str, dict[str, str]]:
        """Per provider name, the options this configuration sets (strings, as ORT takes)."""
        cuda: dict[str, str] = {}
        if self.arena_extend_strategy is not None:
            cuda["arena_extend_strategy"] = self.arena_extend_strategy
        if self.gpu_mem_limit is not None:
            cuda["gpu_mem_limit"] = str(self.gpu_mem_limit)
        if self.cudnn_conv_algo_search is not None:
            cuda["cudnn_conv_algo_search"] = self.cudnn_conv_algo_search
        trt: dict[str, str] = {"trt_fp16_enable": "True"} if self.trt_fp16 else {}
        if self.trt_cache_dir is not None:
            path = str(self.trt_cache_dir)
            trt.update(trt_engine_cache_enable="True", trt_engine_cache_path=path,
                       trt_timing_cache_enable="True", trt_timing_cache_path=path)
        out = {"CUDAExecutionProvider": cuda, "TensorrtExecutionProvider": trt}
        return {name: opts for name, opts in out.items() if opts}

    def session_options(self) -> dict[str, bool]:
        """``SessionOptions`` attributes this configuration sets."""
        return {} if self.cpu_mem_arena else {"enable_cpu_mem_arena": False}


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
    ort_runtime: OrtRuntime = field(default_factory=OrtRuntime)
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
    #: Open connections (probes and scrapes included) before new ones get uvicorn's 503: each
    #: holds a socket and a task; above the queue plus a batch so probes still get through.
    max_connections: int = 128
    #: Seconds one generation request may take, queue wait included, before a 504; a job
    #: still queued then is dropped, a batch already running finishes unread.
    request_timeout_s: float = 300.0


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching: wait at most ``max_wait_s`` after the oldest request to fill a batch."""

    max_batch: int = 8
    max_wait_s: float = 0.025
    queue_size: int = 64
    #: Threads encoding PNGs off the inference thread, so the next batch starts while the
    #: last one is encoded; 0 encodes on the inference thread (the baseline path).
    encode_workers: int = 2


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
