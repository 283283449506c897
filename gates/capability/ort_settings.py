"""ONNX Runtime's runtime settings in effect, and their policy bounds.

Why: two sessions with the same providers bound can behave very differently. The CUDA arena
without ``gpu_mem_limit`` grows to the whole GPU (the talk: "retune or disable the ORT CUDA
arena"), ``cudnn_conv_algo_search=EXHAUSTIVE`` costs seconds per new shape, TensorRT without an
engine cache builds its engines at every start, and ``trt_int8_enable`` changes the outputs.
``InferenceSession.get_provider_options()`` tells what a session really uses (ORT fills in every
default), ``get_session_options()`` the CPU arena; the probe child records both
(:mod:`gates.capability._ort_child`) and :func:`ort_violations` judges them against
:class:`~gates.capability.spec.OrtBounds`.

ORT reports every option value as a string (``"1"``, ``"kSameAsRequested"``,
``"18446744073709551615"`` for an unset ``gpu_mem_limit``); the accessors here interpret them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

from pydantic import Field, JsonValue, computed_field

from gates.capability._facts import Facts
from gates.capability.spec import OrtBounds, Violation

__all__ = [
    "CUDA_PROVIDER",
    "TRT_PROVIDER",
    "EngineCacheSettings",
    "OrtSettings",
    "option_flag",
    "ort_violations",
    "settings_from_options",
]

CUDA_PROVIDER: Final = "CUDAExecutionProvider"
TRT_PROVIDER: Final = "TensorrtExecutionProvider"
#: ``SIZE_MAX``: what ORT reports for a ``gpu_mem_limit`` nobody set.
_UNSET_LIMIT: Final = 2**64 - 1
#: ORT spells some enums as numbers when they were given as numbers.
_ARENA_NAMES: Final = {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}
_CUDNN_NAMES: Final = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}


def option_flag(value: str | None) -> bool | None:
    """ORT's boolean option strings (``"1"``, ``"0"``, ``"True"``...) -> bool; None if absent."""
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


class EngineCacheSettings(Facts):
    """The TensorRT provider's engine and timing caches (what makes engines artifacts)."""

    engine_cache_enable: bool
    engine_cache_path: str | None = None
    timing_cache_enable: bool
    timing_cache_path: str | None = None


class OrtSettings(Facts):
    """One session's runtime settings, as ONNX Runtime reports them.

    Attributes:
        provider_options: ``session.get_provider_options()``: per bound provider, every option
            in effect (defaults filled in by ORT), values as ORT's strings.
        session_options: from ``session.get_session_options()``: ``enable_cpu_mem_arena``,
            ``enable_mem_pattern``, thread counts, optimization level, execution mode.
        io_binding: inputs and outputs are bound in place (``run_with_iobinding``).
        pinned_memory: host-side buffers are page-locked (``cuda_pinned`` OrtValues).
    """

    provider_options: dict[str, dict[str, str]] = Field(default_factory=dict)
    session_options: dict[str, JsonValue] = Field(default_factory=dict)
    io_binding: bool = False
    pinned_memory: bool = False

    def option(self, provider: str, key: str) -> str | None:
        """One provider option in effect, or None (provider not bound, or no such option)."""
        return self.provider_options.get(provider, {}).get(key)

    @property
    def gpu_mem_limit(self) -> int | None:
        """The CUDA arena's limit in bytes; None when unset (``SIZE_MAX``) or CUDA not bound."""
        raw = self.option(CUDA_PROVIDER, "gpu_mem_limit")
        try:
            value = int(raw) if raw is not None else None
        except ValueError:
            return None
        return None if value is None or value >= _UNSET_LIMIT else value

    @property
    def arena_extend_strategy(self) -> str | None:
        raw = self.option(CUDA_PROVIDER, "arena_extend_strategy")
        return _ARENA_NAMES.get(raw, raw) if raw is not None else None

    @property
    def cudnn_conv_algo_search(self) -> str | None:
        raw = self.option(CUDA_PROVIDER, "cudnn_conv_algo_search")
        return _CUDNN_NAMES.get(raw, raw) if raw is not None else None

    @property
    def int8_enabled(self) -> bool:
        """TensorRT INT8 is switched on for a bound provider."""
        return any(option_flag(o.get("trt_int8_enable")) for o in self.provider_options.values())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def engine_cache(self) -> EngineCacheSettings | None:
        """The TensorRT engine/timing cache settings; None when TensorRT is not bound."""
        trt = self.provider_options.get(TRT_PROVIDER)
        if trt is None:
            return None
        return EngineCacheSettings(
            engine_cache_enable=bool(option_flag(trt.get("trt_engine_cache_enable"))),
            engine_cache_path=trt.get("trt_engine_cache_path") or None,
            timing_cache_enable=bool(option_flag(trt.get("trt_timing_cache_enable"))),
            timing_cache_path=trt.get("trt_timing_cache_path") or None,
        )


