"""``sd-server``: parse the command line, run preflight admission, then serve.

Exit status: 0 after a normal shutdown; 1 when start-up failed (model load, port in use);
2 for bad usage (including an unreadable ``--policy``); 3 when admission refused a degraded path
(preflight or after the self-test), with every reason on stderr.

Heavy imports (torch, diffusers) happen after argument parsing, so ``--help`` and usage errors
are instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sd_server import __version__
from sd_server.config import (
    MODEL_SD15_ARCH,
    MODEL_TINY,
    AdmissionConfig,
    Attention,
    BatchingConfig,
    Device,
    DType,
    FaultConfig,
    Limits,
    OrtRuntime,
    PathConfig,
    ServerConfig,
    UnetBackend,
)

if TYPE_CHECKING:
    from gates.capability import CapabilitySnapshot, Violation

__all__ = ["build_parser", "config_from_args", "main"]

_TOKEN_ENV = "SD_SERVER_AUTH_TOKEN"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _providers(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one provider")
    return names


def _byte_size(text: str) -> int:
    """``8589934592``, ``8GiB``, ``512MiB``, ``8G`` -> bytes."""
    units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"expected bytes like 8GiB or 8589934592, got {text!r}")
    value = int(float(m.group(1)) * units[(m.group(2) or "").lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 byte, got {text!r}")
    return value


def _add_ort_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "ONNX Runtime settings (--unet-backend onnxruntime; reported in /capabilities)")
    g.add_argument("--ort-arena-extend-strategy", default=None,
                   choices=["kNextPowerOfTwo", "kSameAsRequested"],
                   help="CUDA arena growth (default: ORT's, kNextPowerOfTwo)")
    g.add_argument("--ort-gpu-mem-limit", type=_byte_size, default=None,
                   help="cap of the CUDA arena, bytes or 8GiB (default: unlimited)")
    g.add_argument("--ort-cudnn-conv-algo-search", default=None,
                   choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT"],
                   help="cuDNN convolution algorithm search (default: ORT's, EXHAUSTIVE)")
    g.add_argument("--ort-no-cpu-mem-arena", action="store_true",
                   help="SessionOptions.enable_cpu_mem_arena = False")
    g.add_argument("--ort-trt-cache", type=Path, default=None,
                   help="TensorRT EP engine and timing cache directory (enables both)")
    g.add_argument("--ort-trt-fp16", action="store_true", help="TensorRT EP trt_fp16_enable")


def _add_limits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=_positive_int, default=8, help="images per pipeline call")
    g.add_argument("--max-wait-ms", type=_non_negative, default=25.0,
                   help="how long the oldest request may wait for a batch to fill")
    g.add_argument("--queue-size", type=_positive_int, default=64,
                   help="waiting requests before 429 with Retry-After")
    g.add_argument("--encode-workers", type=_non_negative_int,
                   default=BatchingConfig.encode_workers,
                   help="threads encoding PNGs while the next batch runs (0: encode on the "
                        "inference thread after each batch, the old path)")
    g.add_argument("--min-side", type=_positive_int, default=Limits.min_side)
    g.add_argument("--max-side", type=_positive_int, default=Limits.max_side)
    g.add_argument("--max-steps", type=_positive_int, default=Limits.max_steps)
    g.add_argument("--max-images", type=_positive_int, default=Limits.max_images,
                   help="n / batch_size per request")
    g.add_argument("--max-prompt-chars", type=_positive_int, default=Limits.max_prompt_chars)
    g.add_argument("--max-body-bytes", type=_positive_int, default=Limits.max_body_bytes)
    g.add_argument("--max-connections", type=_positive_int, default=Limits.max_connections,
                   help="open connections before new ones get 503 (probes included)")
    g.add_argument("--request-timeout", type=_positive, default=Limits.request_timeout_s,
                   help="seconds a generation request may take, queue included, before 504")
    g.add_argument("--default-size", type=_positive_int, default=None,
                   help="image side when a request gives none (default: the model's native)")
    g.add_argument("--default-steps", type=_positive_int, default=None,
                   help=f"default: 4 for {MODEL_TINY}, else 25")
    g.add_argument("--default-guidance", type=_non_negative, default=7.5)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sd-server",
        description="Stable Diffusion server that refuses to serve on a degraded path.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    g = p.add_argument_group("listening")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--auth-token-file", type=Path, help=(
        f"file holding the bearer token generation requests must send (or set ${_TOKEN_ENV})"))
    g.add_argument("--access-log", action="store_true", help="log every HTTP request")

    g = p.add_argument_group("model and execution path")
    g.add_argument("--model", default=MODEL_TINY, help=(
        f"'{MODEL_TINY}' (SD-shaped, CPU-fast), '{MODEL_SD15_ARCH}' (SD 1.5's architecture, "
        "random weights) or a local diffusers directory (loaded offline)"))
    g.add_argument("--weights-seed", type=int, default=0, help="seed of the random weights")
    g.add_argument("--device", type=Device, choices=list(Device), default=Device.AUTO)
    g.add_argument("--dtype", type=DType, choices=list(DType), default=None,
                   help="default: fp16 on cuda, fp32 on cpu")
    g.add_argument("--attention", type=Attention, choices=list(Attention),
                   default=Attention.SDPA)
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    g.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"])
    g.add_argument("--unet-backend", type=UnetBackend, choices=list(UnetBackend),
                   default=UnetBackend.TORCH)
    g.add_argument("--ort-providers", type=_providers,
                   default=("CUDAExecutionProvider", "CPUExecutionProvider"),
                   help="comma-separated ONNX Runtime provider order")
    g.add_argument("--onnx-cache", type=Path, default=None,
                   help="where exported ONNX UNets are kept (default ~/.cache/sd-server/onnx)")
    g.add_argument("--threads", type=_positive_int, default=None, help=(
        "CPU threads for torch and ONNX Runtime; pin it for bit-reproducible CPU images"))
    _add_ort_runtime(p)

    _add_limits(p)

    g = p.add_argument_group("admission")
    g.add_argument("--require-gpu", action="store_true",
                   help="refuse to serve unless every module runs on a GPU")
    g.add_argument("--policy", type=Path, default=None, help=(
        "capability requirements (a RolloutPolicy with capability gates, or a bare mapping)"))
    g.add_argument("--allow-degraded", action="store_true",
                   help="serve anyway, reporting degraded in /readyz, /capabilities, /metrics")
    g.add_argument("--self-test-max-seconds", type=_non_negative, default=None,
                   help="refuse when the warm self-test is slower than this")

    g = p.add_argument_group(
        "fault injection (reliability tests only; shown in /capabilities and /metrics)")
    g.add_argument("--fault-latency-ms", type=_non_negative, default=0.0,
                   help="added to every batch")
    g.add_argument("--fault-error-rate", type=_rate, default=0.0,
                   help="fraction of requests failed with a 500")
    g.add_argument("--fault-stall-rate", type=_rate, default=0.0,
                   help="fraction of batches that stall")
    g.add_argument("--fault-stall-seconds", type=_non_negative, default=0.0)
    g.add_argument("--fault-seed", type=int, default=None)
    return p


def _read_token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    if args.auth_token_file is not None:
        try:
            token: str = args.auth_token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            parser.error(f"--auth-token-file: {e}")
        if not token:
            parser.error(f"--auth-token-file {args.auth_token_file} is empty")
        return token
    return os.environ.get(_TOKEN_ENV) or None


def config_from_args(argv: Sequence[str] | None = None) -> ServerConfig:
    """Parse ``argv`` into a :class:`ServerConfig` (exits 2 on bad usage, like argparse)."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.min_side > a.max_side:
        parser.error("--min-side is larger than --max-side")
    default_steps = a.default_steps or (4 if a.model == MODEL_TINY else 25)
    try:
        return _config(a, default_steps, _read_token(a, parser))
    except ValueError as e:
        parser.error(str(e))


