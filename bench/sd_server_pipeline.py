"""Does encoding PNGs off the inference thread raise the SD server's throughput?

Why this exists: on an H100 the server reached only 62-64% GPU utilization at saturation,
because the one inference thread encoded each batch's PNGs before starting the next batch
(issue 18). ``--encode-workers N`` hands encoding to N threads so the next batch starts at once;
``--encode-workers 0`` keeps the old inline path. This runs both, in one run and on the same
machine, under the same closed-loop load, and writes the before/after table.

Method: two ``sd-server --model tiny`` processes on the CPU (``--threads 1``, so an encoder
thread has a core of its own on a small machine, as it has beside a GPU), started once each;
rounds alternate between them (inline, pooled, inline, pooled...) so drift on a shared machine
hits both alike. Each round keeps ``--concurrency`` requests in flight for ``--seconds`` after a
warm-up and counts the images answered; latency is the client's, from send to the last byte,
and the server's phases come from each answer's ``Server-Timing`` header.

On the CPU the pipeline call dominates far more than on a GPU, so the gain here is a floor
for what the GPU run shows; the image size is large for the tiny model (encoding grows with
pixels, the tiny UNet barely does) to make encoding a visible share as it is at 512-1024 px
on a GPU.

Usage: ``python bench/sd_server_pipeline.py [--seconds 20] [--rounds 3] [--concurrency 16]
[--size 256] [--steps 2] [--encode-workers 2] [--out bench/results/sd_server_pipeline.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from sd_paths import free_port, serve

from gates.canary.exchange import parse_server_timing

PHASES = ("queue", "inference", "encode")


@dataclass
class Round:
    """One round of closed-loop load against one server."""

    images: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    gpu_util_pct: float | None = None


@contextmanager
def server(workers: int, args: argparse.Namespace, log: Path) -> Iterator[str]:
    """An ``sd-server --model tiny`` with ``--encode-workers workers``, ready, then stopped."""
    port = free_port()
    cmd = [sys.executable, "-m", "sd_server", "--model", args.model, "--device", args.device,
           "--port", str(port), "--encode-workers", str(workers),
           "--max-batch", str(args.max_batch), "--max-wait-ms", "0", "--queue-size", "256",
           "--max-side", str(args.size)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        cmd += ["--dtype", "fp32", "--threads", "1"]
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    else:  # the fast path the H100 run measured at 62-64% utilization
        cmd += ["--dtype", "fp16", "--channels-last"]
    env.pop("SD_SERVER_AUTH_TOKEN", None)
    with serve(cmd, port, log, env=env, ready_s=900) as url:
        yield url


async def load(url: str, args: argparse.Namespace, seconds: float) -> Round:
    """``args.concurrency`` lanes each sending its next request when the last one answered,
    until ``seconds`` have passed; the round lasts until the last answer is in, and
    throughput is the images answered over that whole time."""
    out = Round()
    body = {"prompt": "a red bicycle", "size": f"{args.size}x{args.size}", "steps": args.steps}
    limits = httpx.Limits(max_connections=args.concurrency)
    sampler = None
    if args.device != "cpu":  # the GPU's busy share over the round, NVML every 100 ms
        from gates.utilization import NvmlSampler

        sampler = NvmlSampler(interval_s=0.1)
        sampler.start()
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        t0 = time.perf_counter()
        end = t0 + seconds

        async def lane(i: int) -> None:
            seed = 1000 * i
            while time.perf_counter() < end:
                seed += 1
                start = time.perf_counter()
                r = await client.post("/v1/images/generations", json={**body, "seed": seed})
                if r.status_code != 200:
                    out.errors += 1
                    continue
                out.images += 1
                out.latencies.append(time.perf_counter() - start)
                timing = parse_server_timing(r.headers.get("server-timing")) or {}
                for p in PHASES:
                    if p in timing:
                        out.phases[p].append(timing[p])

        await asyncio.gather(*(lane(i) for i in range(args.concurrency)))
        out.seconds = time.perf_counter() - t0
    if sampler is not None:
        samples = sampler.stop()
        busy = [g.utilization_pct for g in samples.gpus if g.utilization_pct]
        out.gpu_util_pct = float(np.mean(max(busy, key=np.mean))) if busy else None
    return out


def _ms(values: list[float], q: float) -> str:
    return f"{np.quantile(values, q) * 1e3:.0f}" if values else "-"


def report(results: dict[str, list[Round]], args: argparse.Namespace) -> str:
    """The Markdown result: per mode and round, then the comparison."""
    def rate(r: Round) -> float:
        return r.images / r.seconds

    lines = [
        "# SD server pipeline: PNG encoding on vs off the inference thread",
        "",
        f"Generated by `python bench/sd_server_pipeline.py --seconds {args.seconds:g} --rounds "
        f"{args.rounds} --concurrency {args.concurrency} --size {args.size} --steps "
        f"{args.steps} --encode-workers {args.encode_workers} --device {args.device}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        f"`sd-server --model {args.model} --device {args.device} --max-batch {args.max_batch} "
        f"--max-wait-ms 0` ({'fp32, --threads 1' if args.device == 'cpu' else 'fp16'}), "
        f"{args.size}x{args.size} px, {args.steps} steps, "
        f"{args.concurrency} requests in flight (closed loop), rounds alternating between the "
        f"two servers. Latency: client, send to last byte. Phases: medians of each answer's "
        f"`Server-Timing`.",
        "",
        "| mode | round | images/s | images | errors | P50 ms | P95 ms | queue P50 ms | "
        "inference P50 ms | encode P50 ms | GPU util % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, rounds in results.items():
        for i, r in enumerate(rounds, start=1):
            lines.append(f"| {mode} | {i} | {rate(r):.2f} | {r.images} | {r.errors} | "
                         f"{_ms(r.latencies, 0.5)} | {_ms(r.latencies, 0.95)} | "
                         + " | ".join(_ms(r.phases[p], 0.5) for p in PHASES)
                         + f" | {'-' if r.gpu_util_pct is None else f'{r.gpu_util_pct:.0f}'} |")
    (base_name, base), (new_name, new) = results.items()
    encode = [v for rounds in results.values() for r in rounds for v in r.phases["encode"]]
    inference = [v for rounds in results.values() for r in rounds for v in r.phases["inference"]]
    share = float(np.median(encode) / np.median(inference))
    b = statistics.median(rate(r) for r in base)
    n = statistics.median(rate(r) for r in new)
    lines += [
        "",
        f"**Throughput (median of rounds): {base_name} {b:.2f} images/s, {new_name} {n:.2f} "
        f"images/s: x{n / b:.2f}.**",
        "",
        f"Encoding is {share:.1%} of the pipeline call here (medians over both modes: encode "
        f"{_ms(encode, 0.5)} ms per request, inference {_ms(inference, 0.5)} ms per batch), so "
        f"taking it off the inference thread can win back at most about that share here.",
        "",
    ]
    utils = {m: [r.gpu_util_pct for r in rounds if r.gpu_util_pct is not None]
             for m, rounds in results.items()}
    if all(utils.values()):
        lines += [f"**GPU utilization (NVML, mean of round means): {base_name} "
                  f"{statistics.mean(utils[base_name]):.0f}%, {new_name} "
                  f"{statistics.mean(utils[new_name]):.0f}%** (the H100 run before the pool: "
                  f"62-64% at saturation).", ""]
    else:
        lines += [f"No GPU here (load average {args.load_before:.1f} before the run, "
                  f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs): a difference "
                  f"larger than encoding's share is noise from other work on the machine. On a "
                  f"GPU the pipeline call is far shorter while encoding stays on the CPU, so "
                  f"encoding is a large share there; `--device cuda` measures that.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="per round")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--encode-workers", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help=(
        "cuda: the SD 1.5 architecture in fp16 with NVML utilization per round"))
    p.add_argument("--model", default=None, help="default tiny on cpu, sd15-arch on cuda")
    p.add_argument("--out", type=Path, default=Path("bench/results/sd_server_pipeline.md"))
    args = p.parse_args()
    args.model = args.model or ("tiny" if args.device == "cpu" else "sd15-arch")
    args.load_before = os.getloadavg()[0]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "sd_server_pipeline.log"
    modes = {"inline (--encode-workers 0)": 0,
             f"pool (--encode-workers {args.encode_workers})": args.encode_workers}
    results: dict[str, list[Round]] = {m: [] for m in modes}
    with server(0, args, log) as inline_url, server(args.encode_workers, args, log) as pool_url:
        urls = dict(zip(modes, (inline_url, pool_url), strict=True))
        for url in urls.values():
            asyncio.run(load(url, args, args.warmup))
        for i in range(args.rounds):
            for mode, url in urls.items():
                r = asyncio.run(load(url, args, args.seconds))
                results[mode].append(r)
                print(f"round {i + 1} {mode}: {r.images / r.seconds:.2f} images/s",
                      file=sys.stderr)
    text = report(results, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
