"""What a canary run sends where, how fast, for how long, and what its gates require.

:class:`CanaryConfig` is the run's settings; :meth:`CanaryConfig.from_spec` is the one mapping
from a policy's ``spec.canary`` block and gates to it (the CLI and the analyzer both call it).
:class:`CanarySettings` is the shape of that block as this package reads it, so ``gates``
never imports the policy models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gates.bounded import CANARY_MAX_BYTES
from gates.canary.adapters import get_adapter
from gates.canary.fleet import Instance
from gates.canary.output_check import OutputCheckSpec
from gates.canary.prompts import Prompt, PromptSet, load_prompts
from gates.canary.records import ARMS, Arm
from gates.error_rate import ErrorRateGateSpec
from gates.gate import Gate
from gates.latency import LatencyGateSpec
from gates.registry import canary_gates

__all__ = ["CanaryConfig", "CanarySettings"]


class CanarySettings(Protocol):
    """The policy's ``spec.canary`` block, as :meth:`CanaryConfig.from_spec` reads it (gates
    never import the policy models: ``rollout.policy.models.CanarySpec`` satisfies this)."""

    @property
    def prompts(self) -> object:
        """A prompt-set reference (name or path) or an inline :class:`PromptSet`; anything
        else (a ConfigMap reference) is resolved by the caller, who passes ``prompts``."""
    @property
    def api(self) -> str: ...
    @property
    def max_requests(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def blue_per_green(self) -> int: ...
    @property
    def warmup_requests(self) -> int: ...
    @property
    def timeout_seconds(self) -> float: ...
    @property
    def deadline_seconds(self) -> float: ...
    @property
    def rate(self) -> float | None: ...
    @property
    def output_check(self) -> OutputCheckSpec: ...


@dataclass(frozen=True)
class CanaryConfig:
    """What to send where, how fast, for how long, and what the gates require.

    Each arm is a fleet (:mod:`gates.canary.fleet`): ``blue_instances`` / ``green_instances``
    list every serving instance (with pod and node where known); empty means the one instance
    at ``blue_url`` / ``green_url``, which otherwise must be the URL of the arm's first
    instance.

    Raises:
        ValueError: from ``__post_init__`` on any value out of range.
    """

    blue_url: str
    green_url: str
    prompts: tuple[Prompt, ...]
    api: str = "openai"
    model: str | None = None
    blue_per_green: int = 1
    concurrency: int = 8
    rate: float | None = None
    max_requests: int = 600
    warmup_requests: int = 2
    timeout_s: float = 120.0
    deadline_s: float | None = 1800.0
    latency_gates: tuple[LatencyGateSpec, ...] = (LatencyGateSpec(),)
    error_gate: ErrorRateGateSpec = field(default_factory=ErrorRateGateSpec)
    output_check: OutputCheckSpec = field(default_factory=OutputCheckSpec)
    headers: tuple[tuple[str, str], ...] = ()
    verify: bool | str = True
    seed: int = 0
    max_body_bytes: int = CANARY_MAX_BYTES
    blue_instances: tuple[Instance, ...] = ()
    green_instances: tuple[Instance, ...] = ()

    def __post_init__(self) -> None:
        for arm in ARMS:
            url = self.blue_url if arm == "blue" else self.green_url
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{arm}_url must start with http:// or https://, got {url!r}")
            given = self.blue_instances if arm == "blue" else self.green_instances
            if given and given[0].url != url:
                raise ValueError(f"{arm}_url {url!r} must be the URL of the first of "
                                 f"{arm}_instances ({given[0].url!r})")
            if len(set(given)) != len(given):
                raise ValueError(f"{arm}_instances lists an instance twice")
        checks = [
            (len(self.prompts) >= 1, "prompts must not be empty"),
            (self.blue_per_green >= 1, "blue_per_green must be >= 1"),
            (self.concurrency >= 1, "concurrency must be >= 1"),
            (self.rate is None or (math.isfinite(self.rate) and self.rate > 0),
             "rate must be a finite number > 0 (slices per second)"),
            (self.max_requests >= 1, "max_requests must be >= 1"),
            (self.warmup_requests >= 0, "warmup_requests must be >= 0"),
            (math.isfinite(self.timeout_s) and self.timeout_s > 0, "timeout_s must be > 0"),
            (self.deadline_s is None or self.deadline_s > 0, "deadline_s must be > 0"),
            (self.max_body_bytes >= 1, "max_body_bytes must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        get_adapter(self.api)  # unknown API names fail here, before any request

    def fleet(self, arm: Arm) -> tuple[Instance, ...]:
        """Every instance of ``arm`` (at least one)."""
        given = self.blue_instances if arm == "blue" else self.green_instances
        return given or (Instance(self.blue_url if arm == "blue" else self.green_url),)

    @classmethod
    def from_spec(cls, canary: CanarySettings, gates: Sequence[Gate], *,
                  blue_url: str | None = None, green_url: str | None = None,
                  fleet: Mapping[Arm, Sequence[Instance]] | None = None,
                  max_body_bytes: int = CANARY_MAX_BYTES,
                  prompts: Sequence[Prompt] | None = None) -> CanaryConfig:
        """The one mapping from a policy's canary block, gates and ``limits.canaryMaxBytes``
        to a config: the canary judges the ``source: canary`` latency gates and the error-rate
        gate (the registry's :func:`~gates.registry.canary_gates`; a default error-rate gate
        when the policy has none). Callers override single fields with
        ``dataclasses.replace``.

        Args:
            blue_url, green_url: each arm's one instance, when ``fleet`` does not list them.
            fleet: every instance of each arm (the platform's or the command line's).
            prompts: the prompts to send; default: those of ``canary.prompts`` (a name, a
                path or an inline set).

        Raises:
            PromptSetError: the prompt set cannot be read.
            ValueError: a value out of range, an arm without any instance, or prompts that
                only the caller can resolve (a ConfigMap reference).
        """
        judged = canary_gates(gates)
        chosen = tuple(prompts) if prompts is not None else _prompts_of(canary.prompts)
        instances = {arm: tuple((fleet or {}).get(arm, ())) for arm in ARMS}
        urls = {"blue": blue_url, "green": green_url}
        for arm in ARMS:
            if instances[arm]:
                urls[arm] = instances[arm][0].url
        blue, green = urls["blue"], urls["green"]
        if blue is None or green is None:
            raise ValueError("the canary needs at least one instance of each arm")
        return cls(
            blue_url=blue, green_url=green, blue_instances=instances["blue"],
            green_instances=instances["green"], prompts=chosen, api=canary.api,
            blue_per_green=canary.blue_per_green, concurrency=canary.concurrency,
            rate=canary.rate, max_requests=canary.max_requests,
            warmup_requests=canary.warmup_requests, timeout_s=canary.timeout_seconds,
            deadline_s=canary.deadline_seconds, latency_gates=judged.latency,
            error_gate=judged.error_rate or ErrorRateGateSpec(),
            output_check=canary.output_check, max_body_bytes=max_body_bytes)


def _prompts_of(ref: object) -> tuple[Prompt, ...]:
    """The prompts a policy's ``canary.prompts`` names (a reference) or holds (inline).

    Raises:
        PromptSetError: the referenced set cannot be read.
        ValueError: a reference only the platform can resolve (a ConfigMap).
    """
    if isinstance(ref, PromptSet):
        return tuple(ref.prompts)
    if isinstance(ref, str):
        return tuple(load_prompts(ref).prompts)
    raise ValueError(f"canary.prompts {ref!r} is resolved by the platform: pass the prompts")
