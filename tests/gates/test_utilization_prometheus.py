"""The DCGM query against a real Prometheus scraping a DCGM-exporter-shaped endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import serve_text

from gates.utilization import PrometheusUtilization, UtilizationRequirements
from gates.utilization.floor import evaluate_utilization_floor
from gates.verdict import Verdict
from rollout.local.processes import free_port
from rollout.local.prometheus import start_prometheus

# Two H100s as dcgm-exporter publishes them: one busy (fused fp16 path), one idling.
_GPUS = {
    "GPU-busy": {"gpu": "0", "util": 93, "gr": 0.88, "tensor": 0.41},
    "GPU-idle": {"gpu": "1", "util": 31, "gr": 0.29, "tensor": 0.02},
}


def _exposition() -> str:
    lines = []
    for uuid, g in _GPUS.items():
        labels = (
            f'gpu="{g["gpu"]}",UUID="{uuid}",device="nvidia{g["gpu"]}",'
            'modelName="NVIDIA H100 80GB HBM3",Hostname="node-a"'
        )
        lines += [
            f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {g['util']}",
            f"DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{labels}}} {g['gr']}",
            f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{labels}}} {g['tensor']}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusUtilization]:
    exporter = serve_text(_exposition)
    port = free_port()
    root: Path = tmp_path_factory.mktemp("prom-dcgm")
    proc = start_prometheus(root, port=port, targets={"green": f"127.0.0.1:{exporter.server_port}"})
    client = PrometheusUtilization(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait for a few scrapes of both GPUs
            now = time.time()
            got = client.query("gpu_util", start=now - 30, end=now, step_s=1)
            if len(got.gpus) == 2 and all(len(g.utilization_pct) >= 3 for g in got.gpus):
                break
            time.sleep(0.5)
        yield client
    finally:
        client.close()
        proc.stop()
        exporter.shutdown()


def _window() -> dict[str, float]:
    now = time.time()
    return {"start": now - 30, "end": now, "step_s": 1}


def test_floor_on_dcgm_gpu_util(prom: PrometheusUtilization) -> None:
    got = prom.query("gpu_util", selector='{color="green"}', **_window())
    assert got.error is None and {g.gpu for g in got.gpus} == set(_GPUS)
    assert {g.name for g in got.gpus} == {"NVIDIA H100 80GB HBM3"}
    req = UtilizationRequirements(floor_percent=60, min_samples=3)
    r = evaluate_utilization_floor(req, got)
    assert r.verdict is Verdict.FAIL and r.below_floor == ("GPU-idle",), r.reason
    by_gpu = {g.gpu: g.utilization_pct for g in r.gpus}
    assert by_gpu["GPU-busy"].min == 93 and by_gpu["GPU-idle"].max == 31
    low = UtilizationRequirements(floor_percent=25, min_samples=3)
    assert evaluate_utilization_floor(low, got).verdict is Verdict.PASS


def test_profiling_metrics_are_percent(prom: PrometheusUtilization) -> None:
    got = prom.query("tensor_active", **_window())
    means = {g.gpu: sum(g.utilization_pct) / len(g.utilization_pct) for g in got.gpus}
    assert means == pytest.approx({"GPU-busy": 41.0, "GPU-idle": 2.0})
    req = UtilizationRequirements(metric="tensor_active", floor_percent=20, min_samples=3)
    assert evaluate_utilization_floor(req, got).below_floor == ("GPU-idle",)


def test_selector_matching_nothing_is_nodata(prom: PrometheusUtilization) -> None:
    got = prom.query("gr_engine_active", selector='{color="blue"}', **_window())
    r = evaluate_utilization_floor(
        UtilizationRequirements(metric="gr_engine_active", floor_percent=10), got
    )
    assert r.verdict is Verdict.NODATA and "no series" in r.reason
