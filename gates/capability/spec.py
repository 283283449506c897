"""The ``capability`` gate's policy block and its answer: requirements, violations, report.

Why itemized: "not admitted" helps nobody at 3 a.m.; each violation names the check, the
expected and observed values and a sentence (``CUDAExecutionProvider requested but ONNX
Runtime fell back to CPU: requested [...] -> bound [CPUExecutionProvider]``). Version pins
are exact strings or ``"same-as-blue"``, resolved against blue's snapshot, because "whatever
blue runs" is the pin that catches drift without anyone writing versions down.

:class:`CapabilityRequirements` carries ``type: "capability"`` so the policy language can put
it in its discriminated union of gates. The checks themselves are
:func:`gates.capability.requirements.check_capability`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gates.capability.logscan import (
    CATALOG,
    LOG_CATEGORIES,
    POLICY_CATEGORY,
    LogCategory,
    Phrase,
    compile_phrases,
)
from gates.verdict import Verdict

__all__ = [
    "SAME_AS_BLUE",
    "BaselineRequiredError",
    "CapabilityReport",
    "CapabilityRequirements",
    "OrtBounds",
    "ProviderName",
    "VersionPins",
    "Violation",
]

SAME_AS_BLUE: Final = "same-as-blue"


ProviderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]+ExecutionProvider$")]
#: An exact version string, or ``"same-as-blue"``.
Pin = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


#: The policy language's conventions: camelCase keys (snake_case accepted), no unknown keys.
_POLICY_CONFIG = ConfigDict(
    extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
)


class VersionPins(BaseModel):
    """Pins on the version matrix (see :class:`~gates.capability.fingerprint.VersionMatrix`)."""

    model_config = _POLICY_CONFIG

    driver_branch: Pin | None = None
    cuda_driver: Pin | None = None
    cuda_runtime: Pin | None = None
    cudnn: Pin | None = None
    tensorrt: Pin | None = None
    onnxruntime: Pin | None = None
    torch: Pin | None = None


_UNITS: Final = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                  "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def _bytes(value: Any) -> Any:
    """``20GiB``, ``16G``, ``512MiB`` or a plain number of bytes -> int bytes."""
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    return value


class OrtBounds(BaseModel):
    """Bounds on ONNX Runtime's runtime settings in effect (provider and session options).

    Checked against the snapshot's ``provider_probe.settings`` (the probe session built with the
    server's own options); CUDA bounds apply where the CUDA provider is bound.

    Attributes:
        require_gpu_mem_limit: the CUDA provider's ``gpu_mem_limit`` must be set (unset, the
            arena may grow to the whole GPU and starve a second process or the VAE).
        gpu_mem_limit_max: ``gpu_mem_limit`` at most this many bytes (``20GiB`` accepted).
        arena_extend_strategy: the CUDA arena's ``arena_extend_strategy`` must be this.
        cudnn_conv_algo_search: the CUDA provider's ``cudnn_conv_algo_search`` must be this.
        cpu_mem_arena: ``SessionOptions.enable_cpu_mem_arena`` must be this.
        allow_int8: TensorRT INT8 (``trt_int8_enable``) allowed; only with the canary's output
            check in ``distance`` mode, the accuracy gate (see
            :meth:`CapabilityRequirements.int8_accuracy_gate_problem`).
        require_engine_cache: with TensorRT bound, ``trt_engine_cache_enable`` must be on (else
            every start builds its engines).
    """

    model_config = _POLICY_CONFIG

    require_gpu_mem_limit: bool = False
    gpu_mem_limit_max: Annotated[int, BeforeValidator(_bytes), Field(ge=1)] | None = None
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] | None = None
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] | None = None
    cpu_mem_arena: bool | None = None
    allow_int8: bool = False
    require_engine_cache: bool = False


class CapabilityRequirements(BaseModel):
    """What a capability gate requires of green (every field optional: require what matters).

    Keys are camelCase in a policy (``requireProviders``, ``minGpus``...).

    Attributes:
        name: the gate's name in verdicts and reports.
        require_providers: ORT providers that must carry the probe graph.
        forbid_providers: providers that must not (``CPUExecutionProvider``: no CPU fallback;
            ORT's CPU provider behind a GPU one, for shape ops, does not count).
        min_gpus: GPUs NVML must list; also that many ``/dev/nvidiaN`` and a loadable libcuda.
        gpu_model: every GPU's NVML name, exactly, or ``same-as-blue`` (same set of models).
        versions: version pins, exact or ``same-as-blue``.
        fingerprint: the whole version matrix, exact or ``same-as-blue``.
        require_fused_attention: a fused SDPA backend (flash, memory-efficient, cuDNN) enabled
            and shown usable in the serving process.
        require_fp16: an fp16 matmul ran on the GPU.
        forbid_log_categories: degraded-path phrase categories that refuse admission
            (default: all of them); the policy's own ``forbid_log_phrases`` always refuse.
        forbid_log_phrases: extra regular expressions to refuse on.
        ort: bounds on ONNX Runtime's runtime settings (:class:`OrtBounds`).
    """

    model_config = _POLICY_CONFIG

    type: Literal["capability"] = "capability"
    name: str = Field("capability", min_length=1, description="Gate name in verdicts and reports.")
    require_providers: tuple[ProviderName, ...] = ()
    forbid_providers: tuple[ProviderName, ...] = ()
    min_gpus: int | None = Field(default=None, ge=0)
    gpu_model: str | None = None
    versions: VersionPins = VersionPins()
    fingerprint: str | None = None
    require_fused_attention: bool = False
    require_fp16: bool = False
    forbid_log_categories: tuple[LogCategory, ...] = tuple(
        c for c in LOG_CATEGORIES if c != POLICY_CATEGORY
    )
    forbid_log_phrases: tuple[str, ...] = ()
    ort: OrtBounds | None = None

    @field_validator("forbid_log_phrases")
    @classmethod
    def _valid_regexes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        compile_phrases(v)
        return v

    @model_validator(mode="after")
    def _providers_consistent(self) -> CapabilityRequirements:
        both = sorted(set(self.require_providers) & set(self.forbid_providers))
        if both:
            raise ValueError(
                f"{', '.join(both)} is both required and forbidden: no green can pass; "
                "remove it from requireProviders or forbidProviders")
        return self

    def log_phrases(self) -> tuple[Phrase, ...]:
        """The catalog plus this policy's own phrases: what to scan log files with."""
        return CATALOG + compile_phrases(self.forbid_log_phrases)

    def int8_accuracy_gate_problem(self, output_check_mode: str | None) -> str | None:
        """Why this gate may not allow INT8 under a canary output check in
        ``output_check_mode`` (``None``: no canary output check), or ``None`` when it may.

        INT8 changes outputs: it is allowed only when the canary compares green's images with
        blue's (the FP16 reference) in ``distance`` mode, which is that accuracy gate. The
        policy loader calls this for every capability gate.
        """
        if self.ort is None or not self.ort.allow_int8 or output_check_mode == "distance":
            return None
        return (f"gate {self.name!r}: ort.allowInt8 is true but the canary's output check is "
                f"{output_check_mode or 'absent'!s}; INT8 needs the accuracy gate: set "
                "canary.outputCheck.mode: distance (with maxDistance) so green's images are "
                "compared with the FP16 reference on the canary prompts")

    def needs_blue(self) -> list[str]:
        """The fields that say ``same-as-blue`` (they need blue's snapshot)."""
        fields = [f"versions.{k}" for k, v in self.versions if v == SAME_AS_BLUE]
        fields += [k for k in ("gpu_model", "fingerprint") if getattr(self, k) == SAME_AS_BLUE]
        return fields


class BaselineRequiredError(ValueError):
    """A requirement says ``same-as-blue`` but no blue snapshot was given (bad input)."""


class Violation(BaseModel):
    """One failed check, with what was expected and what was observed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str
    expected: JsonValue
    observed: JsonValue
    message: str


class CapabilityReport(BaseModel):
    """The gate's answer: admitted, or the itemized violations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    violations: tuple[Violation, ...]
    fingerprint: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def admitted(self) -> bool:
        """No violation."""
        return not self.violations

    @property
    def verdict(self) -> Verdict:
        """``pass`` when admitted, else ``fail`` (a snapshot always holds data to judge)."""
        return Verdict.PASS if self.admitted else Verdict.FAIL

    def checks(self) -> set[str]:
        """The names of the failed checks."""
        return {v.check for v in self.violations}
