"""Diff and capability-gate checks, one test per pathology of the talk.

Blue is the H100 stack of shared/notes/gpu-anchors.md (driver 580.159.04, CUDA 13.0, torch
2.11.0+cu130, cuDNN 9.19); each green differs from it in exactly one pathology, and each
test asserts both what ``diff`` reports and what the gate refuses (with blue itself admitted
under the same requirements, so no check passes vacuously).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from gates.capability.diff import diff
from gates.capability.logscan import LogHit, scan_text
from gates.capability.requirements import check_capability
from gates.capability.snapshot import CapabilitySnapshot
from gates.capability.spec import BaselineRequiredError, CapabilityRequirements
from gates.verdict import Verdict

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
H100 = "NVIDIA H100 80GB HBM3"


def snapshot(
    *,
    bound: tuple[str, ...] = (TRT, CUDA, CPU),
    cuda_runtime: str = "13.0",
    tensorrt: str = "10.13.0",
    sdpa_enabled: bool = True,
    gpu_name: str = H100,
    gpus: int = 1,
) -> CapabilitySnapshot:
    """A GPU-stack snapshot; the keyword arguments are the pathologies."""
    has_gpu = gpus > 0
    fused = {"flash": sdpa_enabled, "mem_efficient": sdpa_enabled, "cudnn": sdpa_enabled}
    doc: dict[str, Any] = {
        "taken_at": datetime(2026, 11, 27, tzinfo=UTC),
        "hostname": "node-a",
        "deadline_s": 30.0,
        "duration_s": 4.2,
        "host": {
            "nvml_error": None if has_gpu else "NVMLError_DriverNotLoaded: Driver Not Loaded",
            "driver_version": "580.159.04" if has_gpu else None,
            "cuda_driver_version": "13.0" if has_gpu else None,
            "gpus": [
                {
                    "index": i,
                    "name": gpu_name,
                    "uuid": f"GPU-{i:08d}",
                    "memory_total_mib": 81559,
                    "compute_capability": "9.0",
                    "mig_mode": False,
                    "ecc_enabled": True,
                }
                for i in range(gpus)
            ],
            "device_nodes": (
                [f"/dev/nvidia{i}" for i in range(gpus)] + ["/dev/nvidiactl", "/dev/nvidia-uvm"]
            ),
            "libcuda_loadable": has_gpu,
            "libcuda_error": None if has_gpu else "libcuda.so.1: cannot open shared object file",
        },
        "libraries": [
            {"name": "cudart", "version": cuda_runtime},
            {"name": "cudnn", "version": "9.19.0"},
            {"name": "tensorrt", "version": tensorrt},
        ],
        "torch": {
            "version": "2.11.0+cu130",
            "cuda": cuda_runtime,
            "cudnn": "9.19.0",
            "cuda_available": has_gpu,
            "device_count": gpus,
            "sdpa_enabled": {**fused, "math": True},
            "sdpa_usable": {"flash": True, "mem_efficient": True, "cudnn": True, "math": True},
            "fp16_cuda": has_gpu,
        },
        "provider_probe": {
            "onnxruntime_version": "1.23.0",
            "device": "GPU",
            "available": [TRT, CUDA, CPU],
            "requested": [TRT, CUDA, CPU],
            "bound": list(bound),
            "strict": {"providers": [TRT, CUDA], "ok": bound[0] != CPU, "bound": list(bound)},
        },
    }
    return CapabilitySnapshot.model_validate(doc)


BLUE = snapshot()
FULL = CapabilityRequirements(
    require_providers=(CUDA,),
    forbid_providers=(CPU,),
    min_gpus=1,
    gpu_model="same-as-blue",
    versions={"cuda_runtime": "same-as-blue", "tensorrt": "same-as-blue"},  # type: ignore[arg-type]
    fingerprint="same-as-blue",
    require_fused_attention=True,
    require_fp16=True,
)


def test_blue_against_itself_is_admitted_and_diff_is_empty() -> None:
    report = check_capability(FULL, BLUE, blue=BLUE)
    assert report.admitted and report.verdict is Verdict.PASS, report.violations
    d = diff(BLUE, snapshot())
    assert d.entries == () and d.fingerprint_equal


def test_cpu_ep_bound() -> None:
    green = snapshot(bound=(CPU,))
    assert green.provider_probe is not None and green.provider_probe.cpu_fallback
    d = diff(BLUE, green)
    assert {"bound", "cpu_fallback", "effective", "strict.ok"} <= d.keys("providers")
    assert d.keys("versions") == {"bound_providers"} and not d.fingerprint_equal
    report = check_capability(FULL, green, blue=BLUE)
    assert report.checks() == {"providers.required", "providers.forbidden", "fingerprint"}
    required = next(v for v in report.violations if v.check == "providers.required")
    assert required.expected == CUDA and required.observed == [CPU]
    assert "fell back to CPU" in required.message
    assert f"requested [{TRT}, {CUDA}, {CPU}] -> bound [{CPU}]" in required.message
    forbidden = next(v for v in report.violations if v.check == "providers.forbidden")
    assert forbidden.message.startswith("CPU fallback: ")


def test_a_provider_that_failed_to_load_is_named_with_its_library() -> None:
    """The H100 run (bench/results/gpu_validation_h100.md): TensorRT's provider library could
    not open libnvinfer.so.10, ORT retried, and the refusal quoted only the retry's error."""
    green = snapshot(bound=(CUDA, CPU))
    assert green.provider_probe is not None
    load_error = ("[E:onnxruntime:Default, provider_bridge_ort.cc:2430] Failed to load library "
                  "libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot "
                  "open shared object file: No such file or directory")
    probe = green.provider_probe.model_copy(update={"log_hits": (
        LogHit(source="onnxruntime-log", line=4, category="cpu-fallback",
               phrase="ort-ep-error-retry", text="Falling back to [...] and retrying."),
        LogHit(source="onnxruntime-log", line=11, category="provider-create-failed",
               phrase="ort-provider-library-load", text=load_error))})
    green = green.model_copy(update={"provider_probe": probe})
    report = check_capability(CapabilityRequirements(require_providers=(TRT,)), green)
    (v,) = report.violations
    assert v.check == "providers.required" and v.observed == [CUDA]
    assert "provider failed to load: " in v.message and "libnvinfer.so.10" in v.message
    report = check_capability(CapabilityRequirements(require_providers=(CUDA,)), green)
    assert report.admitted  # the bound provider is not blamed for the other one's library