def _config(a: argparse.Namespace, default_steps: int, token: str | None) -> ServerConfig:
    return ServerConfig(
        host=a.host,
        port=a.port,
        path=PathConfig(
            model=a.model,
            device=a.device,
            dtype=a.dtype,
            attention=a.attention,
            channels_last=a.channels_last,
            compile=a.compile,
            compile_mode=a.compile_mode,
            unet_backend=a.unet_backend,
            ort_providers=a.ort_providers,
            onnx_cache_dir=a.onnx_cache,
            ort_runtime=OrtRuntime(
                arena_extend_strategy=a.ort_arena_extend_strategy,
                gpu_mem_limit=a.ort_gpu_mem_limit,
                cudnn_conv_algo_search=a.ort_cudnn_conv_algo_search,
                cpu_mem_arena=not a.ort_no_cpu_mem_arena,
                trt_cache_dir=a.ort_trt_cache,
                trt_fp16=a.ort_trt_fp16,
            ),
            threads=a.threads,
            weights_seed=a.weights_seed,
        ),
        limits=Limits(
            min_side=a.min_side,
            max_side=a.max_side,
            max_steps=a.max_steps,
            max_images=a.max_images,
            max_prompt_chars=a.max_prompt_chars,
            max_body_bytes=a.max_body_bytes,
            max_connections=a.max_connections,
            request_timeout_s=a.request_timeout,
        ),
        batching=BatchingConfig(
            max_batch=a.max_batch, max_wait_s=a.max_wait_ms / 1000, queue_size=a.queue_size,
            encode_workers=a.encode_workers,
        ),
        faults=FaultConfig(
            latency_s=a.fault_latency_ms / 1000,
            error_rate=a.fault_error_rate,
            stall_rate=a.fault_stall_rate,
            stall_s=a.fault_stall_seconds,
            seed=a.fault_seed,
        ),
        admission=AdmissionConfig(
            require_gpu=a.require_gpu,
            policy=a.policy,
            allow_degraded=a.allow_degraded,
            self_test_max_s=a.self_test_max_seconds,
        ),
        auth_token=token,
        default_size=a.default_size,
        default_steps=default_steps,
        default_guidance_scale=a.default_guidance,
        access_log=a.access_log,
    )


