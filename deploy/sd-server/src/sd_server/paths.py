"""Put a pipeline on an execution path, and read back the path it is really on.

:func:`apply` turns the requested path (device, dtype, attention, channels-last, compile, UNet
backend) into module state using the real code for each: math attention is diffusers' generic
``AttnProcessor`` and transformers' ``eager`` attention, not a flag that nobody reads; CPU is the
CPU. :func:`describe` never looks at the request: it inspects parameters, attention processors,
memory formats and the ONNX Runtime session, so a path that silently changed shows up as changed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from sd_server.config import Attention, Device, DType, PathConfig, UnetBackend
from sd_server.ort_unet import OrtBinding, OrtUNet, export_unet, onnx_cache_key

__all__ = [
    "ModuleReport",
    "PathReport",
    "apply",
    "default_onnx_cache",
    "describe",
    "resolve_device",
    "resolve_dtype",
]

_TORCH_DTYPES = {DType.FP16: torch.float16, DType.BF16: torch.bfloat16, DType.FP32: torch.float32}
# diffusers processor class -> the kernel family it calls.
_PROCESSOR_KIND = {AttnProcessor2_0.__name__: "sdpa", AttnProcessor.__name__: "math"}
# transformers attention implementation -> kernel family.
_HF_ATTENTION_KIND = {"sdpa": "sdpa", "eager": "math"}


@dataclass(frozen=True)
class ModuleReport:
    """The path one pipeline module actually runs on."""

    backend: str
    device: str
    dtype: str
    attention: str
    attention_impl: tuple[str, ...]
    memory_format: str
    compiled: bool
    parameters: int


@dataclass(frozen=True)
class PathReport:
    """The whole pipeline's actual path, as served in ``/capabilities``."""

    device: str
    device_name: str | None
    device_uuid: str | None
    dtype: str
    modules: dict[str, ModuleReport]
    ort: OrtBinding | None
    sdpa_kernels_enabled: dict[str, bool]
    torch_threads: int
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.ort is not None:
            data["ort"]["cpu_fallback"] = self.ort.cpu_fallback
        return data


def resolve_device(requested: Device) -> tuple[torch.device, str | None]:
    """Return the device to use and, when it differs from the request, why.

    A CUDA request on a machine where torch cannot use CUDA returns the CPU and a reason; the
    caller decides whether that is a refusal or a reported degradation.
    """
    cuda_ok = torch.cuda.is_available()
    if requested is Device.AUTO:
        return torch.device("cuda" if cuda_ok else "cpu"), None
    if requested is Device.CUDA and not cuda_ok:
        build = torch.version.cuda or "none (CPU-only build)"
        reason = (
            f"--device cuda requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {build}); running on cpu"
        )
        return torch.device("cpu"), reason
    return torch.device(requested.value), None


def resolve_dtype(dtype: DType | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA and fp32 on CPU unless asked otherwise."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    return _TORCH_DTYPES[dtype]


def default_onnx_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sd-server" / "onnx"


def _set_attention(pipe: StableDiffusionPipeline, attention: Attention) -> None:
    processor = AttnProcessor() if attention is Attention.MATH else AttnProcessor2_0()
    pipe.unet.set_attn_processor(processor)
    pipe.vae.set_attn_processor(processor)
    pipe.text_encoder.set_attn_implementation("eager" if attention is Attention.MATH else "sdpa")


def apply(
    pipe: StableDiffusionPipeline, cfg: PathConfig, device: torch.device
) -> StableDiffusionPipeline:
    """Move ``pipe`` (fp32, CPU, as built) onto the requested path on ``device``."""
    dtype = resolve_dtype(cfg.dtype, device)
    _set_attention(pipe, cfg.attention)
    if cfg.unet_backend is UnetBackend.ORT:
        cache = cfg.onnx_cache_dir or default_onnx_cache()
        key = onnx_cache_key(cfg.model, pipe.unet, cfg.weights_seed)
        onnx_path = export_unet(pipe.unet, cache / key)
        pipe.unet = OrtUNet(
            onnx_path,
            pipe.unet.config,
            providers=cfg.ort_providers,
            device=device,
            dtype=dtype,
            threads=cfg.threads,
            provider_options=cfg.ort_runtime.provider_options(),
            session_options=cfg.ort_runtime.session_options(),
        )
    pipe.to(device=device, dtype=dtype)
    if cfg.channels_last:
        for module in (pipe.unet, pipe.vae):
            if not isinstance(module, OrtUNet):
                module.to(memory_format=torch.channels_last)
    if cfg.compile:
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        pipe.unet = torch.compile(pipe.unet, mode=mode)
    return pipe


def _attention_of(module: Any) -> tuple[str, tuple[str, ...]]:
    """diffusers models report processors; transformers models their attention implementation."""
    if hasattr(module, "attn_processors"):
        impls = tuple(sorted({type(p).__name__ for p in module.attn_processors.values()}))
        if not impls:
            return "none", ()
        kinds = {_PROCESSOR_KIND.get(i, i) for i in impls}
    else:
        impl = str(getattr(module.config, "_attn_implementation", None) or "eager")
        impls = (impl,)
        kinds = {_HF_ATTENTION_KIND.get(impl, impl)}
    return (kinds.pop() if len(kinds) == 1 else "mixed"), impls


def _memory_format(module: torch.nn.Module) -> str:
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight
            if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
                return "channels_last"
            return "contiguous"
    return "n/a"


def _module_report(module: torch.nn.Module) -> ModuleReport:
    if isinstance(module, OrtUNet):
        binding = module.binding
        return ModuleReport(
            backend="onnxruntime",
            device=binding.io_device,
            dtype=str(torch.float32),
            attention="onnxruntime",
            attention_impl=binding.bound,
            memory_format="n/a",
            compiled=False,
            parameters=0,
        )
    compiled = isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
    inner: torch.nn.Module = module._orig_mod if compiled else module  # type: ignore[assignment]
    first = next(inner.parameters())
    attention, impls = _attention_of(inner)
    return ModuleReport(
        backend="torch",
        device=str(first.device),
        dtype=str(first.dtype),
        attention=attention,
        attention_impl=impls,
        memory_format=_memory_format(inner),
        compiled=compiled,
        parameters=sum(p.numel() for p in inner.parameters()),
    )


def _nvml_uuid(device: torch.device) -> str | None:
    """The GPU's UUID as NVML spells it (``GPU-...``), to match NVML's device list."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith("GPU-") else f"GPU-{text}"


def describe(pipe: StableDiffusionPipeline) -> PathReport:
    """Read the path ``pipe`` is on from its modules (not from any setting)."""
    import diffusers
    import transformers

    modules = {
        name: _module_report(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")
    }
    device = torch.device(modules["vae"].device)
    ort = pipe.unet.binding if isinstance(pipe.unet, OrtUNet) else None
    versions = {
        "torch": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if ort is not None:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    on_gpu = device.type == "cuda"
    return PathReport(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if on_gpu else None,
        device_uuid=_nvml_uuid(device) if on_gpu else None,
        dtype=modules["unet"].dtype,
        modules=modules,
        ort=ort,
        sdpa_kernels_enabled={
            kind: bool(getattr(torch.backends.cuda, f"{kind}_sdp_enabled")())
            for kind in ("flash", "mem_efficient", "cudnn", "math")
        },
        torch_threads=torch.get_num_threads(),
        versions=versions,
    )
