"""Fallback-language scan: find the log lines that say a GPU service runs on a degraded path.

Why: none of the three pathologies fails a health probe. ONNX Runtime binds the CPU
execution provider after one Python warning, TensorRT rebuilds an incompatible engine with
generic tactics, PyTorch quietly drops flash/memory-efficient attention: the only trace is a
line of text, often printed once per call site. This module turns those lines into facts
(line number, category, phrase id) that a gate can refuse on.

The catalog is phrase *families* (regular expressions), each anchored on wording that the
libraries print (ORT's Python warning and C++ log, TensorRT's deserialization errors,
PyTorch's SDPA and CUDA-initialization warnings, xFormers' extension warning, missing shared
libraries). The tests check it against the texts the installed ORT emits at test time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CATALOG",
    "LOG_CATEGORIES",
    "POLICY_CATEGORY",
    "LogCategory",
    "LogHit",
    "Phrase",
    "compile_phrases",
    "scan_file",
    "scan_lines",
    "scan_text",
    "strip_ansi",
]

#: What a hit means. ``policy`` marks a phrase that a policy forbade on its own, beyond the catalog.
LogCategory = Literal[
    "provider-unavailable",
    "provider-create-failed",
    "cpu-fallback",
    "library-missing",
    "cuda-unavailable",
    "engine-rebuild",
    "attention-fallback",
    "xformers-disabled",
    "policy",
]
LOG_CATEGORIES: tuple[LogCategory, ...] = get_args(LogCategory)
POLICY_CATEGORY: LogCategory = "policy"

#: Longest line text kept in a hit: enough to read the message, bounded for huge log lines.
_MAX_TEXT = 400
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LogHit(BaseModel):
    """One log line that matched a degraded-path phrase."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = Field(default=None, description="file name or stream the line came from")
    line: int = Field(ge=1, description="1-based line number within the source")
    category: LogCategory
    phrase: str = Field(description="id of the catalog phrase (or the policy's pattern)")
    text: str = Field(description="the line, ANSI colours stripped, truncated to 400 chars")


@dataclass(frozen=True)
class Phrase:
    """A catalog entry: a phrase family and what it means."""

    id: str
    category: LogCategory
    pattern: re.Pattern[str]


def _p(id_: str, category: LogCategory, regex: str) -> Phrase:
    return Phrase(id_, category, re.compile(regex, re.IGNORECASE))


