"""Start-up admission on this GPU-less machine: refusals name the reason; degraded is reported.

Exit status 3 means "admission refused a degraded path" (see ``sd_server.cli``).
"""

from __future__ import annotations

from pathlib import Path

import httpx
from sdserver_harness import ORT_CUDA_ARGS, Server, metric, run_server_to_exit


def test_require_gpu_exits_with_the_reason() -> None:
    done = run_server_to_exit(["--require-gpu"])
    assert done.returncode == 3, done.stderr
    assert "refusing to start on a degraded path" in done.stderr
    assert "[gpu.count]" in done.stderr and "NVML" in done.stderr


def test_require_gpu_with_ort_cuda_names_the_cpu_ep_fallback(onnx_cache: Path) -> None:
    done = run_server_to_exit([*ORT_CUDA_ARGS, "--require-gpu", "--onnx-cache", str(onnx_cache)])
    assert done.returncode == 3, done.stderr
    fallback = [line for line in done.stderr.splitlines() if "[providers.forbidden]" in line]
    assert fallback, done.stderr
    assert "CPU fallback" in fallback[0]
    assert "requested [CUDAExecutionProvider, CPUExecutionProvider]" in fallback[0]
    assert "bound [CPUExecutionProvider]" in fallback[0]


def test_policy_requiring_fused_attention_refuses(tmp_path: Path) -> None:
    policy = tmp_path / "capability.yaml"
    policy.write_text("type: capability\nrequire_fused_attention: true\n")
    done = run_server_to_exit(["--policy", str(policy)])
    assert done.returncode == 3, done.stderr
    assert "[attention.fused]" in done.stderr


def test_unreadable_policy_is_bad_usage(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("type: capability\nrequire_fused_atention: true\n")
    done = run_server_to_exit(["--policy", str(policy)])
    assert done.returncode == 2, done.stderr
    assert "require_fused_atention" in done.stderr


def test_path_checks_after_load_name_cpu_landing_and_slow_self_test() -> None:
    """One load, two post-load violations: a CUDA request that ran on the CPU, and a warm
    self-test over its gate (both measured on the pipeline that was really built)."""
    # BASE_ARGS says --device cpu; the later --device cuda wins, as on any command line.
    done = run_server_to_exit(["--device", "cuda", "--self-test-max-seconds", "0.0001"])
    assert done.returncode == 3, done.stderr
    lines = done.stderr.splitlines()
    device = next(x for x in lines if "[path.device]" in x)
    assert "torch.cuda.is_available() is False" in device and "running on cpu" in device
    latency = next(x for x in lines if "[self_test.latency]" in x)
    assert "warm self-test took" in latency and "the gate is 0.0001 s" in latency


def test_ort_cpu_fallback_is_served_only_as_degraded(ort_server: Server) -> None:
    ready = httpx.get(ort_server.url + "/readyz").json()
    assert ready["ready"] is True and ready["degraded"] is True
    checks = {v["check"] for v in ready["violations"]}
    assert "path.ort_providers" in checks
    caps = httpx.get(ort_server.url + "/capabilities").json()
    ort = caps["pipeline"]["ort"]
    assert ort["requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort["bound"] == ["CPUExecutionProvider"] and ort["cpu_fallback"] is True
    assert any("CUDAExecutionProvider" in w for w in ort["warnings"])
    unet = caps["pipeline"]["modules"]["unet"]
    assert unet["backend"] == "onnxruntime" and unet["device"] == "cpu"
    assert caps["degraded"] is True
    text = httpx.get(ort_server.url + "/metrics").text
    assert metric(text, "sd_degraded") == 1
    assert metric(text, "sd_execution_path_info", attention="onnxruntime", device="cpu",
                  dtype="float32", ort_providers="CPUExecutionProvider",
                  unet_backend="onnxruntime") == 1