def test_cpu_behind_a_gpu_provider_is_not_a_fallback() -> None:
    """ORT always appends the CPU EP for shape ops; forbidding CPU must not refuse that."""
    green = snapshot(bound=(CUDA, CPU))
    report = check_capability(CapabilityRequirements(forbid_providers=(CPU,)), green)
    assert report.admitted
    report = check_capability(CapabilityRequirements(require_providers=(TRT,)), green)
    assert report.checks() == {"providers.required"}
    assert "fell back" not in report.violations[0].message


def test_cuda_minor_drift() -> None:
    green = snapshot(cuda_runtime="12.8")
    d = diff(BLUE, green)
    assert d.keys("versions") == {"cuda_runtime"}
    assert {"cuda"} <= d.keys("torch") and d.keys("libraries") == {"cudart"}
    report = check_capability(FULL, green, blue=BLUE)
    assert report.checks() == {"versions.cuda_runtime", "fingerprint"}
    v = next(v for v in report.violations if v.check == "versions.cuda_runtime")
    assert (v.expected, v.observed) == ("13.0", "12.8") and "blue" in v.message
    exact = CapabilityRequirements.model_validate({"versions": {"cudaRuntime": "12.8"}})
    assert check_capability(exact, green).admitted
    assert not check_capability(exact, BLUE).admitted


def test_tensorrt_version_change() -> None:
    green = snapshot(tensorrt="10.8.0")
    d = diff(BLUE, green)
    assert d.keys("versions") == {"tensorrt"} and d.keys("libraries") == {"tensorrt"}
    report = check_capability(FULL, green, blue=BLUE)
    assert report.checks() == {"versions.tensorrt", "fingerprint"}
    pinned = CapabilityRequirements(versions={"tensorrt": "10.13.0"})  # type: ignore[arg-type]
    violation = check_capability(pinned, green).violations[0]
    assert (violation.expected, violation.observed) == ("10.13.0", "10.8.0")


def test_fused_attention_off() -> None:
    green = snapshot(sdpa_enabled=False)
    assert green.torch is not None and green.torch.fused_attention == ()
    d = diff(BLUE, green)
    assert {"sdpa_enabled.flash", "sdpa_enabled.mem_efficient", "fused_attention"} <= d.keys(
        "torch"
    )
    assert d.fingerprint_equal  # same versions: only the capability check sees it
    report = check_capability(FULL, green, blue=BLUE)
    assert report.checks() == {"attention.fused"}
    assert "'flash': False" in report.violations[0].message


