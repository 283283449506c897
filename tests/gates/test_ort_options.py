"""ONNX Runtime settings in effect: read from a real CPU session, judged against policy bounds."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gates.capability.collect import collect_local, default_probes
from gates.capability.ort_probe import probe_onnxruntime
from gates.capability.ort_settings import OrtSettings, option_flag, ort_violations
from gates.capability.requirements import check_capability
from gates.capability.snapshot import CapabilitySnapshot
from gates.capability.spec import CapabilityRequirements, OrtBounds

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
#: What ORT 1.2x's get_provider_options() reports for a CUDA session left at its defaults.
CUDA_DEFAULTS = {
    "device_id": "0", "gpu_mem_limit": "18446744073709551615",
    "arena_extend_strategy": "kNextPowerOfTwo", "cudnn_conv_algo_search": "EXHAUSTIVE",
    "do_copy_in_default_stream": "1", "enable_cuda_graph": "0", "cudnn_conv_use_max_workspace": "1",
}
TRT_DEFAULTS = {"device_id": "0", "trt_fp16_enable": "0", "trt_int8_enable": "0",
                "trt_engine_cache_enable": "0", "trt_engine_cache_path": "",
                "trt_timing_cache_enable": "0", "trt_timing_cache_path": ""}


def test_provider_and_session_options_from_a_real_cpu_session() -> None:
    probe = probe_onnxruntime((CPU,), timeout_s=30, warm_runs=0,
                              session_options={"enable_cpu_mem_arena": False})
    s = probe.settings
    assert s is not None
    assert s.provider_options == {CPU: {}}  # the CPU EP has no provider options
    assert s.session_options["enable_cpu_mem_arena"] is False
    assert s.session_options["enable_mem_pattern"] is True
    assert s.session_options["graph_optimization_level"] == "GraphOptimizationLevel.ORT_ENABLE_ALL"
    assert s.io_binding is True and s.pinned_memory is False
    assert s.engine_cache is None and s.gpu_mem_limit is None and not s.int8_enabled
    assert probe.build_info is None or "git-commit-id" in probe.build_info
    assert probe.device == "CPU"
    default = probe_onnxruntime((CPU,), timeout_s=30, warm_runs=0).settings
    assert default is not None and default.session_options["enable_cpu_mem_arena"] is True


def test_bad_session_option_is_a_session_error_not_a_crash() -> None:
    probe = probe_onnxruntime((CPU,), timeout_s=30, warm_runs=0,
                              session_options={"no_such_option": 1})
    assert probe.settings is None and "no_such_option" in (probe.session_error or "")


def test_settings_reach_the_snapshot_and_its_round_trip() -> None:
    probes = [p for p in default_probes((CPU,), session_options={"enable_cpu_mem_arena": False})
              if p.name == "onnxruntime"]
    snap = collect_local((CPU,), probes=probes, deadline_s=30)
    assert snap.provider_probe is not None and snap.provider_probe.settings is not None
    again = CapabilitySnapshot.model_validate_json(snap.model_dump_json())
    assert again == snap
    bounds = CapabilityRequirements(ort=OrtBounds(cpu_mem_arena=True))
    (v,) = check_capability(bounds, snap).violations
    assert v.check == "ort.enable_cpu_mem_arena" and v.observed is False


def settings(cuda: dict[str, str] | None = None, trt: dict[str, str] | None = None,
             **session: Any) -> OrtSettings:
    opts = {}
    if trt is not None:
        opts[TRT] = {**TRT_DEFAULTS, **trt}
    if cuda is not None:
        opts[CUDA] = {**CUDA_DEFAULTS, **cuda}
    opts[CPU] = {}
    return OrtSettings(provider_options=opts, session_options=session, io_binding=True)


def checks(bounds: OrtBounds, s: OrtSettings | None) -> list[str]:
    return [v.check for v in ort_violations(bounds, s)]


def test_gpu_mem_limit_bounds() -> None:
    unset, capped = settings(cuda={}), settings(cuda={"gpu_mem_limit": str(8 * 2**30)})
    assert unset.gpu_mem_limit is None and capped.gpu_mem_limit == 8 * 2**30
    required = OrtBounds(require_gpu_mem_limit=True)
    assert checks(required, unset) == ["ort.gpu_mem_limit"]
    assert checks(required, capped) == []
    (v,) = ort_violations(required, settings())
    assert "not bound" in v.message
    at_most = OrtBounds.model_validate({"gpuMemLimitMax": "6GiB"})
    assert at_most.gpu_mem_limit_max == 6 * 2**30
    (v,) = ort_violations(at_most, capped)
    assert v.observed == 8 * 2**30 and "at most" in v.message
    assert checks(at_most, unset) == ["ort.gpu_mem_limit"]  # unset is unlimited
    assert checks(at_most, settings()) == []  # no CUDA arena, nothing to bound
    assert checks(OrtBounds(gpu_mem_limit_max=16 * 2**30), capped) == []


def test_arena_strategy_and_cudnn_search() -> None:
    bounds = OrtBounds(arena_extend_strategy="kSameAsRequested", cudnn_conv_algo_search="HEURISTIC")
    assert checks(bounds, settings(cuda={})) == ["ort.arena_extend_strategy",
                                                 "ort.cudnn_conv_algo_search"]
    good = settings(cuda={"arena_extend_strategy": "kSameAsRequested",
                          "cudnn_conv_algo_search": "HEURISTIC"})
    assert checks(bounds, good) == []
    numeric = settings(cuda={"arena_extend_strategy": "1", "cudnn_conv_algo_search": "1"})
    assert checks(bounds, numeric) == []


def test_int8_needs_allow_int8() -> None:
    int8 = settings(trt={"trt_int8_enable": "1"})
    assert int8.int8_enabled
    assert checks(OrtBounds(), int8) == ["ort.int8"]
    assert checks(OrtBounds(allow_int8=True), int8) == []
    assert checks(OrtBounds(), settings(trt={})) == []


def test_engine_cache_is_recorded_and_can_be_required() -> None:
    on = settings(trt={"trt_engine_cache_enable": "True", "trt_engine_cache_path": "/engines",
                       "trt_timing_cache_enable": "1", "trt_timing_cache_path": "/engines/t"})
    assert on.engine_cache is not None
    assert on.engine_cache.model_dump() == {
        "engine_cache_enable": True, "engine_cache_path": "/engines",
        "timing_cache_enable": True, "timing_cache_path": "/engines/t"}
    assert on.model_dump(mode="json")["engine_cache"]["engine_cache_path"] == "/engines"
    off = settings(trt={})
    assert off.engine_cache is not None and not off.engine_cache.engine_cache_enable
    assert checks(OrtBounds(require_engine_cache=True), off) == ["ort.trt_engine_cache_enable"]
    assert checks(OrtBounds(require_engine_cache=True), on) == []
    # an edited derived value is rejected on read
    doc = on.model_dump(mode="json")
    doc["engine_cache"]["engine_cache_enable"] = False
    with pytest.raises(ValidationError, match="engine_cache"):
        OrtSettings.model_validate(doc)


def test_missing_settings_are_a_violation_when_bounded() -> None:
    (v,) = ort_violations(OrtBounds(), None, "onnxruntime probe timeout")
    assert v.check == "ort.settings" and "timeout" in v.message


def test_option_flags() -> None:
    assert option_flag("1") and option_flag("True") and option_flag("true")
    assert option_flag("0") is False and option_flag("False") is False and option_flag(None) is None


def test_policy_block_and_the_int8_accuracy_gate() -> None:
    req = CapabilityRequirements.model_validate({
        "ort": {"gpuMemLimitMax": "20GiB", "requireGpuMemLimit": True,
                "arenaExtendStrategy": "kSameAsRequested", "allowInt8": True}})
    assert req.ort is not None and req.ort.gpu_mem_limit_max == 20 * 2**30
    problem = req.int8_accuracy_gate_problem("report")
    assert problem is not None and "distance" in problem and "report" in problem
    assert req.int8_accuracy_gate_problem(None) is not None
    assert req.int8_accuracy_gate_problem("distance") is None
    assert CapabilityRequirements().int8_accuracy_gate_problem("report") is None
    for bad in ({"gpuMemLimitMax": "lots"}, {"gpuMemLimitMax": 0},
                {"arenaExtendStrategy": "kGrow"}, {"allowInt9": True}):
        with pytest.raises(ValidationError):
            CapabilityRequirements.model_validate({"ort": bad})
