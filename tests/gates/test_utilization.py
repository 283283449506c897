"""Utilization floor, NVML sampler (real NVML here: no GPU) and the DCGM query's parsing."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from gates.utilization import (
    GpuReading,
    GpuSamples,
    NvmlSampler,
    PrometheusUtilization,
    UtilizationRequirements,
    UtilizationSamples,
    evaluate_utilization_floor,
    series_stats,
)
from gates.verdict import Verdict

HAS_GPU = Path("/dev/nvidiactl").exists()


def samples(*series: Sequence[float], error: str | None = None) -> UtilizationSamples:
    gpus = tuple(
        GpuSamples(gpu=f"GPU-{i}", name="NVIDIA H100 80GB HBM3", utilization_pct=tuple(s))
        for i, s in enumerate(series)
    )
    return UtilizationSamples(source="nvml", metric="gpu_util", gpus=gpus, error=error)


def test_summarize_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    values = rng.uniform(20, 95, size=57)
    s = series_stats(values, arm="gpu0")
    assert s.n == 57 and s.min == values.min() and s.max == values.max()
    assert s.mean == pytest.approx(values.mean())
    assert s.p10 == pytest.approx(np.percentile(values, 10))


def test_floor_pass_fail_and_which_gpu() -> None:
    req = UtilizationRequirements(floor_percent=60, min_samples=5)
    busy, idle = [90, 92, 88, 95, 91], [30, 28, 35, 31, 29]
    ok = evaluate_utilization_floor(req, samples(busy, busy))
    assert ok.verdict is Verdict.PASS and ok.below_floor == ()
    assert ok.gpus[0].utilization_pct.mean == pytest.approx(91.2)
    bad = evaluate_utilization_floor(req, samples(busy, idle))
    assert bad.verdict is Verdict.FAIL and bad.below_floor == ("GPU-1",)
    assert "1 of 2 GPU(s)" in bad.reason and "GPU-1=30.6%" in bad.reason


def test_statistic_choice_matters() -> None:
    spiky = [95] * 8 + [5, 5]  # mean 77; p10 (linear) = min = 5
    for statistic, verdict in (
        ("mean", Verdict.PASS),
        ("p10", Verdict.FAIL),
        ("min", Verdict.FAIL),
    ):
        req = UtilizationRequirements(floor_percent=50, statistic=statistic, min_samples=5)
        assert evaluate_utilization_floor(req, samples(spiky)).verdict is verdict, statistic


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            samples(error="NVMLError_LibraryNotFound: NVML Shared Library Not Found"),
            "nvml: NVMLError_LibraryNotFound",
        ),
        (samples(), "no GPU in the samples"),
        (samples([90.0] * 9), "fewer than 10 samples on GPU-0"),
        (samples([90.0] * 20, []), "fewer than 10 samples on GPU-1"),
    ],
)
def test_no_gpu_or_no_samples_is_nodata_never_pass(data: UtilizationSamples, reason: str) -> None:
    r = evaluate_utilization_floor(UtilizationRequirements(floor_percent=1), data)
    assert r.verdict is Verdict.NODATA and reason in r.reason


def test_invalid_sample_is_error() -> None:
    r = evaluate_utilization_floor(
        UtilizationRequirements(floor_percent=10, min_samples=2), samples([50, float("nan")])
    )
    assert r.verdict is Verdict.ERROR and "GPU-0 utilization[1]" in r.reason


def test_requirements_policy_block() -> None:
    req = UtilizationRequirements.model_validate(
        {
            "type": "utilization",
            "floorPercent": 25,
            "statistic": "p10",
            "source": "nvml",
            "intervalSeconds": 0.1,
            "minSamples": 20,
        }
    )
    assert (req.floor_percent, req.min_samples, req.name) == (25, 20, "utilization")
    for bad in ({"floorPercent": 0}, {"floorPercent": 101}, {"floorPercent": 50, "floor": 1}):
        with pytest.raises(ValidationError):
            UtilizationRequirements.model_validate(bad)
    with pytest.raises(ValueError, match="tensor_active"):
        evaluate_utilization_floor(
            UtilizationRequirements(floor_percent=5, metric="tensor_active"), samples([1.0])
        )


class FakeReader:
    """Two GPUs whose readings count up; GPU 1 fails every third read."""

    def __init__(self, fail_open: Exception | None = None, hang: bool = False) -> None:
        self.fail_open, self.hang, self.calls, self.closed = fail_open, hang, 0, False
        self.release = threading.Event()

    def open(self) -> list[tuple[str, str | None]]:
        if self.hang:
            self.release.wait()
        if self.fail_open:
            raise self.fail_open
        return [("GPU-a", "NVIDIA H100 80GB HBM3"), ("GPU-b", None)]

    def read(self, index: int) -> GpuReading:
        self.calls += 1
        if index == 1 and self.calls % 3 == 0:
            raise RuntimeError("NVMLError_Unknown")
        return GpuReading(utilization_pct=50.0 + index, memory_used_mib=1024.0, power_w=300.0)

    def close(self) -> None:
        self.closed = True


def test_sampler_collects_at_its_interval() -> None:
    reader = FakeReader()
    with NvmlSampler(interval_s=0.02, reader=reader) as sampler:
        time.sleep(0.3)
    got = sampler.samples
    assert reader.closed and got.error is None and got.source == "nvml"
    a, b = got.gpus
    assert (a.gpu, a.name, b.name) == ("GPU-a", "NVIDIA H100 80GB HBM3", None)
    assert 5 <= len(a.utilization_pct) <= 20, len(a.utilization_pct)
    assert len(b.utilization_pct) < len(a.utilization_pct)  # failed reads are skipped
    assert set(a.utilization_pct) == {50.0} and set(b.power_w) == {300.0}
    req = UtilizationRequirements(floor_percent=40, min_samples=3, source="nvml")
    assert evaluate_utilization_floor(req, got).verdict is Verdict.PASS
    assert sampler.stop() is got


def test_sampler_failures_are_reasons() -> None:
    s = NvmlSampler(reader=FakeReader(fail_open=RuntimeError("driver gone")))
    s.start()
    assert s.stop().error == "RuntimeError: driver gone"
    hung = FakeReader(hang=True)
    s = NvmlSampler(reader=hung)
    s.start()
    t0 = time.monotonic()
    out = s.stop(timeout_s=0.3)
    hung.release.set()
    assert time.monotonic() - t0 < 1.0
    assert out.error is not None and "did not stop within 0.3 s" in out.error
    with pytest.raises(RuntimeError, match="never started"):
        NvmlSampler().stop()


def test_real_nvml_sampler_on_this_machine() -> None:
    with NvmlSampler(interval_s=0.05) as sampler:
        time.sleep(0.2)
    out = sampler.samples
    if HAS_GPU:  # pragma: no cover - the GPU machine
        assert out.error is None and out.gpus and out.gpus[0].utilization_pct
        return
    assert out.error == "NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    r = evaluate_utilization_floor(UtilizationRequirements(floor_percent=30, source="nvml"), out)
    assert r.verdict is Verdict.NODATA and "NVML Shared Library Not Found" in r.reason


def _prometheus(handler: httpx.MockTransport) -> PrometheusUtilization:
    return PrometheusUtilization("http://prom:9090", client=httpx.Client(transport=handler))


def test_dcgm_query_shapes_and_scaling() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        labels = {"UUID": "GPU-1", "gpu": "0", "modelName": "NVIDIA H100 80GB HBM3"}
        return httpx.Response(
            200,
            json={
                "status": "success",
                "data": {
                    "resultType": "matrix",
                    "result": [
                        {"metric": labels, "values": [[100, "0.4"], [105, "0.5"]]},
                        {"metric": {"gpu": "1", "Hostname": "node-a"}, "values": [[100, "0.9"]]},
                    ],
                },
            },
        )

    prom = _prometheus(httpx.MockTransport(handle))
    out = prom.query("gr_engine_active", start=100, end=160, step_s=5, selector='{namespace="sd"}')
    (request,) = seen
    q = parse_qs(request.url.query.decode())
    assert request.url.path == "/api/v1/query_range"
    assert q["query"] == ['DCGM_FI_PROF_GR_ENGINE_ACTIVE{namespace="sd"}']
    assert (q["start"], q["end"], q["step"]) == (["100.0"], ["160.0"], ["5s"])
    assert out.error is None and [g.gpu for g in out.gpus] == ["GPU-1", "node-a/gpu1"]
    assert out.gpus[0].utilization_pct == pytest.approx((40.0, 50.0))  # ratio -> percent
    assert out.gpus[0].name == "NVIDIA H100 80GB HBM3"
    with pytest.raises(ValueError, match="selector"):
        prom.query("gpu_util", start=0, end=1, selector='namespace="sd"')


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            httpx.Response(
                400, json={"status": "error", "errorType": "bad_data", "error": "parse error"}
            ),
            "parse error",
        ),
        (
            httpx.Response(
                200, json={"status": "success", "data": {"resultType": "matrix", "result": []}}
            ),
            "returned no series",
        ),
        (httpx.Response(502, text="<html>bad gateway</html>"), "HTTP 502"),
    ],
)
def test_dcgm_query_failures_are_nodata(response: httpx.Response, reason: str) -> None:
    prom = _prometheus(httpx.MockTransport(lambda _: response))
    out = prom.query("gpu_util", start=0, end=60)
    assert out.gpus == () and out.error is not None and reason in out.error
    r = evaluate_utilization_floor(UtilizationRequirements(floor_percent=10), out)
    assert r.verdict is Verdict.NODATA and reason in r.reason


def test_unreachable_prometheus_is_nodata() -> None:
    prom = PrometheusUtilization("http://127.0.0.1:1", timeout_s=1)
    out = prom.query("gpu_util", start=0, end=60)
    prom.close()
    assert out.error is not None and "ConnectError" in out.error
