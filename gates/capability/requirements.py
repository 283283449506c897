"""The ``capability`` gate's checks: green's snapshot against :class:`CapabilityRequirements`.

Each check (providers, GPUs, GPU model, version pins, fingerprint, attention and precision,
ONNX Runtime settings, log phrases) yields itemized :class:`Violation` items;
:func:`check_capability` runs them all and returns a :class:`CapabilityReport`. The
requirements, violations and report are defined in :mod:`gates.capability.spec` and importable
from here as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TypeVar

from gates.capability.logscan import POLICY_CATEGORY, LogHit
from gates.capability.ort_settings import ort_violations
from gates.capability.snapshot import CPU_PROVIDER, CapabilitySnapshot, ProbeFact
from gates.capability.spec import (
    SAME_AS_BLUE,
    BaselineRequiredError,
    CapabilityReport,
    CapabilityRequirements,
    Violation,
)

__all__ = ["check_capability"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Ctx:
    req: CapabilityRequirements
    green: CapabilitySnapshot
    blue: CapabilitySnapshot | None
    log_hits: Sequence[LogHit]

    def resolve(self, pin: str, from_blue: Callable[[CapabilitySnapshot], T]) -> str | T:
        """The pin itself, or blue's value when it says ``same-as-blue``."""
        if pin != SAME_AS_BLUE:
            return pin
        assert self.blue is not None  # checked up front by check_capability
        return from_blue(self.blue)


def _probe_note(fact: ProbeFact | None, what: str) -> str:
    if fact is None:
        return f"no {what} probe in the snapshot"
    return f"{what} probe {fact.status}" + (f": {fact.error}" if fact.error else "")


def _fmt(providers: Sequence[str]) -> str:
    return "[" + ", ".join(providers) + "]"


_CAUSE_CHARS = 300


def _providers(ctx: _Ctx) -> Iterator[Violation]:
    req = ctx.req
    if not (req.require_providers or req.forbid_providers):
        return
    probe = ctx.green.provider_probe
    if probe is None:
        note = _probe_note(ctx.green.probe("onnxruntime"), "onnxruntime")
        yield Violation(
            check="providers.probe",
            expected="a provider probe result",
            observed=note,
            message=f"cannot check execution providers: {note}",
        )
        return
    route = f"requested {_fmt(probe.requested)} -> bound {_fmt(probe.bound)}"
    # Why a provider is missing is usually a library that failed to load (libnvinfer, cuDNN),
    # logged once; ORT's later retries only report their own, secondary, errors.
    load = next((h.text for h in probe.log_hits if h.category == "provider-create-failed"), None)
    extra = f"; provider failed to load: {load[:_CAUSE_CHARS]}" if load else ""
    extra += f"; session error: {probe.session_error}" if probe.session_error else ""
    if probe.strict is not None and not probe.strict.ok:
        extra += f"; strict mode (no CPU fallback): {probe.strict.error}"
    for name in req.require_providers:
        if name in probe.effective:
            continue
        if name not in probe.requested:
            why = f"{name} was not requested by the probe ({route})"
        elif probe.cpu_fallback:
            why = f"{name} requested but ONNX Runtime fell back to CPU: {route}{extra}"
        else:
            why = f"{name} requested but not bound: {route}{extra}"
        yield Violation(
            check="providers.required",
            expected=name,
            observed=list(probe.effective),
            message=why,
        )
    for name in req.forbid_providers:
        if name not in probe.effective:
            continue
        fallback = "CPU fallback: " if name == CPU_PROVIDER and probe.cpu_fallback else ""
        yield Violation(
            check="providers.forbidden",
            expected=f"not {name}",
            observed=list(probe.effective),
            message=f"{fallback}{name} carries the graph: {route}",
        )


def _gpus(ctx: _Ctx) -> Iterator[Violation]:
    n = ctx.req.min_gpus
    if not n:
        return
    host = ctx.green.host
    if host is None:
        note = _probe_note(ctx.green.probe("host"), "host")
        yield Violation(check="gpu.count", expected=n, observed=note, message=note)
        return
    if host.nvml_error is not None:
        yield Violation(
            check="gpu.count",
            expected=n,
            observed=host.nvml_error,
            message=f"need {n} GPU(s); NVML cannot list any: {host.nvml_error}",
        )
    elif len(host.gpus) < n:
        yield Violation(
            check="gpu.count",
            expected=n,
            observed=len(host.gpus),
            message=f"need {n} GPU(s); NVML lists {len(host.gpus)}",
        )
    nodes = host.gpu_device_nodes
    if len(nodes) < n:
        yield Violation(
            check="gpu.device-nodes",
            expected=f">= {n} /dev/nvidiaN",
            observed=list(host.device_nodes),
            message=f"need {n} GPU device node(s); found {list(nodes) or 'none'} "
            "(container started without a GPU request?)",
        )
    if not host.libcuda_loadable:
        yield Violation(
            check="gpu.libcuda",
            expected="libcuda.so.1 loadable",
            observed=host.libcuda_error,
            message=f"the CUDA driver library cannot be loaded: {host.libcuda_error}",
        )


