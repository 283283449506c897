"""Host probe: NVML (driver, GPUs), ``/dev/nvidia*``, ``libcuda.so.1``, visibility variables.

Why each: a container started without a GPU request has no device nodes and often no
``libcuda``; NVML then says why in its own words (``NVMLError_LibraryNotFound``,
``NVMLError_DriverNotLoaded``...), which is the message an operator needs. Every per-device
query that a GPU or driver doesn't support yields ``None`` rather than failing the probe
(gpustat's lesson).
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable
from typing import Any

import pynvml

from gates.capability.snapshot import GpuDevice, HostFacts

__all__ = ["LIBCUDA", "nvml_error_text", "probe_host"]

LIBCUDA = "libcuda.so.1"


def nvml_error_text(exc: BaseException) -> str:
    """``NVMLError_LibraryNotFound: NVML Shared Library Not Found``: type and message."""
    return f"{type(exc).__name__}: {exc}"


def _opt(fn: Callable[..., Any], *args: Any) -> Any:
    """Call an NVML query; unsupported or failing queries give ``None``."""
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pair_flag(value: Any) -> bool | None:
    """NVML returns (current, pending) for MIG and ECC modes; the current one matters."""
    return None if value is None else bool(value[0])


def _device(index: int) -> GpuDevice:
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    cc = _opt(pynvml.nvmlDeviceGetCudaComputeCapability, h)
    mem = _opt(pynvml.nvmlDeviceGetMemoryInfo, h)
    power_mw = _opt(pynvml.nvmlDeviceGetPowerManagementLimit, h)
    return GpuDevice(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(h)),
        uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
        memory_total_mib=int(mem.total) // 2**20 if mem is not None else 0,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc is not None else None,
        mig_mode=_pair_flag(_opt(pynvml.nvmlDeviceGetMigMode, h)),
        ecc_enabled=_pair_flag(_opt(pynvml.nvmlDeviceGetEccMode, h)),
        max_sm_clock_mhz=_opt(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        max_mem_clock_mhz=_opt(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
        power_limit_w=power_mw / 1000.0 if power_mw is not None else None,
    )


def _nvml() -> dict[str, Any]:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return {"nvml_error": nvml_error_text(e)}
    try:
        cuda = _opt(pynvml.nvmlSystemGetCudaDriverVersion)
        return {
            "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
            "gpus": tuple(_device(i) for i in range(pynvml.nvmlDeviceGetCount())),
        }
    except pynvml.NVMLError as e:
        return {"nvml_error": nvml_error_text(e)}
    finally:
        _opt(pynvml.nvmlShutdown)


def _libcuda() -> dict[str, Any]:
    try:
        ctypes.CDLL(LIBCUDA)
    except OSError as e:
        return {"libcuda_loadable": False, "libcuda_error": str(e)}
    return {"libcuda_loadable": True}


def probe_host() -> HostFacts:
    """Collect host facts (time-boxed by the collector's worker thread)."""
    return HostFacts(
        **_nvml(),
        **_libcuda(),
        device_nodes=tuple(sorted(glob.glob("/dev/nvidia*"))),
        nvidia_visible_devices=os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
