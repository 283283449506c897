"""The ``RolloutPolicy`` language: what to roll out, how traffic moves, and what must be proved.

Kubernetes-style envelope (``apiVersion``/``kind``/``metadata``/``spec``) with camelCase keys, so a
policy reads like the manifests it sits beside. Every block forbids unknown keys: a typo such
as ``maxRatoi`` must be an error with its line, not a silently ignored safety margin.
Variants (targets, routers, gates) are discriminated unions keyed by ``type``, which is also
the key of each extension point's registry.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from gates import bounded
from gates.canary.output_check import OutputCheckSpec
from gates.capability.requirements import CapabilityRequirements
from gates.error_rate import ErrorRateGateSpec
from gates.latency import LatencyGateSpec
from gates.utilization.floor import UtilizationRequirements
from rollout.notify import NotifySpec
from rollout.platforms.kubernetes_spec import GatewayApiRouterSpec, ServiceSelectorRouterSpec

__all__ = [
    "API_VERSION",
    "AdmissionSpec",
    "CanarySpec",
    "GateSpec",
    "GatewayApiRouterSpec",
    "HaproxyRouterSpec",
    "KubernetesTarget",
    "LimitsSpec",
    "Metadata",
    "MetricsSpec",
    "NoneRouterSpec",
    "ProcessTarget",
    "PrometheusSourceSpec",
    "PromotionSpec",
    "RollbackSpec",
    "RolloutPolicy",
    "RolloutSpec",
    "RouterSpec",
    "ServiceSelectorRouterSpec",
    "StepSpec",
    "TargetSpec",
    "Targets",
    "UrlTarget",
]

API_VERSION = "rollout-gates.dev/v1alpha1"


class _Model(BaseModel):
    # allow_inf_nan=False: no float field of the policy accepts inf or NaN ("inf" seconds is
    # no deadline, and NaN compares false with every bound).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True, allow_inf_nan=False)


class Metadata(_Model):
    """Identity of the rollout; ``name`` keys its state, lock and history."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description=(
        "DNS-1123 label: lower-case letters, digits and '-', at most 63 characters."))
    labels: dict[str, str] = Field(default_factory=dict)


class UrlTarget(_Model):
    """An already running SD server reachable at ``url``."""

    type: Literal["url"] = "url"
    url: str = Field(pattern=r"^https?://", description="Base URL, e.g. http://127.0.0.1:8001")


class ProcessTarget(_Model):
    """An SD server the local platform starts itself and stops on rollback or promotion."""

    type: Literal["process"] = "process"
    command: list[str] = Field(min_length=1, description="argv of the server process.")
    url: str = Field(pattern=r"^https?://", description="Where the process will serve.")
    env: dict[str, str] = Field(default_factory=dict)
    ready_timeout_seconds: float = Field(120.0, gt=0)


class KubernetesTarget(_Model):
    """A Deployment plus the Service in front of it."""

    type: Literal["kubernetes"] = "kubernetes"
    namespace: str = "default"
    deployment: str
    service: str
    port: int = Field(8000, ge=1, le=65535)


TargetSpec = Annotated[UrlTarget | ProcessTarget | KubernetesTarget,
                       Field(discriminator="type")]


class Targets(_Model):
    """The current (blue) and the new (green) deployment."""

    blue: TargetSpec
    green: TargetSpec


class HaproxyRouterSpec(_Model):
    """Weights set through HAProxy's runtime API (admin socket) and read back after each change."""

    type: Literal["haproxy"] = "haproxy"
    socket: str = Field(description="Path of HAProxy's admin stats socket.")
    backend: str = "sd"
    blue_server: str = "blue"
    green_server: str = "green"


class NoneRouterSpec(_Model):
    """Analysis only: the pipeline switches traffic itself and acts on our exit code."""

    type: Literal["none"] = "none"


RouterSpec = Annotated[
    HaproxyRouterSpec | NoneRouterSpec | ServiceSelectorRouterSpec | GatewayApiRouterSpec,
    Field(discriminator="type")]


class StepSpec(_Model):
    """One traffic step: send ``weight`` percent to green, then analyse."""

    weight: int = Field(ge=0, le=100, description="Percent of traffic on green in this step.")
    pause_seconds: float = Field(0.0, ge=0, description="Live-traffic soak before analysis.")
    canary: bool = Field(True, description="Run seeded canary requests during this step.")


class CanarySpec(_Model):
    """Seeded canary requests sent to both arms in shared time slices."""

    prompts: str = Field("policies/prompts/sd15-512.yaml", description="Prompt-set file.")
    api: Literal["openai", "a1111"] = "openai"
    max_requests: int = Field(600, ge=1, description="Budget of green requests per analysis.")
    concurrency: int = Field(8, ge=1, le=256, description=(
        "Requests in flight per arm (blue: K x N), each arm its own closed loop kept in step "
        "with the other: the slower arm cannot time the faster one's arrivals."))
    blue_per_green: int = Field(1, ge=1, le=64, description="K blue requests per green one.")
    warmup_requests: int = Field(2, ge=0)
    timeout_seconds: float = Field(120.0, gt=0)
    deadline_seconds: float = Field(1800.0, gt=0, description=(
        "Hard limit of one canary analysis: a green that never answers cannot hold it longer."))
    rate: float | None = Field(None, gt=0, description=(
        "Open-loop arrivals (slices per second) instead of fixed concurrency: no coordinated "
        "omission, and no lock-step queue phases between the arms."))
    output_check: OutputCheckSpec = Field(default_factory=OutputCheckSpec, description=(
        "Same prompt and seed on both arms: compare the images (report, equal, distance)."))