def _names(snap: CapabilitySnapshot) -> list[str]:
    return sorted({g.name for g in snap.host.gpus}) if snap.host else []


def _gpu_model(ctx: _Ctx) -> Iterator[Violation]:
    model = ctx.req.gpu_model
    if model is None:
        return
    expected = ctx.resolve(model, _names)
    wanted = expected if isinstance(expected, list) else [expected]
    observed = _names(ctx.green)
    if observed != sorted(wanted):
        yield Violation(
            check="gpu.model",
            expected=expected,
            observed=observed,
            message=f"GPU model {observed or 'none'}, expected {wanted}",
        )


def _versions(ctx: _Ctx) -> Iterator[Violation]:
    green = ctx.green.versions
    for field, pin in ctx.req.versions:
        if pin is None:
            continue
        expected = ctx.resolve(pin, attrgetter(f"versions.{field}"))
        observed = getattr(green, field)
        if observed != expected:
            source = " (blue's)" if pin == SAME_AS_BLUE else ""
            yield Violation(
                check=f"versions.{field}",
                expected=expected,
                observed=observed,
                message=f"{field} is {observed}, expected {expected}{source}",
            )


def _fingerprint(ctx: _Ctx) -> Iterator[Violation]:
    pin = ctx.req.fingerprint
    if pin is None:
        return
    expected = ctx.resolve(pin, lambda b: b.fingerprint)
    if ctx.green.fingerprint != expected:
        yield Violation(
            check="fingerprint",
            expected=expected,
            observed=ctx.green.fingerprint,
            message=f"version matrix differs: {ctx.green.versions.model_dump(mode='json')}",
        )


def _attention(ctx: _Ctx) -> Iterator[Violation]:
    req, torch = ctx.req, ctx.green.torch
    if not (req.require_fused_attention or req.require_fp16):
        return
    if torch is None:
        note = _probe_note(ctx.green.probe("torch"), "torch")
        for check, wanted in (
            ("attention.fused", req.require_fused_attention),
            ("precision.fp16", req.require_fp16),
        ):
            if wanted:
                yield Violation(check=check, expected=True, observed=note, message=note)
        return
    if req.require_fused_attention and not torch.fused_attention:
        if not torch.cuda_available:
            why = f"CUDA is not available to torch ({torch.cuda_error or 'no device'})"
        else:
            enabled, usable = torch.sdpa_enabled.model_dump(), torch.sdpa_usable.model_dump()
            why = f"enabled {enabled}, usable {usable}"
            why += f", errors {torch.sdpa_errors}" if torch.sdpa_errors else ""
        yield Violation(
            check="attention.fused",
            expected="one of flash, mem_efficient, cudnn",
            observed=[],
            message=f"no fused SDPA backend is both enabled and usable: {why}",
        )
    if req.require_fp16 and torch.fp16_cuda is not True:
        yield Violation(
            check="precision.fp16",
            expected=True,
            observed=torch.fp16_cuda,
            message="fp16 did not run on the GPU"
            + (f": {torch.cuda_error}" if torch.cuda_error else " (no CUDA device)"),
        )


def _logs(ctx: _Ctx) -> Iterator[Violation]:
    forbidden = set(ctx.req.forbid_log_categories) | {POLICY_CATEGORY}
    for hit in (*ctx.green.log_hits, *ctx.log_hits):
        if hit.category not in forbidden:
            continue
        where = f"{hit.source or 'log'}:{hit.line}"
        yield Violation(
            check=f"logs.{hit.category}",
            expected="no degraded-path phrase",
            observed=f"{where}: {hit.text}",
            message=f"{where}: {hit.category} ({hit.phrase})",
        )


def _ort(ctx: _Ctx) -> Iterator[Violation]:
    bounds = ctx.req.ort
    if bounds is None:
        return
    probe = ctx.green.provider_probe
    if probe is None:
        note = _probe_note(ctx.green.probe("onnxruntime"), "onnxruntime")
    else:
        note = f"the probe session recorded none ({probe.session_error or 'no session'})"
    yield from ort_violations(bounds, probe.settings if probe else None, note)


_CHECKS: tuple[Callable[[_Ctx], Iterator[Violation]], ...] = (
    _providers,
    _gpus,
    _gpu_model,
    _versions,
    _fingerprint,
    _attention,
    _ort,
    _logs,
)


def check_capability(
    req: CapabilityRequirements,
    green: CapabilitySnapshot,
    *,
    blue: CapabilitySnapshot | None = None,
    log_hits: Sequence[LogHit] = (),
) -> CapabilityReport:
    """Judge green's snapshot (and log hits, e.g. from ``--logs`` files) against ``req``.

    Raises:
        BaselineRequiredError: a requirement says ``same-as-blue`` and ``blue`` is None.
    """
    if blue is None and (fields := req.needs_blue()):
        raise BaselineRequiredError(
            f"{', '.join(fields)} say {SAME_AS_BLUE!r}: a blue snapshot is required"
        )
    ctx = _Ctx(req, green, blue, log_hits)
    violations = [v for check in _CHECKS for v in check(ctx)]
    return CapabilityReport(violations=tuple(violations), fingerprint=green.fingerprint)
