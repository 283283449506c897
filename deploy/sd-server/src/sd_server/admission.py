"""Start-up admission: refuse to serve on a degraded path, with itemized reasons.

Two stages, both producing :class:`gates.capability.requirements.Violation` items so the
controller reads one vocabulary:

1. **Preflight** (before the model loads): the capability snapshot of this process, collected by
   :func:`gates.capability.collect.collect_local` (NVML, libraries, torch, an ONNX Runtime provider
   probe with the server's provider order), judged by
   :func:`~gates.capability.requirements.check_capability` against ``--require-gpu`` and the
   ``--policy`` requirements. Failing here costs seconds, not a model load.
2. **Path checks** (after load and the warm self-test): what the pipeline really got, which no
   environment snapshot can know: a CUDA request that landed on the CPU, the UNet's own ORT
   session binding the CPU EP, math attention or fp32 where the policy demands fused attention
   or fp16, and a self-test slower than its gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from gates.capability import (
    CapabilityRequirements,
    CapabilitySnapshot,
    Violation,
    check_capability,
)
from gates.capability.snapshot import CPU_PROVIDER
from gates.registry import capability_gates
from sd_server.config import ServerConfig, UnetBackend

if TYPE_CHECKING:  # torch and diffusers load after preflight, which must stay quick
    from sd_server.engine import SelfTestResult
    from sd_server.paths import PathReport

__all__ = [
    "EXIT_REFUSED",
    "PolicyInputError",
    "load_requirements",
    "path_violations",
    "preflight_violations",
    "requirements_for",
]

#: Process exit status when admission refuses a degraded path (2 stays argparse's bad usage).
EXIT_REFUSED = 3


class PolicyInputError(ValueError):
    """``--policy`` could not be read as a rollout policy or capability requirements."""


def load_requirements(path: Path) -> list[CapabilityRequirements]:
    """The capability requirements in ``path``.

    Accepts a ``RolloutPolicy`` document (its ``type: capability`` gates) or a bare
    capability-requirements mapping (the fields of
    :class:`~gates.capability.requirements.CapabilityRequirements`).

    Raises:
        PolicyInputError: unreadable, not YAML, or not valid requirements.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PolicyInputError(f"--policy {path}: {e}") from e
    if not isinstance(data, dict):
        raise PolicyInputError(f"--policy {path}: expected a YAML mapping")
    if "kind" in data:
        from rollout.policy.loader import PolicyError, load_policy

        try:
            policy = load_policy(path)
        except PolicyError as e:
            raise PolicyInputError(str(e)) from e
        return list(capability_gates(policy.spec.gates))
    try:
        return [CapabilityRequirements.model_validate(data)]
    except ValidationError as e:
        raise PolicyInputError(f"--policy {path}: {e}") from e


def requirements_for(cfg: ServerConfig) -> list[CapabilityRequirements]:
    """``--require-gpu`` as requirements, plus whatever ``--policy`` holds.

    Raises:
        PolicyInputError: see :func:`load_requirements`.
    """
    reqs: list[CapabilityRequirements] = []
    if cfg.admission.require_gpu:
        ort = cfg.path.unet_backend is UnetBackend.ORT
        reqs.append(
            CapabilityRequirements(min_gpus=1, forbid_providers=(CPU_PROVIDER,) if ort else ())
        )
    if cfg.admission.policy is not None:
        reqs.extend(load_requirements(cfg.admission.policy))
    return reqs


def preflight_violations(
    snapshot: CapabilitySnapshot, reqs: Sequence[CapabilityRequirements]
) -> list[Violation]:
    """Judge the environment snapshot against every requirement set."""
    return [v for req in reqs for v in check_capability(req, snapshot).violations]


def _fmt(providers: Sequence[str]) -> str:
    return "[" + ", ".join(providers) + "]"


def path_violations(
    cfg: ServerConfig,
    reqs: Sequence[CapabilityRequirements],
    report: PathReport,
    self_test: SelfTestResult,
    device_fallback: str | None,
) -> list[Violation]:
    """What the built pipeline and its self-test show, against the request and requirements.

    A requested path that was not obtained (CUDA -> CPU, ORT CUDA EP -> CPU EP) is always a
    violation: the operator asked for something else. GPU residency is checked per module when
    ``--require-gpu`` is on; attention and precision when a requirement asks for them.
    """
    out: list[Violation] = []
    if device_fallback is not None:
        out.append(Violation(check="path.device", expected=cfg.path.device.value,
                             observed="cpu", message=device_fallback))
    ort = report.ort
    if ort is not None and ort.cpu_fallback:
        hint = f"; onnxruntime warned: {ort.warnings[0]}" if ort.warnings else ""
        out.append(Violation(
            check="path.ort_providers",
            expected=list(ort.requested),
            observed=list(ort.bound),
            message=f"the UNet's ONNX Runtime session fell back to the CPU EP: requested "
            f"{_fmt(ort.requested)} -> bound {_fmt(ort.bound)}{hint}",
        ))
    if cfg.admission.require_gpu:
        off_gpu = {n: m.device for n, m in report.modules.items()
                   if not m.device.startswith("cuda")}
        if off_gpu:
            out.append(Violation(
                check="path.gpu", expected="every module on cuda", observed=off_gpu,
                message="a GPU is required but these modules run on the CPU: "
                + ", ".join(f"{n} ({d})" for n, d in off_gpu.items()),
            ))
    if any(r.require_fused_attention for r in reqs):
        generic = {n: m.attention for n, m in report.modules.items()
                   if m.backend == "torch" and m.attention not in ("sdpa", "none")}
        if generic:
            out.append(Violation(
                check="path.attention", expected="sdpa in every module", observed=generic,
                message=f"fused attention is required; generic attention in {generic}",
            ))
    if any(r.require_fp16 for r in reqs) and report.modules["unet"].dtype != "torch.float16":
        observed = report.modules["unet"].dtype
        out.append(Violation(check="path.dtype", expected="torch.float16", observed=observed,
                             message=f"fp16 is required; the UNet runs in {observed}"))
    gate = cfg.admission.self_test_max_s
    if gate is not None and self_test.warm_s > gate:
        spec = self_test.spec
        out.append(Violation(
            check="self_test.latency",
            expected=f"<= {gate:g} s",
            observed=round(self_test.warm_s, 3),
            message=f"warm self-test took {self_test.warm_s:.3f} s at {spec.width}x{spec.height}, "
            f"{spec.steps} steps; the gate is {gate:g} s",
        ))
    return out
