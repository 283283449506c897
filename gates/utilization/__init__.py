"""GPU utilization under canary load: NVML sampler, Prometheus/DCGM query, and the floor gate."""

from gates.utilization.floor import (
    GpuUtilization,
    UtilizationRequirements,
    UtilizationResult,
    evaluate_utilization_floor,
)
from gates.utilization.nvml import GpuReader, GpuReading, NvmlReader, NvmlSampler
from gates.utilization.prometheus import DCGM_METRICS, PrometheusUtilization, dcgm_query
from gates.utilization.samples import (
    GpuSamples,
    SeriesStats,
    UtilizationMetric,
    UtilizationSamples,
    series_stats,
)

__all__ = [
    "DCGM_METRICS",
    "GpuReader",
    "GpuReading",
    "GpuSamples",
    "GpuUtilization",
    "NvmlReader",
    "NvmlSampler",
    "PrometheusUtilization",
    "SeriesStats",
    "UtilizationMetric",
    "UtilizationRequirements",
    "UtilizationResult",
    "UtilizationSamples",
    "dcgm_query",
    "evaluate_utilization_floor",
    "series_stats",
]
