"""Child process of the ONNX Runtime provider probe (run as a script, ``python -P FILE``).

Why a separate process: ORT's signals arrive on three channels. The Python warning that a
requested provider is missing is shown once per call site (a long-lived process may already
have shown it), the C++ log goes straight to file descriptor 2, and the EP-error retry is a
``print``. A fresh process shows all of them, the parent captures them all, and a hang in
CUDA/TensorRT initialization can be killed. This file imports nothing from ``gates`` so the
child starts with only numpy, onnx and onnxruntime; it prints one marked JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from typing import Any

MARK = "@@rollout-gates-ort-probe@@"
SEQ, DIM = 16, 32
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
CPU = "CPUExecutionProvider"


def _attention_model() -> tuple[bytes, Any, Any]:
    """softmax(Q K^T / sqrt(d)) V over one input, with fixed projections; and its reference."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal((DIM, DIM)).astype(np.float32) / DIM**0.5 for n in "qkv"}
    scale = np.array(1.0 / DIM**0.5, dtype=np.float32)
    inits = [numpy_helper.from_array(a, f"W{n}") for n, a in w.items()]
    inits.append(numpy_helper.from_array(scale, "scale"))
    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"]),
        helper.make_node("MatMul", ["x", "Wk"], ["k"]),
        helper.make_node("MatMul", ["x", "Wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["s_scaled"]),
        helper.make_node("Softmax", ["s_scaled"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, DIM])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ORT since 1.13
    onnx.checker.check_model(model)

    x = rng.standard_normal((1, SEQ, DIM)).astype(np.float32)
    q, k, v = (x @ w[n] for n in "qkv")
    s = q @ k.transpose(0, 2, 1) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return model.SerializeToString(), x, p @ v


def _run(ort: Any, sess: Any, x: Any, expected: Any, warm_runs: int) -> dict[str, Any]:
    """Run with I/O binding on the bound device; first and warm latency, and the error."""
    import numpy as np

    device = "cuda" if sess.get_providers()[0] in GPU_PROVIDERS else "cpu"
    binding = sess.io_binding()
    binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x, device, 0))
    binding.bind_output("y", device)
    times = []
    for _ in range(1 + warm_runs):
        t = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append((time.perf_counter() - t) * 1e3)
    y = binding.copy_outputs_to_cpu()[0]
    return {
        "io_binding_device": device,
        "first_run_ms": times[0],
        "warm_run_ms": statistics.median(times[1:]) if warm_runs else None,
        "max_abs_error": float(np.max(np.abs(y - expected))),
    }


def _strict(ort: Any, model: bytes, providers: list[str]) -> dict[str, Any] | None:
    """The session again with CPU fallback disabled (CPU itself may not be listed then)."""
    gpu = [p for p in providers if p != CPU]
    if not gpu:
        return None
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(model, opts, providers=gpu)
    except Exception as e:
        return {"providers": gpu, "ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"providers": gpu, "ok": True, "bound": sess.get_providers()}


#: Session options recorded in the settings (read back from the session, not from the request).
SESSION_OPTION_KEYS = ("enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse",
                       "intra_op_num_threads", "inter_op_num_threads",
                       "graph_optimization_level", "execution_mode")


def _session_options(ort: Any, requested: dict[str, Any]) -> Any:
    """``SessionOptions`` with the requested attributes set (``enable_cpu_mem_arena``...)."""
    opts = ort.SessionOptions()
    for key, value in requested.items():
        setattr(opts, key, value)
    return opts


def _settings(sess: Any) -> dict[str, Any]:
    """The settings in effect: provider options as ORT fills them in, session options read
    back, and how the probe feeds the session (I/O binding, no pinned host buffers)."""
    opts = sess.get_session_options()
    session: dict[str, Any] = {}
    for key in SESSION_OPTION_KEYS:
        value = getattr(opts, key, None)
        if value is not None:
            session[key] = value if isinstance(value, bool | int) else str(value)
    return {
        "provider_options": {p: {k: str(v) for k, v in o.items()}
                             for p, o in sess.get_provider_options().items()},
        "session_options": session,
        "io_binding": True,
        "pinned_memory": False,
    }


def probe(providers: list[str], warm_runs: int, provider_options: dict[str, Any] | None = None,
          session_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the parent turns into a ``ProviderProbe``.

    ``provider_options`` (per provider name) and ``session_options`` (``SessionOptions``
    attributes) configure the session like the server's own, so the settings recorded are the
    ones the server runs with.
    """
    import onnxruntime as ort

    build = getattr(ort, "get_build_info", None)
    out: dict[str, Any] = {
        "onnxruntime_version": ort.__version__,
        "device": ort.get_device(),
        "build_info": build() if callable(build) else None,
        "available": ort.get_available_providers(),
        "requested": providers,
    }
    try:
        model, x, expected = _attention_model()
    except ImportError as e:
        out["session_error"] = f"cannot build the probe graph: {type(e).__name__}: {e}"
        return out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        try:
            opts = _session_options(ort, session_options or {})
            per = provider_options or {}
            chosen = [(p, per[p]) if p in per else p for p in providers]
            sess = ort.InferenceSession(model, opts, providers=chosen)
        except Exception as e:
            sess, out["session_error"] = None, f"{type(e).__name__}: {e}"
        out["session_create_ms"] = (time.perf_counter() - t) * 1e3
    out["warnings"] = [str(w.message) for w in caught]
    if sess is not None:
        out["bound"] = sess.get_providers()
        out["settings"] = _settings(sess)
        try:
            out.update(_run(ort, sess, x, expected, warm_runs))
        except Exception as e:
            out["session_error"] = f"run failed: {type(e).__name__}: {e}"
    out["strict"] = _strict(ort, model, providers)
    return out


def main() -> None:
    """``--providers A,B,C [--warm-runs N] [--provider-options JSON] [--session-options
    JSON]``; prints the marked JSON line last."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--providers", required=True)
    parser.add_argument("--warm-runs", type=int, default=10)
    parser.add_argument("--provider-options", type=json.loads, default=None,
                        help='JSON: {"CUDAExecutionProvider": {"gpu_mem_limit": "..."}}')
    parser.add_argument("--session-options", type=json.loads, default=None,
                        help='JSON: {"enable_cpu_mem_arena": false}')
    args = parser.parse_args()
    result = probe([p for p in args.providers.split(",") if p], args.warm_runs,
                   args.provider_options, args.session_options)
    sys.stdout.flush()
    sys.stderr.flush()
    print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
