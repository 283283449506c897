"""Utilization from Prometheus scraping NVIDIA's DCGM exporter (the cluster-side alternative).

Why: in a cluster the controller cannot run NVML inside green's pods, but DCGM exporter
already publishes per-GPU series. ``DCGM_FI_DEV_GPU_UTIL`` (percent) is the NVML counter;
``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` and ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE`` (ratios 0-1,
scaled here to percent) say how busy the engines and tensor cores really are, which is what
separates the fp16/fused path from a generic one. Queries go through the one Prometheus client
(:class:`gates.prometheus.PrometheusClient`, bounded reads). A failed or empty query becomes
``UtilizationSamples.error`` (so ``nodata``), never an exception into the controller; so does
an answer not complete within the deadline of its exchange or larger than the size cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

import httpx

from gates.bounded import EXCHANGE_SECONDS, PROMETHEUS_MAX_BYTES
from gates.prometheus import PrometheusClient, PrometheusError
from gates.utilization.samples import GpuSamples, UtilizationMetric, UtilizationSamples

__all__ = ["DCGM_METRICS", "PrometheusUtilization", "dcgm_query"]

#: DCGM exporter series per metric, and the factor that turns its values into percent.
DCGM_METRICS: Final[Mapping[UtilizationMetric, tuple[str, float]]] = {
    "gpu_util": ("DCGM_FI_DEV_GPU_UTIL", 1.0),
    "gr_engine_active": ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 100.0),
    "tensor_active": ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 100.0),
}


def dcgm_query(metric: UtilizationMetric, selector: str = "") -> str:
    """The PromQL for one metric, e.g. ``DCGM_FI_DEV_GPU_UTIL{namespace="sd"}``.

    Raises:
        ValueError: ``selector`` is not empty and not a ``{...}`` label selector.
    """
    selector = selector.strip()
    if selector and not (selector.startswith("{") and selector.endswith("}")):
        raise ValueError(f"selector must be a {{label=...}} matcher, got {selector!r}")
    return DCGM_METRICS[metric][0] + selector


def _gpu_id(labels: Mapping[str, str]) -> str:
    if "UUID" in labels:
        return labels["UUID"]
    if "gpu" in labels:
        return f"{labels.get('Hostname', labels.get('instance', '?'))}/gpu{labels['gpu']}"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _timestamp(t: datetime | float) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


class PrometheusUtilization:
    """Range queries of DCGM series over a canary window, through :class:`PrometheusClient`.

    Args:
        base_url: Prometheus, e.g. ``http://prometheus:9090``.
        client: an ``httpx.Client`` to reuse (tests pass one with a ``MockTransport``).
        timeout_s: deadline of one whole query exchange (connect, headers and body).
        max_bytes: cap on one answer's body.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.Client | None = None,
        timeout_s: float = EXCHANGE_SECONDS,
        max_bytes: int = PROMETHEUS_MAX_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._prometheus = PrometheusClient(base_url, timeout=timeout_s, max_bytes=max_bytes,
                                            http=client)

    def query(
        self,
        metric: UtilizationMetric,
        *,
        start: datetime | float,
        end: datetime | float,
        step_s: float = 5.0,
        selector: str = "",
    ) -> UtilizationSamples:
        """Per-GPU samples of ``metric`` between ``start`` and ``end``, in percent.

        Raises:
            ValueError: bad ``selector`` or an empty window (programming errors, not data).
        """
        query = dcgm_query(metric, selector)
        t0, t1 = _timestamp(start), _timestamp(end)
        if t1 <= t0:
            raise ValueError(f"empty window: start {t0} >= end {t1}")
        scale = DCGM_METRICS[metric][1]
        try:
            series = self._prometheus.query_range(query, start=t0, end=t1, step_s=step_s)
        except PrometheusError as e:
            return UtilizationSamples(source="prometheus", metric=metric, gpus=(),
                                      error=f"query {query!r} failed: {e}")
        gpus = tuple(
            GpuSamples(gpu=_gpu_id(labels), name=labels.get("modelName"),
                       utilization_pct=tuple(v * scale for v in values))
            for labels, values in series
        )
        error = None if gpus else f"query {query!r} returned no series in the window"
        return UtilizationSamples(source="prometheus", metric=metric, gpus=gpus, error=error)

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        self._prometheus.close()
