"""Probes on this machine (no GPU, PyPI's CPU onnxruntime) and the time box around them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest

from gates.capability import ort_probe
from gates.capability.collect import collect_local, default_probes
from gates.capability.host import probe_host
from gates.capability.ort_probe import DEFAULT_PROVIDERS, ProbeTimeoutError, probe_onnxruntime
from gates.capability.probe import Probe, ProbeAbsentError, run_probes
from gates.capability.torch_probe import probe_torch

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
HAS_GPU = Path("/dev/nvidiactl").exists()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hanging probes wait on; set at teardown so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def test_hanging_probe_is_a_timeout_and_the_snapshot_keeps_its_deadline(
    release: threading.Event,
) -> None:
    deadline = 8.0
    probes = [*default_probes(deadline_s=deadline), Probe("hang", release.wait, timeout_s=60)]
    t0 = time.monotonic()
    snap = collect_local(probes=probes, deadline_s=deadline)
    elapsed = time.monotonic() - t0
    assert elapsed < deadline + 1.0, elapsed
    hang = snap.probe("hang")
    assert hang is not None and hang.status == "timeout"
    assert hang.error == "no answer within 8 s" and hang.duration_s >= deadline - 0.05
    for name in ("host", "libraries", "onnxruntime"):
        fact = snap.probe(name)
        assert fact is not None and fact.status == "ok", fact
    assert snap.provider_probe is not None and snap.host is not None


def test_probe_failures_are_facts(release: threading.Event) -> None:
    def boom() -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    def absent() -> None:
        raise ProbeAbsentError("xformers is not installed")

    t0 = time.monotonic()
    out = run_probes(
        [
            Probe("boom", boom, 5),
            Probe("absent", absent, 5),
            Probe("quick", lambda: 42, 5),
            Probe("slow", release.wait, 0.5),
        ],
        deadline_s=5,
    )
    assert time.monotonic() - t0 < 2.0
    assert out["boom"].fact.status == "error"
    assert out["boom"].fact.error == "OSError: libnvidia-ml.so.1: cannot open shared object file"
    assert (out["absent"].fact.status, out["absent"].fact.error) == (
        "absent",
        "xformers is not installed",
    )
    assert out["quick"].value == 42 and out["quick"].fact.status == "ok"
    assert out["slow"].fact.status == "timeout" and out["slow"].value is None
    with pytest.raises(ValueError, match="duplicate"):
        run_probes([Probe("a", int, 1), Probe("a", int, 1)], deadline_s=1)


def test_hung_ort_child_is_killed_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    child = tmp_path / "hang.py"
    child.write_text(
        "import os, sys, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('initializing CUDA...', file=sys.stderr, flush=True)\n"
        "time.sleep(600)\n"
    )
    monkeypatch.setattr(ort_probe, "_CHILD", child)
    t0 = time.monotonic()
    with pytest.raises(ProbeTimeoutError, match=r"killed after 1\.5 s.*initializing CUDA"):
        probe_onnxruntime(timeout_s=1.5)
    assert time.monotonic() - t0 < 3.0
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    out = run_probes(
        [Probe("onnxruntime", lambda: probe_onnxruntime(timeout_s=0.5), 2)], deadline_s=5
    )
    assert out["onnxruntime"].fact.status == "timeout"


def test_provider_probe_catches_the_cpu_fallback() -> None:
    """The talk's failure mode with PyPI's CPU onnxruntime: CUDA requested, CPU bound."""
    probe = probe_onnxruntime(DEFAULT_PROVIDERS, timeout_s=30)
    if CUDA in probe.available:  # pragma: no cover - a GPU build of ORT
        pytest.skip("onnxruntime here is a GPU build; the fallback cannot be provoked")
    assert probe.requested == DEFAULT_PROVIDERS
    assert probe.bound == (CPU,) and probe.effective == (CPU,) and probe.cpu_fallback
    assert probe.io_binding_device == "cpu"
    assert probe.max_abs_error is not None and probe.max_abs_error < 1e-5  # the graph ran
    assert any(f"Specified provider '{CUDA}' is not in available" in w for w in probe.warnings)
    assert probe.strict is not None and not probe.strict.ok
    assert probe.strict.providers == ("TensorrtExecutionProvider", CUDA)
    assert "fallback to CPU EP has been explicitly disabled" in (probe.strict.error or "")
    categories = {(h.source, h.category) for h in probe.log_hits}
    assert ("python-warnings", "provider-unavailable") in categories
    assert ("onnxruntime-log", "cpu-fallback") in categories  # ORT's C++ log on fd 2
    assert probe.first_run_ms is not None and probe.warm_run_ms is not None


def test_provider_probe_cpu_only_is_no_fallback() -> None:
    probe = probe_onnxruntime((CPU,), timeout_s=30, warm_runs=0)
    assert probe.bound == (CPU,) and not probe.cpu_fallback
    assert probe.strict is None and probe.warnings == () and probe.log_hits == ()
    assert probe.warm_run_ms is None


def test_host_probe_reports_nvml_in_its_own_words(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = probe_host()
    if HAS_GPU:  # pragma: no cover - the GPU machine
        assert facts.nvml_error is None and facts.gpus and facts.driver_version
    else:
        assert facts.nvml_error == "NVMLError_LibraryNotFound: NVML Shared Library Not Found"
        assert facts.gpus == () and facts.device_nodes == () and not facts.libcuda_loadable
        assert "libcuda.so.1" in (facts.libcuda_error or "")

    def not_loaded() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", not_loaded)
    assert probe_host().nvml_error == "NVMLError_DriverNotLoaded: Driver Not Loaded"


def test_torch_probe_reports_this_process_flags() -> None:
    torch = pytest.importorskip("torch")
    before = probe_torch()
    assert before.version == torch.__version__
    assert before.cuda_available is torch.cuda.is_available()
    flash = torch.backends.cuda.flash_sdp_enabled()
    torch.backends.cuda.enable_flash_sdp(not flash)
    try:
        after = probe_torch()
    finally:
        torch.backends.cuda.enable_flash_sdp(flash)
    assert before.sdpa_enabled.flash is flash and after.sdpa_enabled.flash is (not flash)
    if not torch.cuda.is_available():
        assert before.fused_attention == () and before.fp16_cuda is None


def test_importing_the_controller_loads_neither_torch_nor_onnxruntime() -> None:
    """Torch is imported in-process by its probe (by design: per-process flags), so it is
    left out here; onnxruntime must stay in the probe's child process."""
    code = (
        "import sys\n"
        "import gates.capability, gates.utilization, rollout.cli.snapshot, rollout.cli.admit\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        "from gates.capability import collect_local, default_probes\n"
        "probes = [p for p in default_probes() if p.name != 'torch']\n"
        "snap = collect_local(probes=probes, deadline_s=30)\n"
        "assert snap.provider_probe is not None\n"
        "assert 'onnxruntime' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_log_files_are_scanned_into_the_snapshot(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("start\nWARNING[XFORMERS]: xFormers can't load C++/CUDA extensions.\n")
    snap = collect_local(
        probes=default_probes((CPU,), deadline_s=20, log_files=[log]), deadline_s=20
    )
    assert [(h.source, h.line, h.category) for h in snap.log_hits] == [
        (str(log), 2, "xformers-disabled")
    ]


def test_container_toolkit_facts(tmp_path: Path) -> None:
    """nvidia-container-cli's own output (a script printing it), and the toolkit's variables."""
    from gates.capability.host import container_toolkit

    cli = tmp_path / "nvidia-container-cli"
    cli.write_text("#!/bin/sh\necho 'cli-version: 1.17.4'\necho 'lib-version: 1.17.4'\n"
                   "echo 'build date: 2025-01-23T10:52+00:00'\n")
    cli.chmod(0o755)
    env = {"NVIDIA_REQUIRE_CUDA": "cuda>=12.4 brand=tesla,driver>=470,driver<471",
           "NVIDIA_DRIVER_CAPABILITIES": "compute,utility", "NVIDIA_VISIBLE_DEVICES": "all"}
    facts = container_toolkit(env, cli=str(cli))
    assert facts.cli_version == "1.17.4" and facts.lib_version == "1.17.4"
    assert facts.cli_error is None
    assert facts.nvidia_require_cuda == env["NVIDIA_REQUIRE_CUDA"]
    assert facts.nvidia_driver_capabilities == "compute,utility"
    absent = container_toolkit({}, cli=str(tmp_path / "absent-cli"))
    assert absent.cli_version is None and "not found on PATH" in (absent.cli_error or "")
    assert absent.nvidia_require_cuda is None
    cli.write_text("#!/bin/sh\necho 'nvidia-container-cli: initialization error' >&2\nexit 1\n")
    broken = container_toolkit({}, cli=str(cli))
    assert broken.cli_version is None and "exited 1: nvidia-container-cli: init" in (
        broken.cli_error or "")


def test_host_probe_records_the_container_toolkit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
    facts = probe_host()
    assert facts.container is not None
    assert facts.container.nvidia_driver_capabilities == "compute,utility"
    if shutil.which("nvidia-container-cli") is None:
        assert "not found on PATH" in (facts.container.cli_error or "")
