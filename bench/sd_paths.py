"""Benchmark Stable Diffusion execution paths, directly and through the server.

What it measures (the GPU anchors in ``shared/notes/gpu-anchors.md``, reproduced on one card):

* **direct**: the same :class:`sd_server.engine.Engine` the server uses (text encode, N DDIM steps
  with classifier-free guidance, VAE decode, PNG encode), no HTTP. Per path and workload:
  s/image, images/s, P50/P95 of the timed calls, peak torch memory, NVML peak memory and mean
  utilization (``gates.utilization.NvmlSampler``, 100 ms). Paths: ``fast`` (fp16 + SDPA +
  channels-last), ``compile`` (fast + torch.compile of the UNet), ``generic`` (fp32 + math
  attention), ``ort`` (exported UNet in ONNX Runtime, providers CUDA,CPU), ``cpu``. A path whose
  UNet does not run on the GPU (``cpu``, and ``ort`` when ONNX Runtime falls back to its CPU EP)
  is timed at 1 and 3 steps and extrapolated linearly to the workload's steps, at batch 1 only,
  and marked ``extrapolated`` in every output.
* **server**: ``sd-server`` on the fast path as a subprocess: s/image at batch 1 and 8 against
  the direct numbers (acceptance: within 15%), then 16 concurrent requests with dynamic batching
  and with ``--max-batch 1``, against the best static batch (16 simultaneous arrivals served in
  sequential batches of b, from the direct batch timings; acceptance: P95 <= 1.3x).

Results go to ``OUT/sd_paths-<card>-<paths>.json`` and ``.md``, rewritten after every
measurement, so a run cut off by a time limit keeps what it measured; ``--merge`` combines the
runs of one card into ``OUT/sd_paths-<card>.json``/``.md``. A warm call slower than 15 s is
timed once instead of ``--reps`` times (noted in the row).

On the GPU machine (each command under 10 minutes; the fast path and the server in one run, as
the server is judged against that run's direct numbers)::

    python bench/sd_paths.py --paths fast --out $OUT               # + the server section
    python bench/sd_paths.py --paths generic --no-server --out $OUT
    python bench/sd_paths.py --paths compile --no-server --out $OUT
    python bench/sd_paths.py --paths ort,cpu --no-server --out $OUT
    python bench/sd_paths.py --merge RUN1.json RUN2.json ... --out bench/results

Smoke run on a CPU (tiny model, 64 px, 2-4 steps, every code path in under a minute)::

    OMP_NUM_THREADS=1 python bench/sd_paths.py --smoke --out /tmp/bench
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 8k"
EXTRAPOLATION_STEPS = (1, 3)
#: A warm call slower than this gets one timed call instead of ``--reps``.
SLOW_CALL_S = 15.0


@dataclass(frozen=True)
class Workload:
    side: int
    steps: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.side}px/{self.steps}st/b{self.batch}"


@dataclass
class Record:
    """One measurement row (direct or server)."""

    section: str
    path: str
    workload: str
    batch: int
    calls: list[float] = field(default_factory=list)
    s_per_image: float | None = None
    images_per_s: float | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    extrapolated: bool = False
    measured_steps: list[int] | None = None
    torch_peak_gib: float | None = None
    nvml_peak_gib: float | None = None
    nvml_util_mean_pct: float | None = None
    unet_device: str | None = None
    note: str = ""
    error: str | None = None


@dataclass
class Plan:
    smoke: bool
    model: str
    device: str
    workloads: list[Workload]
    paths: list[str]
    reps: int
    concurrency: int
    server: bool
    max_batch: int
    max_wait_ms: float
    onnx_cache: Path
    deadline: float
    out: Path
    server_path: str = "fast"
    concurrencies: tuple[int, ...] = ()
    records: list[Record] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _summarize(rec: Record, per_call_images: int) -> Record:
    med = _percentile(rec.calls, 50)
    rec.p50_s, rec.p95_s = med, _percentile(rec.calls, 95)
    rec.s_per_image = med / per_call_images
    rec.images_per_s = per_call_images / med
    return rec


# --- measurement helpers -------------------------------------------------------------------


@contextmanager
def gpu_watch(rec: Record, on_gpu: bool) -> Iterator[None]:
    """Peak torch memory and NVML utilization/memory over the block (GPU runs only)."""
    if not on_gpu:
        yield
        return
    import torch

    from gates.utilization import NvmlSampler

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    sampler = NvmlSampler(interval_s=0.1)
    sampler.start()
    try:
        yield
    finally:
        torch.cuda.synchronize()
        rec.torch_peak_gib = torch.cuda.max_memory_allocated() / 2**30
        samples = sampler.stop()
        busy = [g for g in samples.gpus if g.utilization_pct]
        if samples.error is None and busy:
            gpu = max(busy, key=lambda g: max(g.memory_used_mib or (0.0,)))
            rec.nvml_util_mean_pct = float(np.mean(gpu.utilization_pct))
            rec.nvml_peak_gib = max(gpu.memory_used_mib) / 1024 if gpu.memory_used_mib else None
        elif samples.error:
            rec.note = f"{rec.note} nvml: {samples.error}".strip()


def _time_call(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_direct(engine: Any, name: str, wl: Workload, reps: int, warmup: int,
                   on_gpu: bool) -> Record:
    from sd_server.engine import GenerationSpec, Item

    spec = GenerationSpec(wl.side, wl.side, wl.steps, 7.5)
    items = [Item(PROMPT, None, i) for i in range(wl.batch)]
    rec = Record("direct", name, wl.label, wl.batch)
    warm = [_time_call(lambda: engine.generate(spec, items)) for _ in range(warmup)]
    if warm and warm[-1] > SLOW_CALL_S:
        reps = 1  # e.g. generic attention at 1024 px: one timed call is the budget
        rec.note = f"1 timed call: a warm call took {warm[-1]:.1f} s"
    with gpu_watch(rec, on_gpu):
        rec.calls = [_time_call(lambda: engine.generate(spec, items)) for _ in range(reps)]
    return _summarize(rec, wl.batch)


def measure_extrapolated(engine: Any, name: str, wl: Workload) -> Record:
    """Time 1 and 3 steps and extend the per-step cost linearly to ``wl.steps``."""
    from sd_server.engine import GenerationSpec, Item

    items = [Item(PROMPT, None, i) for i in range(wl.batch)]
    lo, hi = EXTRAPOLATION_STEPS

    def run(steps: int) -> float:
        spec = GenerationSpec(wl.side, wl.side, steps, 7.5)
        return _time_call(lambda: engine.generate(spec, items))

    run(lo)  # warm-up
    t_lo, t_hi = run(lo), run(hi)
    per_step = max(0.0, (t_hi - t_lo) / (hi - lo))
    fixed = max(0.0, t_lo - lo * per_step)
    rec = Record("direct", name, wl.label, wl.batch, calls=[fixed + wl.steps * per_step],
                 extrapolated=True, measured_steps=[lo, hi],
                 note=f"measured {t_lo:.2f} s at {lo} step(s), {t_hi:.2f} s at {hi}; "
                      f"{per_step:.2f} s/step + {fixed:.2f} s fixed")
    return _summarize(rec, wl.batch)


#: The ``ort-same`` path's CUDA arena: grow by what is asked, capped (the talk's remedy for the
#: default ``kNextPowerOfTwo`` arena that may take the whole GPU).
ORT_SAME_LIMIT = 24 * 2**30
#: sd-server flags per path the server section can run (the direct rows' configuration).
SERVER_FLAGS: dict[str, list[str]] = {
    "fast": ["--dtype", "fp16", "--channels-last"],
    "ort": ["--dtype", "fp16", "--unet-backend", "onnxruntime",
            "--ort-providers", "CUDAExecutionProvider,CPUExecutionProvider"],
    "ort-same": ["--dtype", "fp16", "--unet-backend", "onnxruntime",
                 "--ort-providers", "CUDAExecutionProvider,CPUExecutionProvider",
                 "--ort-arena-extend-strategy", "kSameAsRequested",
                 "--ort-gpu-mem-limit", str(ORT_SAME_LIMIT)],
}


def path_configs(plan: Plan) -> dict[str, Any]:
    from sd_server.config import Attention, Device, DType, OrtRuntime, PathConfig, UnetBackend

    device = Device(plan.device)
    fast_dtype = DType.FP32 if plan.device == "cpu" else DType.FP16
    fast = PathConfig(model=plan.model, device=device, dtype=fast_dtype,
                      attention=Attention.SDPA, channels_last=not plan.smoke)
    return {
        "fast": fast,
        "compile": replace(fast, compile=True),
        "generic": replace(fast, dtype=DType.FP32, attention=Attention.MATH, channels_last=False),
        "ort": replace(fast, unet_backend=UnetBackend.ORT, channels_last=False,
                       ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                       onnx_cache_dir=plan.onnx_cache),
        "ort-same": replace(fast, unet_backend=UnetBackend.ORT, channels_last=False,
                            ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                            onnx_cache_dir=plan.onnx_cache,
                            ort_runtime=OrtRuntime(arena_extend_strategy="kSameAsRequested",
                                                   gpu_mem_limit=ORT_SAME_LIMIT)),
        "cpu": replace(fast, device=Device.CPU, dtype=DType.FP32, channels_last=False),
    }


def _free(engine: Any) -> None:
    import torch

    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_direct(plan: Plan) -> None:
    from sd_server.engine import Engine

    configs = path_configs(plan)
    for name in plan.paths:
        if _out_of_time(plan, f"direct {name}"):
            return
        t0 = time.monotonic()
        try:
            engine = Engine.load(configs[name])
        except Exception as e:
            plan.records.append(Record("direct", name, "-", 0, error=f"{type(e).__name__}: {e}"))
            write_results(plan)
            continue
        report = engine.describe()
        unet_device = report.modules["unet"].device
        plan.meta.setdefault("paths", {})[name] = {
            "load_s": round(time.monotonic() - t0, 2),
            "fallback_reason": engine.fallback_reason,
            "pipeline": report.to_json(),
        }
        on_gpu = unet_device.startswith("cuda")
        # Off the GPU on a GPU run (cpu, ORT's CPU EP): a few steps, extrapolated.
        extrapolate = name == "cpu" or (plan.device == "cuda" and not on_gpu)
        warmup = 2 if name == "compile" else 1
        for wl in plan.workloads:
            if extrapolate and wl.batch != 1:
                continue
            if _out_of_time(plan, f"direct {name} {wl.label}"):
                break
            try:
                if extrapolate:
                    rec = measure_extrapolated(engine, name, wl)
                else:
                    rec = measure_direct(engine, name, wl, plan.reps, warmup, on_gpu)
            except Exception as e:
                rec = Record("direct", name, wl.label, wl.batch, error=f"{type(e).__name__}: {e}")
            rec.unet_device = unet_device
            plan.records.append(rec)
            print(_row(rec), flush=True)
            write_results(plan)
        _free(engine)


# --- the server under load ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(plan: Plan, max_batch: int, log: Path) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "sd_server", "--model", plan.model, "--device", plan.device,
            "--port", str(port), "--max-batch", str(max_batch),
            "--max-wait-ms", str(plan.max_wait_ms), "--queue-size", "256",
            "--max-images", str(max(8, plan.concurrency))]
    if plan.device == "cpu":
        import torch

        args += ["--dtype", "fp32", "--threads", str(torch.get_num_threads())]
    else:
        args += SERVER_FLAGS[plan.server_path]
    if plan.server_path.startswith("ort"):
        args += ["--onnx-cache", str(plan.onnx_cache)]
    with serve(args, port, log, ready_s=900) as url:
        yield url


@contextmanager
def serve(cmd: list[str], port: int, log: Path, *, env: dict[str, str] | None = None,
          ready_s: float = 300) -> Iterator[str]:
    """The server ``cmd`` started (output appended to ``log``), its URL once /readyz answers
    200, then stopped (terminate, kill after 30 s)."""
    import httpx

    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {ready_s:.0f} s; see {log}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)  # a client polling a starting process, not the server
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _post(url: str, side: int, steps: int, n: int, seed: int,
          server_inference: list[float] | None = None) -> float:
    """One request's client-side latency; the server's own inference time is appended."""
    import httpx

    body = {"prompt": PROMPT, "size": f"{side}x{side}", "steps": steps, "n": n, "seed": seed}
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/images/generations", json=body, timeout=900)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    if server_inference is not None:
        server_inference.append(float(r.json()["timings"]["inference_s"]))
    return elapsed


def _concurrent(url: str, wl: Workload, count: int) -> tuple[list[float], float]:
    """``count`` single-image requests released at once; their latencies and the wall time."""
    latencies: list[float] = [math.nan] * count
    barrier = threading.Barrier(count + 1)

    def client(i: int) -> None:
        barrier.wait()
        latencies[i] = _post(url, wl.side, wl.steps, 1, 1000 + i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def static_batches(direct: dict[int, float], count: int) -> dict[int, dict[str, float]]:
    """``count`` simultaneous arrivals served in sequential batches of b (direct timings)."""
    out = {}
    for b, per_call in sorted(direct.items()):
        lat = [math.ceil((i + 1) / b) * per_call for i in range(count)]
        out[b] = {"p50_s": _percentile(lat, 50), "p95_s": _percentile(lat, 95)}
    return out


def run_server(plan: Plan) -> None:
    base = [w for w in plan.workloads if w.side == plan.workloads[0].side
            and w.steps == plan.workloads[0].steps]
    path = plan.server_path
    fast = {r.batch: r for r in plan.records
            if r.section == "direct" and r.path == path and r.p50_s and not r.extrapolated
            and r.workload in {w.label for w in base}}
    if not fast:
        plan.meta["server_skipped"] = f"no direct {path} timings in this run to compare with"
        return
    log = _stem(plan).with_suffix(".server.log")
    side, steps = base[0].side, base[0].steps
    compare: dict[str, Any] = {}
    for label, max_batch in (("dynamic", plan.max_batch), ("one-at-a-time", 1)):
        if _out_of_time(plan, f"server {label}"):
            break
        with running_server(plan, max_batch, log) as url:
            # Warm every batch shape the run will use, as the direct rows were warmed.
            for b in sorted({1, max_batch, *[b for b in fast if b <= max_batch]}):
                _post(url, side, steps, b, 0)
            if label == "dynamic":
                for b in sorted(fast):
                    if b > plan.max_batch:
                        continue
                    rec = Record("server", path, Workload(side, steps, b).label, b)
                    inference: list[float] = []
                    with gpu_watch(rec, plan.device == "cuda"):
                        rec.calls = [_post(url, side, steps, b, 7 + i, inference)
                                     for i in range(plan.reps)]
                    _summarize(rec, b)
                    ratio = rec.p50_s / fast[b].p50_s  # type: ignore[operator]
                    rec.note = (f"server/direct = {ratio:.3f}; server-side inference P50 "
                                f"{_percentile(inference, 50):.3f} s")
                    compare[f"server_vs_direct_b{b}"] = round(ratio, 4)
                    plan.records.append(rec)
                    print(_row(rec), flush=True)
                    write_results(plan)
            wl = Workload(side, steps, 1)
            for count in plan.concurrencies or (plan.concurrency,):
                rec = Record("server", f"{path}, {count} concurrent, {label}", wl.label, 1)
                with gpu_watch(rec, plan.device == "cuda"):
                    latencies, wall = _concurrent(url, wl, count)
                rec.calls = latencies
                rec.p50_s, rec.p95_s = _percentile(latencies, 50), _percentile(latencies, 95)
                rec.images_per_s = count / wall
                rec.s_per_image = wall / count
                plan.records.append(rec)
                if count == plan.concurrency:
                    compare[f"concurrent_{label}_p95_s"] = round(rec.p95_s, 4)
                print(_row(rec), flush=True)
                write_results(plan)
    static = static_batches({b: r.p50_s for b, r in fast.items() if r.p50_s}, plan.concurrency)
    best = min(static.items(), key=lambda kv: kv[1]["p95_s"])
    compare["static_batches"] = static
    compare["best_static_batch"] = best[0]
    if "concurrent_dynamic_p95_s" in compare:
        compare["dynamic_p95_over_best_static"] = round(
            compare["concurrent_dynamic_p95_s"] / best[1]["p95_s"], 4)
    plan.meta["acceptance"] = {
        **compare,
        "criteria": "server_vs_direct_b1 and _b8 <= 1.15; dynamic_p95_over_best_static <= 1.3",
    }
    write_results(plan)


# --- output ----------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(r: Record) -> str:
    mark = " (extrapolated)" if r.extrapolated else ""
    return (f"| {r.section} | {r.path}{mark} | {r.workload} | {_fmt(r.s_per_image)} | "
            f"{_fmt(r.images_per_s)} | {_fmt(r.p50_s)} | {_fmt(r.p95_s)} | "
            f"{_fmt(r.torch_peak_gib, 2)} | {_fmt(r.nvml_peak_gib, 2)} | "
            f"{_fmt(r.nvml_util_mean_pct, 0)} | {r.unet_device or '-'} | "
            f"{r.error or r.note} |")


def _stem(plan: Plan) -> Path:
    """``OUT/sd_paths-<card>-<paths>``: runs of different paths never overwrite each other."""
    return plan.out / f"sd_paths-{_slug(plan.meta['card'])}-{'-'.join(plan.paths)}"


_HEAD = ("| section | path | workload | s/image | images/s | P50 s | P95 s | torch peak GiB "
         "| NVML peak GiB | NVML util % | UNet on | note |\n" + "|---" * 12 + "|\n")


def _markdown(card: str, runs: Sequence[dict[str, Any]], records: Sequence[Record]) -> str:
    lines = [f"# SD execution paths on {card}\n"]
    for meta in runs:
        lines.append(f"- {meta['when']}: `sd_paths.py {' '.join(meta['argv'])}` (torch "
                     f"{meta['torch']}, diffusers {meta['diffusers']}, driver {meta['driver']})")
    lines.append("\nP50/P95 are over the timed calls of a row (over the requests, for the "
                 "concurrent rows); `extrapolated` rows ran 1 and 3 steps.\n")
    lines.append(_HEAD + "\n".join(_row(r) for r in records) + "\n")
    for meta in runs:
        if "acceptance" in meta:
            lines.append("## Acceptance (server vs direct, same run)\n\n```json\n"
                         + json.dumps(meta["acceptance"], indent=2) + "\n```\n")
    return "\n".join(lines)


def write_results(plan: Plan) -> None:
    stem = _stem(plan)
    doc = {"meta": plan.meta, "records": [asdict(r) for r in plan.records]}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str))
    stem.with_suffix(".md").write_text(_markdown(plan.meta["card"], [plan.meta], plan.records))


def merge(files: Sequence[Path], out: Path) -> Path:
    """Combine the JSON of several runs on one card into ``OUT/sd_paths-<card>.json``/``.md``."""
    docs = [json.loads(f.read_text()) for f in files]
    cards = {d["meta"]["card"] for d in docs}
    if len(cards) != 1:
        raise SystemExit(f"runs from different cards cannot be merged: {sorted(cards)}")
    card = cards.pop()
    records = [Record(**r) for d in docs for r in d["records"]]
    stem = out / f"sd_paths-{_slug(card)}"
    out.mkdir(parents=True, exist_ok=True)
    combined = {"runs": [d["meta"] for d in docs], "records": [asdict(r) for r in records]}
    stem.with_suffix(".json").write_text(json.dumps(combined, indent=2, default=str))
    stem.with_suffix(".md").write_text(_markdown(card, [d["meta"] for d in docs], records))
    return stem


def _out_of_time(plan: Plan, what: str) -> bool:
    if time.monotonic() < plan.deadline:
        return False
    plan.meta.setdefault("skipped_for_time", []).append(what)
    write_results(plan)
    return True


def describe_machine(plan: Plan) -> None:
    import diffusers
    import torch

    from gates.capability import collect_local

    if plan.device == "cuda":
        card = torch.cuda.get_device_name(0)
    else:
        card = f"cpu-{platform.machine()}-{os.cpu_count()}cores"
    snapshot = collect_local()
    plan.meta.update(
        card=card,
        when=datetime.now(UTC).isoformat(timespec="seconds"),
        argv=sys.argv[1:],
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        torch_threads=torch.get_num_threads(),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        capability_fingerprint=snapshot.fingerprint,
        versions=snapshot.versions.model_dump(mode="json"),
        driver=snapshot.host.driver_version if snapshot.host else None,
    )


def build_plan(argv: Sequence[str] | None = None) -> Plan:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--smoke", action="store_true",
                   help="tiny model on the CPU: checks the harness, measures nothing useful")
    p.add_argument("--paths", default=None,
                   help="comma list of fast,compile,generic,ort,ort-same,cpu "
                        "(default: all but compile for --smoke, else all)")
    p.add_argument("--no-server", action="store_true", help="skip the server section")
    p.add_argument("--server-path", choices=sorted(SERVER_FLAGS), default="fast", help=(
        "the path the server section runs (its direct rows must be in --paths)"))
    p.add_argument("--concurrencies", default=None, help=(
        "comma list of simultaneous-arrival counts for the server section (default: "
        "--concurrency only); the first equal to --concurrency feeds the acceptance"))
    p.add_argument("--model", default=None, help="default sd15-arch (smoke: tiny)")
    p.add_argument("--workloads", default=None, help=(
        "comma list of SIDExSTEPSxBATCH (default 512x25x1,512x25x4,512x25x8,1024x50x1); "
        "the server section uses the first one's size and steps"))
    p.add_argument("--reps", type=int, default=None, help="timed calls per row (default 3)")
    p.add_argument("--concurrency", type=int, default=None, help="default 16 (smoke: 4)")
    p.add_argument("--max-batch", type=int, default=8, help="server's dynamic batch limit")
    p.add_argument("--max-wait-ms", type=float, default=25.0)
    p.add_argument("--onnx-cache", type=Path, default=None)
    p.add_argument("--time-budget-s", type=float, default=560.0,
                   help="stop starting new measurements after this long")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help=(
        "combine earlier runs' JSON files (one card) into OUT/sd_paths-<card>.json/.md"))
    a = p.parse_args(argv)
    if a.merge:
        print(f"merged: {merge(a.merge, a.out)}.json/.md")
        raise SystemExit(0)
    if a.smoke:
        workloads = "64x4x1,64x4x2,128x4x1"
        paths = a.paths or "fast,generic,ort,cpu"
        model, device = a.model or "tiny", "cpu"
    else:
        workloads = "512x25x1,512x25x4,512x25x8,1024x50x1"
        paths = a.paths or "fast,compile,generic,ort,cpu"
        model, device = a.model or "sd15-arch", "cuda"
    try:
        parsed = [Workload(*map(int, w.strip().split("x")))
                  for w in (a.workloads or workloads).split(",")]
    except (TypeError, ValueError):
        p.error(f"--workloads: expected SIDExSTEPSxBATCH items, got {a.workloads!r}")
    names = [x.strip() for x in paths.split(",") if x.strip()]
    unknown = set(names) - {"fast", "compile", "generic", "ort", "ort-same", "cpu"}
    if unknown:
        p.error(f"unknown paths: {sorted(unknown)}")
    a.out.mkdir(parents=True, exist_ok=True)
    onnx_cache = a.onnx_cache or Path(tempfile.gettempdir()) / "sd-paths-onnx"
    return Plan(smoke=a.smoke, model=model, device=device, workloads=parsed, paths=names,
                reps=a.reps or 3, concurrency=a.concurrency or (4 if a.smoke else 16),
                server=not a.no_server, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
                onnx_cache=onnx_cache, deadline=time.monotonic() + a.time_budget_s, out=a.out,
                server_path=a.server_path,
                concurrencies=tuple(int(c) for c in (a.concurrencies or "").split(",") if c))


def main(argv: Sequence[str] | None = None) -> int:
    plan = build_plan(argv)
    if plan.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: use --smoke on a CPU", file=sys.stderr)
            return 2
    describe_machine(plan)
    print(f"# {plan.meta['card']}: {plan.paths} on {plan.model}", flush=True)
    run_direct(plan)
    if plan.server:
        run_server(plan)
    write_results(plan)
    print(f"results: {_stem(plan)}.json/.md")
    failed = [r for r in plan.records if r.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
