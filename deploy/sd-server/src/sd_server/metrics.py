"""Prometheus metrics the rollout gates read.

Latency buckets are geometric, 24 per decade (10% apart) from 50 ms to 120 s:
``histogram_quantile`` interpolates inside a bucket, so with coarse buckets like (0.3, 0.5] a
true P95 of 0.38 s reads as 0.46 s; with 10% buckets the read-back error stays under 10%, fine
enough to judge a 30% P95 change anywhere from the tiny CPU model to 1024x1024 at 50 steps.

GPU utilization comes from NVML at scrape time, imported and initialised lazily on the first
scrape; without a GPU or NVML the gauges are simply absent (a missing series is ``nodata`` to the
gates, never a zero that looks like an idle GPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "BATCH_BUCKETS",
    "ERROR_KINDS",
    "LATENCY_BUCKETS",
    "Metrics",
    "NvmlCollector",
    "geometric_buckets",
]

#: Every error kind is exported from the start, so ``rate()`` sees a 0 rather than no series.
ERROR_KINDS = (
    "validation",
    "auth",
    "body_too_large",
    "queue_full",
    "not_ready",
    "inference",
    "out_of_memory",
    "injected",
    "client_closed",
    "timeout",
)


def geometric_buckets(low: float, high: float, per_decade: int = 24) -> tuple[float, ...]:
    """Bucket bounds ``10**(k/per_decade)`` covering [low, high], rounded to 3 digits.

    24 per decade is a ratio of 1.10 between neighbours, and every power of ten is a bound
    (0.1, 1, 10, 100 s), which keeps the ``le`` labels readable.
    """
    if not (0 < low < high and per_decade >= 1):
        raise ValueError("need 0 < low < high and per_decade >= 1")
    first = math.floor(math.log10(low) * per_decade)
    last = math.ceil(math.log10(high) * per_decade)
    return tuple(float(f"{10 ** (k / per_decade):.3g}") for k in range(first, last + 1))


LATENCY_BUCKETS = geometric_buckets(0.05, 120.0)
BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)


class NvmlCollector(Collector):
    """Utilization and memory of the serving GPU, read from NVML at each scrape.

    NVML numbers GPUs ignoring ``CUDA_VISIBLE_DEVICES``, so the serving GPU is picked by UUID
    (:attr:`serving_uuids`, set once the pipeline is on its device); when no GPU matches (or
    none is set yet) every GPU is exported, labelled, rather than none.
    """

    def __init__(self) -> None:
        self.serving_uuids: tuple[str, ...] = ()
        self._nvml: Any = None
        self._tried = False

    def _init(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # no library, driver or GPU: export nothing, every scrape
                self._nvml = None
        return self._nvml

    def collect(self) -> Iterable[GaugeMetricFamily]:
        nvml = self._init()
        if nvml is None:
            return
        util = GaugeMetricFamily(
            "sd_gpu_utilization_percent",
            "Percent of time a kernel ran on the GPU (NVML utilization.gpu, last sample period)",
            labels=["gpu", "uuid"],
        )
        mem = GaugeMetricFamily(
            "sd_gpu_memory_used_bytes", "NVML device memory in use", labels=["gpu", "uuid"]
        )
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            gpus = [(str(i), str(nvml.nvmlDeviceGetUUID(h)), h) for i, h in enumerate(handles)]
            serving = [g for g in gpus if g[1] in self.serving_uuids]
            for index, uuid, handle in serving or gpus:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                util.add_metric([index, uuid], float(rates.gpu))
                mem.add_metric([index, uuid], float(nvml.nvmlDeviceGetMemoryInfo(handle).used))
        except nvml.NVMLError:
            return
        yield util
        yield mem


class Metrics:
    """All server metrics, in a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "sd_request_duration_seconds",
            "Generation request latency, arrival to response (successful requests)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "sd_queue_wait_seconds",
            "Time a generation request waited before its batch started",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "sd_batch_inference_seconds",
            "Wall time of one pipeline call (one batch)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_seconds = Histogram(
            "sd_request_encode_seconds",
            "Wall time of encoding one request's images as PNG",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "sd_batch_size_images", "Images per pipeline call", buckets=BATCH_BUCKETS, registry=r
        )
        self.requests = Counter(
            "sd_requests", "Generation requests answered", ["endpoint", "code"], registry=r
        )
        self.images = Counter("sd_images", "Images generated and returned", registry=r)
        self.errors = Counter("sd_errors", "Failed requests by kind", ["kind"], registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)
        self.queue_depth = Gauge(
            "sd_queue_depth", "Requests waiting for a batch slot", registry=r
        )
        self.in_flight = Gauge(
            "sd_in_flight_requests", "Requests in the pipeline call now running", registry=r
        )
        self.ready = Gauge("sd_ready", "1 once admitted and the warm self-test passed", registry=r)
        self.degraded = Gauge(
            "sd_degraded", "1 when serving on a path admission would refuse", registry=r
        )
        self.self_test_seconds = Gauge(
            "sd_self_test_seconds", "Warm self-test latency at start-up", registry=r
        )
        self.fault_active = Gauge(
            "sd_fault_injection_active", "1 when deliberate fault injection is on", registry=r
        )
        self.fault_setting = Gauge(
            "sd_fault_injection_setting", "Fault injection settings", ["setting"], registry=r
        )
        self.path_info = Gauge(
            "sd_execution_path_info",
            "The pipeline's actual execution path (value 1)",
            ["device", "dtype", "attention", "unet_backend", "ort_providers"],
            registry=r,
        )
        self.nvml = NvmlCollector()
        r.register(self.nvml)
