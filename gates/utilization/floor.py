"""The ``utilization`` gate: under canary load, every GPU must be at least this busy.

Why a floor: a service on a degraded path (generic kernels, CPU-bound pre/post-processing,
a CPU execution provider) often keeps latency within a loose SLO at low load while the GPU
idles. But the healthy level depends on batch and concurrency: SD 1.5 at batch 1 in eager
mode is host-bound at ~30 % NVML utilization on an H100, batch 8 reaches ~93 %
(``shared/notes/gpu-anchors.md``), so the floor belongs to the load the canary applies.
No GPU, no samples, or too few is ``nodata`` with the reason, never a pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from gates._validation import LatencyInputError
from gates.utilization.samples import (
    SeriesStats,
    UtilizationMetric,
    UtilizationSamples,
    series_stats,
)
from gates.verdict import Verdict

__all__ = [
    "GpuUtilization",
    "UtilizationRequirements",
    "UtilizationResult",
    "evaluate_utilization_floor",
    "normalize_selector",
]

# PromQL label matchers: ``name op "value"``, comma-separated, op one of = != =~ !~, the value
# quoted with "", '' or `` (PromQL's string literals).
_MATCHER = (r"\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"
            r"(?:\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)\s*")
_SELECTOR = re.compile(rf"\{{(?:{_MATCHER}(?:,{_MATCHER})*,?)?\s*\}}")


def normalize_selector(selector: str) -> str:
    """``selector`` as a PromQL label selector ``{...}``, or ValueError with the fix.

    The bare matcher list ``color="green"`` is accepted and wrapped in braces, which is the
    form :func:`gates.utilization.prometheus.dcgm_query` appends to the metric name (it refuses
    anything else). Empty stays empty (every GPU the series has).
    """
    s = selector.strip()
    if not s:
        return ""
    if not s.startswith("{") and not s.endswith("}"):
        s = "{" + s + "}"
    if not _SELECTOR.fullmatch(s):
        raise ValueError(
            f"selector {selector!r} is not a PromQL label selector: write label matchers "
            "'name=\"value\"' (also !=, =~, !~) separated by commas, in braces or not, e.g. "
            "'{color=\"green\", namespace=\"sd\"}'")
    return s


class UtilizationRequirements(BaseModel):
    """A utilization floor, in percent, on one statistic of each GPU's samples.

    Keys are camelCase in a policy (``floorPercent``, ``minSamples``...).

    Attributes:
        name: the gate's name in verdicts and reports.
        metric: which counter (NVML/DCGM ``gpu_util``, or a DCGM profiling metric).
        floor_percent: every GPU's statistic must be at least this.
        statistic: ``mean`` (default), ``p10`` or ``min`` of the window's samples.
        min_samples: fewer samples on any GPU is ``nodata`` (a window too short to judge).
        source: where the controller reads them: ``nvml`` in-pod, or ``prometheus`` (DCGM).
        selector: PromQL label selector for green's GPUs (``prometheus`` only).
        interval_seconds: sampling interval (``nvml``) or query step (``prometheus``).
    """

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True,
        allow_inf_nan=False,
    )

    type: Literal["utilization"] = "utilization"
    name: str = Field("utilization", min_length=1, description="Gate name in verdicts and reports.")
    metric: UtilizationMetric = "gpu_util"
    floor_percent: float = Field(gt=0, le=100)
    statistic: Literal["mean", "p10", "min"] = "mean"
    min_samples: int = Field(default=10, ge=1)
    source: Literal["nvml", "prometheus"] = "prometheus"
    selector: str = Field("", description=(
        "PromQL label selector for green's GPUs (source: prometheus only), e.g. "
        "'{color=\"green\"}'; the bare form 'color=\"green\"' is read as the same."))
    interval_seconds: float = Field(default=1.0, gt=0, le=300, description=(
        "Sampling interval (nvml) or range-query step (prometheus), in seconds."))

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        return normalize_selector(v)

    @model_validator(mode="after")
    def _selector_needs_prometheus(self) -> UtilizationRequirements:
        if self.selector and self.source != "prometheus":
            raise ValueError(
                f"selector applies to source: prometheus only (DCGM series); with source: "
                f"{self.source} the controller samples green's own GPUs: remove the selector")
        return self


@dataclass(frozen=True)
class GpuUtilization:
    """One GPU's summary: utilization, and memory/power when the source has them."""

    gpu: str
    name: str | None
    utilization_pct: SeriesStats
    memory_used_mib: SeriesStats | None
    power_w: SeriesStats | None


@dataclass(frozen=True)
class UtilizationResult:
    """The gate's verdict, why, and the per-GPU numbers it judged."""

    verdict: Verdict
    reason: str
    floor_percent: float
    statistic: str
    gpus: tuple[GpuUtilization, ...] = ()
    below_floor: tuple[str, ...] = ()


def _optional(values: tuple[float, ...], arm: str) -> SeriesStats | None:
    return series_stats(values, arm=arm) if values else None


def evaluate_utilization_floor(
    req: UtilizationRequirements, samples: UtilizationSamples
) -> UtilizationResult:
    """Judge each GPU's statistic against the floor.

    ``nodata``: the source reported an error, no GPU, or a GPU with fewer than
    ``min_samples``; ``error``: a sample is not a valid number; ``fail``: a GPU is below
    the floor; ``pass``: every GPU at or above it.

    Raises:
        ValueError: the samples are of a different metric than the requirement.
    """
    if samples.metric != req.metric:
        raise ValueError(f"samples are {samples.metric!r}, the gate judges {req.metric!r}")

    result = partial(UtilizationResult, floor_percent=req.floor_percent, statistic=req.statistic)
    if samples.error is not None:
        return result(Verdict.NODATA, f"{samples.source}: {samples.error}")
    if not samples.gpus:
        return result(Verdict.NODATA, f"{samples.source}: no GPU in the samples")
    short = [g.gpu for g in samples.gpus if len(g.utilization_pct) < req.min_samples]
    if short:
        return result(Verdict.NODATA, f"fewer than {req.min_samples} samples on {', '.join(short)}")
    try:
        summaries = tuple(
            GpuUtilization(
                gpu=g.gpu,
                name=g.name,
                utilization_pct=series_stats(g.utilization_pct, arm=f"{g.gpu} utilization"),
                memory_used_mib=_optional(g.memory_used_mib, f"{g.gpu} memory"),
                power_w=_optional(g.power_w, f"{g.gpu} power"),
            )
            for g in samples.gpus
        )
    except LatencyInputError as e:
        return result(Verdict.ERROR, f"invalid sample: {e}")
    below = tuple(
        s.gpu for s in summaries if getattr(s.utilization_pct, req.statistic) < req.floor_percent
    )
    stats = ", ".join(
        f"{s.gpu}={getattr(s.utilization_pct, req.statistic):.1f}%" for s in summaries
    )
    if below:
        where = f"{len(below)} of {len(summaries)} GPU(s)"
        reason = f"{req.statistic} {req.metric} below {req.floor_percent:g}% on {where}: {stats}"
        return result(Verdict.FAIL, reason, gpus=summaries, below_floor=below)
    reason = f"{req.statistic} {req.metric} >= {req.floor_percent:g}% on every GPU: {stats}"
    return result(Verdict.PASS, reason, gpus=summaries)
