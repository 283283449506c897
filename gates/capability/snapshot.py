"""The capability snapshot: what a GPU service can actually do, as a versioned document.

Why a document: a rollout compares green against blue and against a policy, often across
processes (the SD server publishes its own snapshot at ``GET /capabilities``, the controller
reads it). So the model is strict (``extra="forbid"``), versioned (``schema_version``), has a
committed JSON schema (``policies/capability-snapshot.schema.json``), and records every probe
that failed or timed out as a :class:`ProbeFact` instead of silently leaving a hole.

Derived values (:attr:`CapabilitySnapshot.versions`, :attr:`~CapabilitySnapshot.fingerprint`,
:attr:`ProviderProbe.cpu_fallback`) are computed from the recorded facts and serialized for
readers; when a document is read back they are recomputed and checked, so an edited or stale
fingerprint is rejected rather than trusted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import AwareDatetime, Field, computed_field

from gates.capability._facts import Facts as _Facts
from gates.capability.fingerprint import VersionMatrix, cuda_minor, driver_branch, fingerprint_of
from gates.capability.logscan import LogHit
from gates.capability.ort_settings import OrtSettings

__all__ = [
    "CPU_PROVIDER",
    "FUSED_SDPA_BACKENDS",
    "IMAGE_DIGEST_ENV",
    "IMAGE_REF_ENV",
    "SCHEMA_VERSION",
    "CapabilitySnapshot",
    "ContainerToolkit",
    "GpuDevice",
    "HostFacts",
    "ImageFacts",
    "LibraryName",
    "LibraryVersion",
    "ProbeFact",
    "ProbeStatus",
    "ProviderProbe",
    "SdpaBackends",
    "StrictModeResult",
    "TorchFacts",
    "effective_providers",
    "snapshot_json_schema",
]

SCHEMA_VERSION: Final = 1
CPU_PROVIDER: Final = "CPUExecutionProvider"
#: SDPA backends that count as fused attention (``math`` is the generic fallback).
FUSED_SDPA_BACKENDS: Final = ("flash", "mem_efficient", "cudnn")

ProbeStatus = Literal["ok", "error", "timeout", "absent"]


class ProbeFact(_Facts):
    """How one probe went. A failure is a fact about the environment, never a crash."""

    probe: str
    status: ProbeStatus
    error: str | None = Field(default=None, description="exception type and message, or why")
    duration_s: float = Field(ge=0)


class GpuDevice(_Facts):
    """One GPU as NVML reports it; ``None`` where NVML says the query is unsupported."""

    index: int = Field(ge=0)
    name: str
    uuid: str
    memory_total_mib: int = Field(ge=0)
    compute_capability: str | None = None
    mig_mode: bool | None = None
    ecc_enabled: bool | None = None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None
    power_limit_w: float | None = None


class ContainerToolkit(_Facts):
    """The NVIDIA Container Toolkit as the container sees it.

    ``NVIDIA_REQUIRE_CUDA`` is the image's constraint on the driver (``cuda>=12.4 brand=...``),
    ``NVIDIA_DRIVER_CAPABILITIES`` what the runtime mounts (``compute,utility``; without
    ``compute`` there is no libcuda). ``nvidia-container-cli`` exists on hosts and in some
    images only: its absence is recorded, never an error.
    """

    cli_version: str | None = Field(default=None, description="nvidia-container-cli cli-version")
    lib_version: str | None = Field(default=None, description="libnvidia-container lib-version")
    cli_error: str | None = Field(default=None, description="why the CLI gave no version")
    nvidia_require_cuda: str | None = None
    nvidia_driver_capabilities: str | None = None


class HostFacts(_Facts):
    """Driver, GPUs and the container plumbing a GPU process needs."""

    nvml_error: str | None = Field(default=None, description="why NVML could not answer")
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: tuple[GpuDevice, ...] = ()
    device_nodes: tuple[str, ...] = Field(default=(), description="/dev/nvidia* present")
    libcuda_loadable: bool = False
    libcuda_error: str | None = None
    nvidia_visible_devices: str | None = None
    cuda_visible_devices: str | None = None
    container: ContainerToolkit | None = Field(
        default=None, description="NVIDIA Container Toolkit facts (CLI version, env)"
    )

    @property
    def gpu_device_nodes(self) -> tuple[str, ...]:
        """The per-GPU nodes (``/dev/nvidia0``...), not ``nvidiactl``/``nvidia-uvm``."""
        return tuple(n for n in self.device_nodes if n.removeprefix("/dev/nvidia").isdigit())


LibraryName = Literal["cudart", "cudnn", "cublas", "tensorrt"]


class LibraryVersion(_Facts):
    """A native library of the GPU stack, found by loading it and asking its version."""

    name: LibraryName
    version: str | None = None
    path: str | None = Field(default=None, description="soname or file that answered")
    error: str | None = None


class SdpaBackends(_Facts):
    """One flag per ``scaled_dot_product_attention`` backend."""

    flash: bool | None = None
    mem_efficient: bool | None = None
    cudnn: bool | None = None
    math: bool | None = None


class TorchFacts(_Facts):
    """PyTorch as the serving process sees it (SDPA and TF32 flags are per process)."""

    version: str
    cuda: str | None = None
    cudnn: str | None = None
    cuda_available: bool = False
    device_count: int = 0
    sdpa_enabled: SdpaBackends = SdpaBackends()
    sdpa_usable: SdpaBackends = Field(
        default=SdpaBackends(),
        description="whether a tiny fp16 SDPA ran restricted to each backend (CUDA only)",
    )
    sdpa_errors: dict[str, str] = Field(default_factory=dict)
    tf32_matmul: bool | None = None
    tf32_cudnn: bool | None = None
    fp16_cuda: bool | None = Field(
        default=None, description="an fp16 matmul ran on the GPU; None without CUDA"
    )
    cuda_error: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fused_attention(self) -> tuple[str, ...]:
        """Fused SDPA backends both enabled and shown usable: empty means generic attention."""
        return tuple(
            b
            for b in FUSED_SDPA_BACKENDS
            if getattr(self.sdpa_enabled, b) is True and getattr(self.sdpa_usable, b) is True
        )


class StrictModeResult(_Facts):
    """The same session with ``session.disable_cpu_ep_fallback=1``: fallback becomes an error."""

    providers: tuple[str, ...]
    ok: bool
    bound: tuple[str, ...] = ()
    error: str | None = None


class ProviderProbe(_Facts):
    """A tiny attention graph run through ONNX Runtime with the requested provider order.

    ``available`` is what the build claims; only ``bound`` (``session.get_providers()``)
    tells what runs. ``settings`` is what the session runs *with* (provider and session
    options as ORT reports them, see :mod:`gates.capability.ort_settings`).
    """

    onnxruntime_version: str
    device: str = Field(description="onnxruntime.get_device(): the build's flavour")
    build_info: str | None = None
    available: tuple[str, ...]
    requested: tuple[str, ...]
    bound: tuple[str, ...] = ()
    session_error: str | None = None
    warnings: tuple[str, ...] = Field(
        default=(), description="Python warnings emitted while creating the session"
    )
    log_lines: tuple[str, ...] = Field(
        default=(), description="ORT's native log and stdout during the probe (last lines)"
    )
    log_hits: tuple[LogHit, ...] = ()
    strict: StrictModeResult | None = None
    io_binding_device: str | None = None
    max_abs_error: float | None = Field(
        default=None, description="output vs a NumPy reference: the graph really ran"
    )
    session_create_ms: float | None = None
    first_run_ms: float | None = None
    warm_run_ms: float | None = None
    settings: OrtSettings | None = Field(
        default=None,
        description="the session's runtime settings in effect (provider and session options)",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def effective(self) -> tuple[str, ...]:
        """Bound providers that carry the graph (see :func:`effective_providers`)."""
        return effective_providers(self.bound)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cpu_fallback(self) -> bool:
        """A non-CPU provider was requested, but the CPU provider carries the graph."""
        wanted_gpu = any(p != CPU_PROVIDER for p in self.requested)
        return wanted_gpu and self.effective == (CPU_PROVIDER,)


def effective_providers(bound: tuple[str, ...]) -> tuple[str, ...]:
    """The providers that carry the graph.

    ORT appends ``CPUExecutionProvider`` behind every GPU provider (for shape ops and
    unsupported nodes), so the CPU provider only counts as bound when nothing precedes it.
    """
    if bound[:1] == (CPU_PROVIDER,):
        return (CPU_PROVIDER,)
    return tuple(p for p in bound if p != CPU_PROVIDER)


#: Where a process learns which image it runs: the deployment sets these (a Deployment from its
#: own pinned ``image:`` field, the local demo from its release id). Nothing inside a container
#: can read its own image digest otherwise.
IMAGE_REF_ENV: Final = "ROLLOUT_IMAGE_REF"
IMAGE_DIGEST_ENV: Final = "ROLLOUT_IMAGE_DIGEST"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ImageFacts(_Facts):
    """The container image this process runs, as its deployment declared it.

    ``digest`` is the manifest digest (what a signature names and a baseline is keyed by);
    a value that is not ``sha256:<64 hex>`` is kept in ``error``, never guessed at.
    """

    ref: str | None = Field(default=None, description="docker reference, e.g. reg/sd:1.4")
    digest: str | None = Field(default=None, pattern=_DIGEST.pattern,
                               description="manifest digest sha256:<hex>")
    error: str | None = Field(default=None, description="why a declared digest was refused")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ImageFacts | None:
        """``ROLLOUT_IMAGE_REF`` / ``ROLLOUT_IMAGE_DIGEST``; ``None`` when neither is set.

        The digest may be written as Kubernetes reports a container's ``imageID``
        (``docker-pullable://reg/sd@sha256:...``) or as a reference with ``@sha256:...``.
        """
        ref = env.get(IMAGE_REF_ENV, "").strip() or None
        raw = env.get(IMAGE_DIGEST_ENV, "").strip()
        if ref is None and not raw:
            return None
        found = _DIGEST.search(raw.lower())
        if raw and (found is None or not raw.lower().endswith(found.group())):
            return cls(ref=ref, error=f"{IMAGE_DIGEST_ENV}={raw!r} is not sha256:<64 hex>")
        return cls(ref=ref, digest=found.group() if found else None)


class CapabilitySnapshot(_Facts):
    """Everything a capability gate judges, as one versioned document."""

    schema_version: Literal[1] = SCHEMA_VERSION
    taken_at: AwareDatetime
    hostname: str
    deadline_s: float = Field(gt=0, description="the collector's overall time box")
    duration_s: float = Field(ge=0)
    host: HostFacts | None = None
    libraries: tuple[LibraryVersion, ...] = ()
    python_packages: dict[str, str] = Field(
        default={}, description="installed distributions of the GPU stack (name -> version)"
    )
    torch: TorchFacts | None = None
    provider_probe: ProviderProbe | None = None
    log_hits: tuple[LogHit, ...] = Field(
        default=(), description="degraded-path phrases in the logs given to the collector"
    )
    probes: tuple[ProbeFact, ...] = ()
    image: ImageFacts | None = Field(
        default=None, description="the image the process runs (ROLLOUT_IMAGE_REF/_DIGEST)"
    )

    def probe(self, name: str) -> ProbeFact | None:
        """How the named probe went."""
        return next((p for p in self.probes if p.probe == name), None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def versions(self) -> VersionMatrix:
        """The version matrix; what a framework *uses* wins over what lies on disk."""
        host, torch, ort = self.host, self.torch, self.provider_probe
        lib = {lib.name: lib.version for lib in self.libraries}
        return VersionMatrix(
            driver_branch=driver_branch(host.driver_version if host else None),
            cuda_driver=cuda_minor(host.cuda_driver_version if host else None),
            cuda_runtime=cuda_minor((torch.cuda if torch else None) or lib.get("cudart")),
            cudnn=(torch.cudnn if torch else None) or lib.get("cudnn"),
            tensorrt=lib.get("tensorrt") or self.python_packages.get("tensorrt"),
            onnxruntime=ort.onnxruntime_version if ort else None,
            torch=torch.version if torch else None,
            bound_providers=ort.bound if ort else (),
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fingerprint(self) -> str:
        """Hash of :attr:`versions`, for equality gating against blue."""
        return fingerprint_of(self.versions)

    @classmethod
    def from_file(cls, path: Path) -> CapabilitySnapshot:
        """Read a snapshot written by ``rollout snapshot --output json``.

        Raises:
            OSError: unreadable file. pydantic.ValidationError: not a valid snapshot.
        """
        return cls.model_validate_json(path.read_bytes())


def snapshot_json_schema() -> dict[str, Any]:
    """The JSON schema of a serialized snapshot (what ``policies/`` commits)."""
    schema = CapabilitySnapshot.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://rollout-gates.dev/schema/capability-snapshot-v{SCHEMA_VERSION}.json",
        **schema,
    }