def _refuse(what: str, violations: Sequence[Violation]) -> None:
    lines = "\n".join(f"  - [{v.check}] {v.message}" for v in violations)
    print(f"sd-server: refusing to {what} on a degraded path "
          f"(--allow-degraded serves anyway and reports it):\n{lines}", file=sys.stderr)


def _preflight_snapshot(cfg: ServerConfig) -> CapabilitySnapshot:
    """This process's capability snapshot; the ORT probe session gets the UNet's providers and
    runtime settings, so the snapshot records the settings the server runs with."""
    import torch

    from gates.capability import DEFAULT_PROVIDERS, collect_local

    if cfg.path.threads is not None:
        torch.set_num_threads(cfg.path.threads)
    ort = cfg.path.unet_backend is UnetBackend.ORT
    runtime = cfg.path.ort_runtime
    return collect_local(
        cfg.path.ort_providers if ort else DEFAULT_PROVIDERS,
        provider_options=runtime.provider_options() if ort else None,
        session_options=runtime.session_options() if ort else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the process exit status (see the module docstring)."""
    cfg = config_from_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no checkpoint ever comes from the network

    from sd_server.admission import (
        EXIT_REFUSED,
        PolicyInputError,
        preflight_violations,
        requirements_for,
    )

    try:
        reqs = requirements_for(cfg)
    except PolicyInputError as e:
        print(f"sd-server: {e}", file=sys.stderr)
        return 2

    snapshot = _preflight_snapshot(cfg)
    preflight = preflight_violations(snapshot, reqs)
    if preflight and not cfg.admission.allow_degraded:
        _refuse("start", preflight)
        return EXIT_REFUSED

    # diffusers and the app load only once preflight has passed.
    import uvicorn

    from sd_server.app import ServerState, create_app
    from sd_server.faults import FaultInjector
    from sd_server.metrics import Metrics

    state = ServerState(cfg=cfg, snapshot=snapshot, requirements=reqs, preflight=preflight,
                        metrics=Metrics(), faults=FaultInjector(cfg.faults))
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(
        create_app(state, stop), host=cfg.host, port=cfg.port, log_level="info",
        access_log=cfg.access_log, lifespan="on", timeout_graceful_shutdown=30,
        limit_concurrency=cfg.limits.max_connections))
    server.run()
    if state.exit_code == EXIT_REFUSED:
        _refuse("serve", state.violations)
    if state.exit_code:
        return state.exit_code
    return 0 if server.started else 1