CATALOG: tuple[Phrase, ...] = (
    # ONNX Runtime, Python side: the one warning shown when a requested EP is not in the build.
    _p(
        "ort-provider-not-in-available",
        "provider-unavailable",
        r"Specified provider '\w+' is not in available provider names",
    ),
    # ONNX Runtime, C++ side: provider library present but its CUDA/cuDNN/TensorRT deps are not.
    _p(
        "ort-failed-to-create-provider",
        "provider-create-failed",
        r"Failed to create \w*ExecutionProvider",
    ),
    _p(
        "ort-provider-library-load",
        "provider-create-failed",
        r"Failed to load (shared )?library.*libonnxruntime_providers_\w+",
    ),
    _p(
        "ort-provider-not-available",
        "provider-unavailable",
        r"\b(CUDA|TensorRT|MIGraphX|ROCm) Provider not available",
    ),
    _p("ort-ep-error-retry", "cpu-fallback", r"Falling back to \[.*\] and retrying"),
    _p(
        "ort-cpu-ep-fallback-disabled",
        "cpu-fallback",
        r"assigned to the default CPU EP, but fallback to CPU EP",
    ),
    _p(
        "generic-fallback-to-cpu",
        "cpu-fallback",
        r"fall(ing)?[ -]?back to (the )?CPU|cannot run with .?cpu.? device",
    ),
    # Shared libraries the GPU path needs.
    _p(
        "library-cannot-open",
        "library-missing",
        r"lib(cuda|cudart|cudnn\w*|cublas\w*|cufft|curand|nvinfer\w*|nvrtc\w*|nvonnxparser)"
        r"\.so[.\d]*: cannot open shared object file",
    ),
    _p(
        "library-could-not-load",
        "library-missing",
        r"(Could not|Unable to) load (dynamic )?library '?lib(cudnn|cublas|cudart|nvinfer|cuda)",
    ),
    # CUDA itself unusable (driver, device nodes, container without a GPU request).
    _p(
        "cuda-init",
        "cuda-unavailable",
        r"CUDA initialization: |Found no NVIDIA driver on your system|"
        r"NVIDIA driver on your system is too old|"
        r"CUDA driver version is insufficient for CUDA runtime version|"
        r"no CUDA-capable device is detected|CUDA_ERROR_NO_DEVICE|cudaErrorNoDevice",
    ),
    # TensorRT engines that no longer match the runtime: rebuilt, usually with generic tactics.
    _p(
        "trt-deserialize-failed",
        "engine-rebuild",
        r"(deserializ\w* (of )?(the )?(cuda )?engine\w* failed|failed to deserializ\w*"
        r"( the)? engine|deserializeCudaEngine.*fail)",
    ),
    _p(
        "trt-engine-incompatible",
        "engine-rebuild",
        r"engine plan file is (not compatible|generated on an incompatible)|"
        r"Version tag does not match|Magic tag does not match|"
        r"engine.{0,40}(incompatible|not compatible|version mismatch)",
    ),
    _p(
        "trt-engine-rebuild",
        "engine-rebuild",
        r"\b(re-?build(ing)?|regenerat\w+) (the )?(TensorRT |TRT )?engine|"
        r"engine\w*( cache)? (will be|is being|are being) re-?built",
    ),
    # PyTorch scaled_dot_product_attention losing its fused kernels.
    _p(
        "torch-sdpa-kernel-not-used",
        "attention-fallback",
        r"(flash attention|memory efficient|mem[-_ ]efficient|cudnn attention)"
        r"( kernel)? (was )?not used because",
    ),
    _p(
        "torch-not-compiled-with-attention",
        "attention-fallback",
        r"not compiled with (flash|memory[- ]efficient) attention",
    ),
    _p(
        "torch-no-viable-sdpa-backend",
        "attention-fallback",
        r"No (viable|available) (backend|kernel)( for scaled_dot_product_attention)?",
    ),
    _p(
        "attention-unavailable",
        "attention-fallback",
        r"(flash|memory[- ]efficient|fused) attention (is )?(not available|unavailable|"
        r"disabled|not supported)",
    ),
    # xFormers without its compiled kernels (diffusers then falls back to plain attention).
    _p(
        "xformers-cannot-load",
        "xformers-disabled",
        r"xFormers can't load C\+\+/CUDA extensions|xformers (is )?(not available|disabled)|"
        r"memory.efficient attention.{0,80}won't be available",
    ),
)


def strip_ansi(text: str) -> str:
    """Remove terminal colour codes (ORT's C++ logger colours its lines)."""
    return _ANSI.sub("", text)


def compile_phrases(patterns: Iterable[str]) -> tuple[Phrase, ...]:
    """Turn a policy's own forbidden phrases (regular expressions) into ``policy`` phrases.

    Raises:
        ValueError: a pattern is not a valid regular expression (bad input, reported as such).
    """
    out: list[Phrase] = []
    for pat in patterns:
        try:
            out.append(Phrase(pat, POLICY_CATEGORY, re.compile(pat, re.IGNORECASE)))
        except re.error as e:
            raise ValueError(f"forbidden log phrase {pat!r} is not a valid regex: {e}") from e
    return tuple(out)


def scan_lines(
    lines: Iterable[str],
    *,
    source: str | None = None,
    phrases: Sequence[Phrase] = CATALOG,
) -> list[LogHit]:
    """Return a hit for every line matching a phrase (first matching phrase per line)."""
    hits: list[LogHit] = []
    for number, raw in enumerate(lines, start=1):
        line = strip_ansi(raw).rstrip("\r\n")
        for phrase in phrases:
            if phrase.pattern.search(line):
                hits.append(
                    LogHit(
                        source=source,
                        line=number,
                        category=phrase.category,
                        phrase=phrase.id,
                        text=line[:_MAX_TEXT],
                    )
                )
                break
    return hits


def scan_text(
    text: str, *, source: str | None = None, phrases: Sequence[Phrase] = CATALOG
) -> list[LogHit]:
    """Scan a block of log text (see :func:`scan_lines`)."""
    return scan_lines(text.splitlines(), source=source, phrases=phrases)


def scan_file(path: Path, *, phrases: Sequence[Phrase] = CATALOG) -> list[LogHit]:
    """Scan a log file, streaming it line by line (logs can be large).

    Raises:
        OSError: the file cannot be read.
    """
    with path.open(encoding="utf-8", errors="replace") as f:
        return scan_lines(f, source=str(path), phrases=phrases)
