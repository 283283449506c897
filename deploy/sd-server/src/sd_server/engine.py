"""Turn batches of requests into PNG bytes, and prove the path works before serving.

Reproducibility: each image's initial latents come from its own CPU ``torch.Generator`` seeded
with that image's seed, so a seed means the same starting noise on every device and in every
batch position. The denoised pixels are bit-identical for the same seed and settings when the
arithmetic is too: the same device, dtype and path, the same batch composition, and on the CPU the
same thread count (``--threads``/``OMP_NUM_THREADS``; 1 and 2 threads give different bits). On a
GPU, batch size and cuDNN's algorithm choice can change the last bits.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from sd_server.config import PathConfig
from sd_server.faults import InjectedFaultError
from sd_server.models import build_pipeline, native_size
from sd_server.paths import PathReport, apply, describe, resolve_device

__all__ = [
    "SELF_TEST_PROMPT",
    "SELF_TEST_SEED",
    "Engine",
    "GenerationSpec",
    "Item",
    "SelfTestResult",
    "encode_png",
    "error_kind",
]

SELF_TEST_PROMPT = "a photograph of an astronaut riding a horse"
SELF_TEST_SEED = 1234


@dataclass(frozen=True)
class GenerationSpec:
    """Settings shared by every image of one pipeline call (the dynamic batching key)."""

    width: int
    height: int
    steps: int
    guidance_scale: float


@dataclass(frozen=True)
class Item:
    """One image to make."""

    prompt: str
    negative_prompt: str | None
    seed: int


@dataclass(frozen=True)
class SelfTestResult:
    """The warm self-test: a fixed prompt and seed run twice, the second one timed."""

    spec: GenerationSpec
    first_s: float
    warm_s: float
    png_sha256: str
    reproducible: bool
    finite: bool


class Engine:
    """A pipeline on its execution path. Not thread-safe: one worker thread calls it."""

    def __init__(self, pipe: StableDiffusionPipeline, fallback_reason: str | None = None) -> None:
        self.pipe = pipe
        self.fallback_reason = fallback_reason
        self.native_size = native_size(pipe)
        self.last_output_finite = True

    @classmethod
    def load(cls, cfg: PathConfig) -> Engine:
        """Build the model and apply the path; a CUDA request without CUDA lands on the CPU
        with :attr:`fallback_reason` set (the caller refuses or reports it)."""
        device, reason = resolve_device(cfg.device)
        pipe = build_pipeline(cfg.model, seed=cfg.weights_seed)
        return cls(apply(pipe, cfg, device), reason)

    def describe(self) -> PathReport:
        return describe(self.pipe)

    def generate(self, spec: GenerationSpec, items: Sequence[Item]) -> list[bytes]:
        """Run one pipeline call for ``items`` and return one PNG per item, in order."""
        return [encode_png(p) for p in self.render(spec, items)]

    def render(self, spec: GenerationSpec, items: Sequence[Item]) -> list[np.ndarray]:
        """Run one pipeline call for ``items`` and return one RGB ``uint8`` array per item.

        Kept apart from :func:`encode_png` so the server can encode a batch in other threads
        while the next batch runs (the pipeline call is the only part that needs this thread).
        """
        negatives = [i.negative_prompt for i in items]
        with torch.inference_mode():
            out = self.pipe(
                prompt=[i.prompt for i in items],
                negative_prompt=None if all(n is None for n in negatives)
                else [n or "" for n in negatives],
                height=spec.height,
                width=spec.width,
                num_inference_steps=spec.steps,
                guidance_scale=spec.guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(i.seed) for i in items],
                output_type="np",
            )
        pixels = np.asarray(out.images)
        self.last_output_finite = bool(np.isfinite(pixels).all())
        # Same rounding as diffusers' numpy_to_pil; NaN (a broken fp16 path) becomes black.
        quantized = (np.nan_to_num(pixels) * 255).round().clip(0, 255).astype(np.uint8)
        return list(quantized)

    def self_test(self, spec: GenerationSpec) -> SelfTestResult:
        """Run the fixed prompt twice (warm-up, then timed) and compare the two images."""
        item = Item(SELF_TEST_PROMPT, None, SELF_TEST_SEED)
        t0 = time.perf_counter()
        first = self.generate(spec, [item])[0]
        t1 = time.perf_counter()
        second = self.generate(spec, [item])[0]
        t2 = time.perf_counter()
        return SelfTestResult(
            spec=spec,
            first_s=t1 - t0,
            warm_s=t2 - t1,
            png_sha256=hashlib.sha256(second).hexdigest(),
            reproducible=first == second,
            finite=self.last_output_finite,
        )


def error_kind(exc: BaseException) -> str:
    """The ``sd_errors_total`` kind of a failed pipeline call."""
    if isinstance(exc, InjectedFaultError):
        return "injected"
    if isinstance(exc, torch.OutOfMemoryError):
        return "out_of_memory"
    return "inference"


def encode_png(pixels: np.ndarray) -> bytes:
    """One image as PNG bytes (thread-safe: Pillow releases the GIL while compressing)."""
    buf = io.BytesIO()
    # Level 1: at 1024x1024 the default level costs ~100 ms per image for little size gain.
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
