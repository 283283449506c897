"""Torch probe: versions, SDPA backends (enabled and shown usable), TF32 and fp16 on the GPU.

Why in-process: the SDPA and TF32 switches are per-process state, so the serving process
must report its own (the SD server calls the collector itself and publishes the result).
``torch`` is imported here, inside the probe, never at module import: the controller's CLI
does not pay torch's start-up, and a torch that hangs on CUDA initialization is a timeout
fact, not a hung controller.

"Enabled" is not "usable": flash attention is compiled out of some builds and needs sm80+,
so with CUDA present each fused backend is tried on a tiny fp16 input restricted to it.
That restriction (``sdpa_kernel``) flips process-wide switches for a few milliseconds, so a
server should snapshot itself at start-up, before it accepts traffic, and publish that.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from gates.capability.probe import ProbeAbsentError
from gates.capability.snapshot import SdpaBackends, TorchFacts

__all__ = ["decode_torch_cudnn", "probe_torch"]


def decode_torch_cudnn(v: int | None) -> str | None:
    """``torch.backends.cudnn.version()``: 90100 -> ``9.1.0`` (cuDNN 9), 8902 -> ``8.9.2``."""
    if v is None:
        return None
    if v >= 90000:
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"


def _flag(fn_name: str, module: Any) -> bool | None:
    fn = getattr(module, fn_name, None)
    return bool(fn()) if callable(fn) else None


def _sdpa_usable(torch: Any) -> tuple[SdpaBackends, dict[str, str]]:
    """Run a tiny fp16 SDPA restricted to each fused backend (and math, as the control)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None),
        "math": SDPBackend.MATH,
    }
    q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.float16)
    usable: dict[str, bool | None] = {}
    errors: dict[str, str] = {}
    for name, backend in kinds.items():
        if backend is None:
            usable[name] = None
            continue
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            torch.cuda.synchronize()
            usable[name] = True
        except Exception as e:  # any failure means "not usable here", with its reason
            usable[name] = False
            errors[name] = str(e).splitlines()[0][:300]
    return SdpaBackends(**usable), errors


def probe_torch() -> TorchFacts:
    """Collect torch facts in this process.

    Raises:
        ProbeAbsentError: torch is not installed.
    """
    if importlib.util.find_spec("torch") is None:
        raise ProbeAbsentError("torch is not installed")
    import torch

    cuda_mod: Any = torch.backends.cuda
    cudnn_mod: Any = torch.backends.cudnn
    enabled = SdpaBackends(
        flash=_flag("flash_sdp_enabled", cuda_mod),
        mem_efficient=_flag("mem_efficient_sdp_enabled", cuda_mod),
        cudnn=_flag("cudnn_sdp_enabled", cuda_mod),
        math=_flag("math_sdp_enabled", cuda_mod),
    )
    facts: dict[str, Any] = {
        "version": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": decode_torch_cudnn(cudnn_mod.version()),
        "sdpa_enabled": enabled,
        "tf32_matmul": bool(cuda_mod.matmul.allow_tf32),
        "tf32_cudnn": bool(cudnn_mod.allow_tf32),
    }
    try:
        available = bool(torch.cuda.is_available())
        facts["device_count"] = int(torch.cuda.device_count()) if available else 0
    except RuntimeError as e:
        available, facts["cuda_error"] = False, str(e)
    facts["cuda_available"] = available
    if available:
        usable, errors = _sdpa_usable(torch)
        facts["sdpa_usable"], facts["sdpa_errors"] = usable, errors
        try:
            a = torch.ones(64, 64, device="cuda", dtype=torch.float16)
            facts["fp16_cuda"] = bool(torch.isfinite(a @ a).all().item())
        except Exception as e:
            facts["fp16_cuda"], facts["cuda_error"] = False, f"{type(e).__name__}: {e}"
    return TorchFacts(**facts)