def test_fused_attention_enabled_but_unusable() -> None:
    derived = {"versions": True, "fingerprint": True, "torch": {"fused_attention"}}
    doc = BLUE.model_dump(mode="json", exclude=derived)  # type: ignore[arg-type]
    doc["torch"]["sdpa_usable"] = {"flash": False, "mem_efficient": False, "cudnn": False}
    doc["torch"]["sdpa_errors"] = {"flash": "no kernel image is available for execution"}
    green = CapabilitySnapshot.model_validate(doc)
    report = check_capability(CapabilityRequirements(require_fused_attention=True), green)
    assert report.checks() == {"attention.fused"}
    assert "no kernel image" in report.violations[0].message


def test_device_missing() -> None:
    green = snapshot(gpus=0)
    d = diff(BLUE, green)
    assert {"count", "nvml_error", "gpu0.name"} <= d.keys("gpu")
    assert {"device_nodes", "libcuda_loadable"} <= d.keys("host")
    report = check_capability(CapabilityRequirements(min_gpus=1), green)
    assert report.checks() == {"gpu.count", "gpu.device-nodes", "gpu.libcuda"}
    count = next(v for v in report.violations if v.check == "gpu.count")
    assert count.observed == "NVMLError_DriverNotLoaded: Driver Not Loaded"
    two = check_capability(CapabilityRequirements(min_gpus=2), BLUE)
    assert two.checks() == {"gpu.count", "gpu.device-nodes"}  # 1 of 2: libcuda is fine


def test_different_gpu_model() -> None:
    green = snapshot(gpu_name="NVIDIA A10G")
    d = diff(BLUE, green)
    assert d.keys("gpu") == {"gpu0.name"} and d.fingerprint_equal
    report = check_capability(FULL, green, blue=BLUE)
    assert report.checks() == {"gpu.model"}
    assert report.violations[0].observed == ["NVIDIA A10G"]
    exact = CapabilityRequirements(gpu_model=H100)
    assert check_capability(exact, BLUE).admitted and not check_capability(exact, green).admitted


def test_same_as_blue_without_blue_is_bad_input() -> None:
    with pytest.raises(BaselineRequiredError, match=r"versions\.tensorrt, gpu_model, fingerprint"):
        check_capability(FULL, BLUE)


def test_log_hits_are_itemized_with_their_lines() -> None:
    log = "ok\nloading engine\n[W] Deserialize the cuda engine failed.\nServing on :8000\n"
    hits = scan_text(log, source="server.log")
    report = check_capability(CapabilityRequirements(), BLUE, log_hits=hits)
    assert report.checks() == {"logs.engine-rebuild"}
    assert report.violations[0].message.startswith("server.log:3: engine-rebuild")
    allowed = CapabilityRequirements(forbid_log_categories=())
    assert check_capability(allowed, BLUE, log_hits=hits).admitted
    custom = CapabilityRequirements(forbid_log_categories=(), forbid_log_phrases=(r"Serving on",))
    custom_hits = scan_text(log, source="server.log", phrases=custom.log_phrases())
    report = check_capability(custom, BLUE, log_hits=custom_hits)
    assert report.checks() == {"logs.policy"} and report.violations[0].observed.endswith(  # type: ignore[union-attr]
        "Serving on :8000"
    )


def test_snapshot_log_hits_count_too() -> None:
    doc = BLUE.model_dump(mode="json", exclude={"versions", "fingerprint"})
    doc["log_hits"] = [
        LogHit(line=7, category="xformers-disabled", phrase="x", text="xformers").model_dump()
    ]
    green = CapabilitySnapshot.model_validate(doc)
    assert check_capability(CapabilityRequirements(), green).checks() == {"logs.xformers-disabled"}
    assert diff(BLUE, green).keys("logs") == {"xformers-disabled"}


def test_policy_block_uses_camel_case_and_rejects_typos() -> None:
    req = CapabilityRequirements.model_validate(
        {
            "type": "capability",
            "name": "gpu-path",
            "requireProviders": [CUDA],
            "forbidProviders": [CPU],
            "minGpus": 1,
            "versions": {"cudaRuntime": "same-as-blue", "driverBranch": "580"},
            "requireFusedAttention": True,
            "forbidLogPhrases": ["falling back"],
        }
    )
    assert req.versions.cuda_runtime == "same-as-blue" and req.min_gpus == 1
    assert req.needs_blue() == ["versions.cuda_runtime"]
    with pytest.raises(ValidationError, match="requireProvider"):
        CapabilityRequirements.model_validate({"requireProvider": [CUDA]})
    with pytest.raises(ValidationError, match="ExecutionProvider"):
        CapabilityRequirements.model_validate({"requireProviders": ["CUDA"]})
    with pytest.raises(ValidationError, match="not a valid regex"):
        CapabilityRequirements.model_validate({"forbidLogPhrases": ["(unclosed"]})
    with pytest.raises(ValidationError):
        CapabilityRequirements.model_validate({"type": "latency"})
