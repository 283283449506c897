"""Utilization samples per GPU and their summary statistics.

Why a source-neutral container: the floor gate must not care whether the numbers came from
NVML in the serving pod or from Prometheus scraping DCGM; both produce
:class:`UtilizationSamples` (percent, 0-100, per GPU) and, when they could not measure,
say why in ``error`` so the gate answers ``nodata`` with that reason instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from gates._validation import as_latencies

__all__ = [
    "GpuSamples",
    "SeriesStats",
    "UtilizationMetric",
    "UtilizationSamples",
    "series_stats",
]

#: ``gpu_util``: NVML's utilization.gpu, the same counter as DCGM_FI_DEV_GPU_UTIL (share of
#: time any kernel ran); ``gr_engine_active`` and ``tensor_active``: DCGM profiling metrics.
UtilizationMetric = Literal["gpu_util", "gr_engine_active", "tensor_active"]


@dataclass(frozen=True)
class GpuSamples:
    """The samples of one GPU over the window (memory and power only from NVML)."""

    gpu: str
    name: str | None
    utilization_pct: tuple[float, ...]
    memory_used_mib: tuple[float, ...] = ()
    power_w: tuple[float, ...] = ()


@dataclass(frozen=True)
class UtilizationSamples:
    """What a sampler or query returned; ``error`` says why there is nothing to judge."""

    source: str
    metric: UtilizationMetric
    gpus: tuple[GpuSamples, ...]
    error: str | None = None


@dataclass(frozen=True)
class SeriesStats:
    """Summary of one series: count, mean, min, 10th percentile, max."""

    n: int
    mean: float
    min: float
    p10: float
    max: float


def series_stats(values: ArrayLike, *, arm: str) -> SeriesStats:
    """Mean, min, p10 (linear interpolation) and max of a series.

    Raises:
        LatencyInputError: a value is NaN, infinite or negative.
        NoDataError: the series is empty.
    """
    arr = as_latencies(values, arm=arm)
    return SeriesStats(
        n=int(arr.size),
        mean=float(arr.mean()),
        min=float(arr.min()),
        p10=float(np.quantile(arr, 0.1)),
        max=float(arr.max()),
    )
