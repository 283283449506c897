"""ONNX Runtime provider probe: what a session *binds*, not what the build claims.

Why: with CUDA or TensorRT unusable, ``InferenceSession`` silently binds the CPU provider
after one warning, and ``get_available_providers()`` may still list CUDA on a GPU build with
broken libraries. Only ``session.get_providers()`` tells the truth, so the probe builds a tiny
attention graph, creates a session with the requested order (default TensorRT -> CUDA -> CPU)
and the server's provider and session options, records the settings in effect
(:class:`~gates.capability.ort_settings.OrtSettings`), runs it with I/O binding on the bound
device, repeats it in strict mode (``session.disable_cpu_ep_fallback=1``) and scans everything
ORT printed. It runs in a child
process (see :mod:`gates.capability._ort_child`) with the probe's deadline, so ``onnxruntime``
is never imported into the controller.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gates.capability._ort_child import MARK
from gates.capability.logscan import scan_lines, strip_ansi
from gates.capability.probe import ProbeAbsentError
from gates.capability.snapshot import CPU_PROVIDER, ProviderProbe

__all__ = ["DEFAULT_PROVIDERS", "ProbeTimeoutError", "probe_onnxruntime"]

DEFAULT_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    CPU_PROVIDER,
)
_CHILD = Path(__file__).with_name("_ort_child.py")
_KEEP_LOG_LINES = 50


class ProbeTimeoutError(TimeoutError):
    """The probe's child process did not answer within its budget and was killed."""


def _lines(text: str | bytes | None) -> list[str]:
    if text is None:
        return []
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return [strip_ansi(line) for line in text.splitlines() if line.strip()]


def probe_onnxruntime(
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    *,
    timeout_s: float,
    warm_runs: int = 10,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    session_options: Mapping[str, bool | int] | None = None,
) -> ProviderProbe:
    """Run the provider probe in a child process of this interpreter.

    ``provider_options`` (per provider, e.g. ``{"CUDAExecutionProvider": {"gpu_mem_limit":
    "8589934592"}}``) and ``session_options`` (``SessionOptions`` attributes, e.g.
    ``{"enable_cpu_mem_arena": False}``) configure the probe session like the server's, so
    :attr:`ProviderProbe.settings` records the settings the server runs with, as ORT reports
    them (``get_provider_options()``, defaults filled in).

    Raises:
        ProbeAbsentError: onnxruntime is not installed.
        ProbeTimeoutError: the child did not finish within ``timeout_s`` (it is killed).
        RuntimeError: the child failed before reporting (its last output is in the message).
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise ProbeAbsentError("onnxruntime is not installed")
    # -P: do not put this package's directory on the child's sys.path (its module names
    # would shadow the standard library's and numpy's imports).
    argv = [
        sys.executable,
        "-P",
        str(_CHILD),
        "--providers",
        ",".join(providers),
        "--warm-runs",
        str(warm_runs),
    ]
    if provider_options:
        opts = {p: {k: str(v) for k, v in o.items()} for p, o in provider_options.items()}
        argv += ["--provider-options", json.dumps(opts)]
    if session_options:
        argv += ["--session-options", json.dumps(dict(session_options))]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        last = (_lines(e.stderr) or _lines(e.stdout) or ["no output"])[-1]
        raise ProbeTimeoutError(
            f"onnxruntime probe killed after {timeout_s:g} s (last output: {last})"
        ) from e
    out_lines = proc.stdout.splitlines()
    marked = [line for line in out_lines if line.startswith(MARK)]
    log_lines = _lines("\n".join(x for x in out_lines if not x.startswith(MARK)))
    log_lines += _lines(proc.stderr)
    if not marked:
        last = log_lines[-1] if log_lines else "no output"
        raise RuntimeError(f"onnxruntime probe exited {proc.returncode}: {last}")
    result = json.loads(marked[-1].removeprefix(MARK))
    hits = scan_lines(result.get("warnings", []), source="python-warnings")
    hits += scan_lines(log_lines, source="onnxruntime-log")
    return ProviderProbe.model_validate(
        {**result, "log_lines": log_lines[-_KEEP_LOG_LINES:], "log_hits": hits}
    )