class PrometheusSourceSpec(_Model):
    """Where live metrics come from (the servers' per-colour series, ``color`` label)."""

    url: str = Field(pattern=r"^https?://", description="Prometheus base URL.")
    window_seconds: float = Field(30.0, ge=2, description=(
        "Live window judged after each step's canary or soak, and during verification."))
    stale_after_seconds: float = Field(10.0, gt=0, description=(
        "A colour whose last scrape is older than this is nodata (traffic stopped?)."))
    tolerance: float = Field(0.15, ge=0, description=(
        "Live latency slack over maxRatio: histogram buckets interpolate (see statistics)."))


class MetricsSpec(_Model):
    """Live metric sources for the gates that read them."""

    prometheus: PrometheusSourceSpec | None = None


GateSpec = Annotated[
    LatencyGateSpec | ErrorRateGateSpec | CapabilityRequirements | UtilizationRequirements,
    Field(discriminator="type")]


class AdmissionSpec(_Model):
    """Checks on green before any traffic or canary reaches it (besides capability gates)."""

    same_path_as_blue: bool = Field(True, description=(
        "Green's execution path per module (backend, device, dtype, attention kernels, memory "
        "format, compilation, ORT providers bound), as its /capabilities reports it, must equal "
        "blue's. Turn off for a rollout that changes the path on purpose."))


class LimitsSpec(_Model):
    """Bounds of every read of another service's answer (:mod:`gates.bounded`).

    Why: httpx's timeouts are per socket read, so a server trickling a byte every few seconds
    never times out, and an endless body is buffered whole. Each exchange gets one deadline
    (connect + headers + whole body) and each body a cap; a broken bound is an ``error``
    verdict with the reason (a canary request: ``bad_payload``), never a hang.
    """

    exchange_seconds: float = Field(bounded.EXCHANGE_SECONDS, gt=0, description=(
        "Deadline of one whole HTTP exchange (connect, headers and body) for admission reads "
        "(/readyz, /capabilities), readiness and health probes, and Prometheus queries. The "
        "canary's own per-request deadline is canary.timeoutSeconds."))
    capabilities_max_bytes: int = Field(bounded.CAPABILITIES_MAX_BYTES, ge=1024, description=(
        "Cap on a /capabilities (and /readyz, /healthz) body, in bytes."))
    canary_max_bytes: int = Field(bounded.CANARY_MAX_BYTES, ge=1024, description=(
        "Cap on one canary answer, in bytes (a batch of 1024 px PNGs is a few MB); a larger "
        "answer is a bad_payload error. Up to this much per request in flight is held."))
    prometheus_max_bytes: int = Field(bounded.PROMETHEUS_MAX_BYTES, ge=1024, description=(
        "Cap on one Prometheus query answer, in bytes."))


class RollbackSpec(_Model):
    """What happens when the evidence is not enough or a gate fails."""

    on_inconclusive: Literal["pause", "rollback"] = Field("rollback", description=(
        "Inconclusive analysis never promotes: pause for a human, or roll back."))
    scale_down_delay_seconds: float = Field(30.0, ge=0)


class PromotionSpec(_Model):
    """Promotion and the verification that follows the switch."""

    auto: bool = True
    verify_seconds: float = Field(0.0, ge=0, description=(
        "Post-switch verification window; a breach there still rolls back."))


class RolloutSpec(_Model):
    """Everything the controller needs to move traffic and judge green."""

    platform: Literal["local", "kubernetes"] = "local"
    targets: Targets
    router: RouterSpec = Field(default_factory=NoneRouterSpec)
    steps: list[StepSpec] = Field(min_length=1)
    canary: CanarySpec = Field(default_factory=CanarySpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    admission: AdmissionSpec = Field(default_factory=AdmissionSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    gates: list[GateSpec] = Field(min_length=1)
    rollback: RollbackSpec = Field(default_factory=RollbackSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    notify: NotifySpec = Field(default_factory=NotifySpec)

    @model_validator(mode="after")
    def _check(self) -> RolloutSpec:
        weights = [s.weight for s in self.steps]
        if weights != sorted(weights):
            raise ValueError(f"steps must not decrease green's weight, got {weights}")
        names = [g.name for g in self.gates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"gate names must be unique; repeated: {', '.join(dupes)}")
        live = [g.name for g in self.gates if getattr(g, "source", None) == "prometheus"]
        if live and self.metrics.prometheus is None:
            raise ValueError(f"gates {', '.join(live)} read Prometheus: set "
                             "spec.metrics.prometheus.url")
        blind = [i for i, s in enumerate(self.steps) if not s.canary]
        if blind and not live:  # nothing could judge such a step: it would always end nodata
            raise ValueError(
                f"steps {blind} set canary: false, so only gates that read Prometheus could judge "
                "them and there are none: such a step always ends nodata (and rolls back); drop "
                "the step, set canary: true, or add a gate with source: prometheus")
        return self


class RolloutPolicy(_Model):
    """A complete rollout policy document."""

    api_version: Literal["rollout-gates.dev/v1alpha1"]
    kind: Literal["RolloutPolicy"]
    metadata: Metadata
    spec: RolloutSpec
