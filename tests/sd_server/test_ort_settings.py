"""The SD server's ONNX Runtime settings: flags -> session, read back into /capabilities."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sd_server.cli import config_from_args
from sd_server.config import OrtRuntime
from sdserver_harness import Server

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def test_flags_become_provider_and_session_options(tmp_path: Path) -> None:
    cfg = config_from_args([
        "--unet-backend", "onnxruntime", "--ort-arena-extend-strategy", "kSameAsRequested",
        "--ort-gpu-mem-limit", "8GiB", "--ort-cudnn-conv-algo-search", "HEURISTIC",
        "--ort-no-cpu-mem-arena", "--ort-trt-cache", str(tmp_path), "--ort-trt-fp16"])
    rt = cfg.path.ort_runtime
    assert rt == OrtRuntime(arena_extend_strategy="kSameAsRequested", gpu_mem_limit=8 * 2**30,
                            cudnn_conv_algo_search="HEURISTIC", cpu_mem_arena=False,
                            trt_cache_dir=tmp_path, trt_fp16=True)
    assert rt.provider_options() == {
        CUDA: {"arena_extend_strategy": "kSameAsRequested", "gpu_mem_limit": str(8 * 2**30),
               "cudnn_conv_algo_search": "HEURISTIC"},
        TRT: {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
              "trt_engine_cache_path": str(tmp_path), "trt_timing_cache_enable": "True",
              "trt_timing_cache_path": str(tmp_path)},
    }
    assert rt.session_options() == {"enable_cpu_mem_arena": False}


def test_defaults_leave_ort_alone() -> None:
    rt = config_from_args([]).path.ort_runtime
    assert rt == OrtRuntime() and rt.provider_options() == {} and rt.session_options() == {}
    assert config_from_args(["--ort-gpu-mem-limit", "1073741824"]).path.ort_runtime \
        .gpu_mem_limit == 2**30


@pytest.mark.parametrize("argv", [
    ["--ort-arena-extend-strategy", "kGrow"],
    ["--ort-gpu-mem-limit", "lots"],
    ["--ort-gpu-mem-limit", "0"],
    ["--ort-cudnn-conv-algo-search", "FAST"],
])
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        config_from_args(argv)
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_capabilities_report_the_settings_in_effect(ort_server: Server) -> None:
    """The ORT UNet's session and the snapshot's probe session, both read back from ORT.

    The server asked for a 2 GiB CUDA arena and no CPU arena; this onnxruntime has no CUDA,
    so only the CPU arena setting is in effect, and that is what both report."""
    caps = httpx.get(ort_server.url + "/capabilities").json()
    ort = caps["pipeline"]["ort"]
    assert ort["provider_options"] == {CPU: {}}
    assert ort["session_options"]["enable_cpu_mem_arena"] is False
    assert ort["session_options"]["intra_op_num_threads"] == 1
    assert ort["io_binding"] is True and ort["pinned_memory"] is False
    assert ort["ort_device"] == "CPU"
    settings = caps["snapshot"]["provider_probe"]["settings"]
    assert settings["provider_options"] == {CPU: {}}
    assert settings["session_options"]["enable_cpu_mem_arena"] is False
    assert settings["engine_cache"] is None
    host = caps["snapshot"]["host"]
    assert set(host["container"]) >= {"cli_version", "nvidia_require_cuda",
                                      "nvidia_driver_capabilities"}
