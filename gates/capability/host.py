"""Host probe: NVML (driver, GPUs), ``/dev/nvidia*``, ``libcuda.so.1``, visibility variables,
and the NVIDIA Container Toolkit (``nvidia-container-cli --version``, ``NVIDIA_*`` env).

Why each: a container started without a GPU request has no device nodes and often no
``libcuda``; NVML then says why in its own words (``NVMLError_LibraryNotFound``,
``NVMLError_DriverNotLoaded``...), which is the message an operator needs. Every per-device
query that a GPU or driver doesn't support yields ``None`` rather than failing the probe
(gpustat's lesson). The container toolkit's variables say what the runtime was asked to mount
(``NVIDIA_DRIVER_CAPABILITIES`` without ``compute`` means no libcuda) and which drivers the
image accepts (``NVIDIA_REQUIRE_CUDA``).
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import pynvml

from gates.capability.snapshot import ContainerToolkit, GpuDevice, HostFacts

__all__ = ["CONTAINER_CLI", "LIBCUDA", "container_toolkit", "nvml_error_text", "probe_host"]

LIBCUDA = "libcuda.so.1"
CONTAINER_CLI = "nvidia-container-cli"
_CLI_TIMEOUT_S = 3.0


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


def _cli_versions(text: str) -> dict[str, str]:
    """``cli-version: 1.17.4`` / ``lib-version: 1.17.4`` lines -> their values."""
    found = dict(re.findall(r"^\s*(cli|lib)-version:\s*(\S+)", text, re.MULTILINE))
    return {f"{k}_version": v for k, v in found.items()}


def container_toolkit(
    env: Mapping[str, str] | None = None, cli: str | None = CONTAINER_CLI
) -> ContainerToolkit:
    """The container toolkit's CLI version (where it is on ``PATH``) and its variables.

    ``env`` defaults to this process's environment; ``cli`` is the executable to ask (None:
    do not run it).
    """
    env = os.environ if env is None else env
    facts: dict[str, str | None] = {
        "nvidia_require_cuda": env.get("NVIDIA_REQUIRE_CUDA"),
        "nvidia_driver_capabilities": env.get("NVIDIA_DRIVER_CAPABILITIES"),
    }
    exe = shutil.which(cli) if cli else None
    if exe is None:
        facts["cli_error"] = f"{cli or CONTAINER_CLI} not found on PATH"
        return ContainerToolkit(**facts)
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True,
                              timeout=_CLI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        facts["cli_error"] = f"{type(e).__name__}: {e}"
        return ContainerToolkit(**facts)
    versions = _cli_versions(proc.stdout)
    if not versions:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        facts["cli_error"] = f"{exe} --version exited {proc.returncode}: {last[0]}"
    return ContainerToolkit(**facts, **versions)


def probe_host() -> HostFacts:
    """Collect host facts (time-boxed by the collector's worker thread)."""
    return HostFacts(
        **_nvml(),
        **_libcuda(),
        device_nodes=tuple(sorted(glob.glob("/dev/nvidia*"))),
        nvidia_visible_devices=os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        container=container_toolkit(),
    )