def _v(check: str, expected: JsonValue, observed: JsonValue, message: str) -> Violation:
    return Violation(check=f"ort.{check}", expected=expected, observed=observed, message=message)


def _cuda_bounds(b: OrtBounds, s: OrtSettings) -> Iterator[Violation]:
    cuda = CUDA_PROVIDER in s.provider_options
    limit = s.gpu_mem_limit
    if b.require_gpu_mem_limit and limit is None:
        why = ("the CUDA provider is not bound, so no gpu_mem_limit is in effect" if not cuda
               else "gpu_mem_limit is unset: the CUDA arena may grow to the whole GPU")
        yield _v("gpu_mem_limit", "set", None, why)
    if cuda and b.gpu_mem_limit_max is not None and (limit is None or limit > b.gpu_mem_limit_max):
        shown = "unset (unlimited)" if limit is None else f"{limit} bytes"
        yield _v("gpu_mem_limit", f"<= {b.gpu_mem_limit_max}", limit,
                 f"gpu_mem_limit is {shown}; the policy allows at most {b.gpu_mem_limit_max}")
    pairs = (("arena_extend_strategy", b.arena_extend_strategy, s.arena_extend_strategy),
             ("cudnn_conv_algo_search", b.cudnn_conv_algo_search, s.cudnn_conv_algo_search))
    for key, want, got in pairs:
        if cuda and want is not None and got != want:
            yield _v(key, want, got, f"the CUDA provider's {key} is {got}, the policy says {want}")


def ort_violations(bounds: OrtBounds, settings: OrtSettings | None,
                   note: str = "no ORT settings recorded") -> Iterator[Violation]:
    """Every way ``settings`` breaks ``bounds`` (``note`` says why settings may be missing)."""
    if settings is None:
        yield _v("settings", "the ORT runtime settings in effect", note,
                 f"cannot check ONNX Runtime's settings: {note}")
        return
    yield from _cuda_bounds(bounds, settings)
    arena = settings.session_options.get("enable_cpu_mem_arena")
    if bounds.cpu_mem_arena is not None and arena != bounds.cpu_mem_arena:
        yield _v("enable_cpu_mem_arena", bounds.cpu_mem_arena, arena,
                 f"SessionOptions.enable_cpu_mem_arena is {arena}, the policy says "
                 f"{bounds.cpu_mem_arena}")
    if not bounds.allow_int8 and settings.int8_enabled:
        yield _v("int8", False, True, "TensorRT INT8 is enabled (trt_int8_enable) but the "
                 "policy does not allow INT8 (ort.allowInt8, with the canary's distance check)")
    cache = settings.engine_cache
    if bounds.require_engine_cache and cache is not None and not cache.engine_cache_enable:
        yield _v("trt_engine_cache_enable", True, False,
                 "TensorRT is bound without its engine cache: every start builds its engines")


def settings_from_options(provider_options: Mapping[str, Mapping[str, object]],
                          session_options: Mapping[str, JsonValue], *, io_binding: bool,
                          pinned_memory: bool) -> OrtSettings:
    """An :class:`OrtSettings` from what ORT returned (option values coerced to strings)."""
    return OrtSettings(
        provider_options={p: {k: str(v) for k, v in o.items()} for p, o in
                          provider_options.items()},
        session_options=dict(session_options),
        io_binding=io_binding,
        pinned_memory=pinned_memory,
    )

