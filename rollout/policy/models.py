"""The ``RolloutPolicy`` language: what to roll out, how traffic moves, and what must be proved.

Kubernetes-style envelope (``apiVersion``/``kind``/``metadata``/``spec``) with camelCase keys, so a
policy reads like the manifests it sits beside. Every block forbids unknown keys: a typo such
as ``maxRatoi`` must be an error with its line, not a silently ignored safety margin.
Variants (targets, routers, gates) are discriminated unions keyed by ``type``, which is also
the key of each extension point's registry.

Everything that would fail at run time is refused here, at load, with the field's path: URLs
(scheme and host), durations (finite, positive where zero cannot work, bounded), quantiles and
rates, PromQL selectors, and file references. Every relative path (``canary.prompts``,
``admission.engineManifest``, ``matrix.file``, HAProxy's ``socket``, a process target's
program, ``image``'s files) is resolved against the policy file's directory: the loader passes
it as the validation context ``policy_dir`` (:data:`POLICY_DIR`, :func:`policy_path`); files
are read and validated then, and the policy keeps absolute paths, so the controller runs from
any working directory. ``canary.prompts`` may also hold its set inline or name a ConfigMap key
(``configMapRef``), which the kubernetes platform reads when an analysis starts.
``spec.matrix.file`` (a ``kind: VersionMatrix`` file) is read by the loader, which puts its
pins inline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gates import bounded
from gates.canary.output_check import OutputCheckSpec
from gates.canary.prompts import (
    DEFAULT_PROMPT_SET,
    PromptSet,
    PromptSetError,
    load_prompts,
    resolve_prompts,
)
from gates.capability.spec import CapabilityRequirements
from gates.error_rate import ErrorRateGateSpec
from gates.image.policy import ImageSpec
from gates.latency import LatencyGateSpec
from gates.matrix import MatrixSpec
from gates.registry import capability_gates
from gates.utilization.floor import UtilizationRequirements
from rollout.k8s.spec import GatewayApiRouterSpec, ServiceSelectorRouterSpec
from rollout.notify import NotifySpec

__all__ = [
    "API_VERSION", "POLICY_DIR", "AdmissionSpec", "CanarySpec", "ConfigMapKeyRef",
    "ConfigMapPrompts", "GateSpec", "GatewayApiRouterSpec", "HaproxyRouterSpec", "HttpUrl",
    "KubernetesTarget", "LimitsSpec", "MatrixSpec", "Metadata", "MetricsSpec", "NoneRouterSpec",
    "ProcessTarget", "PrometheusSourceSpec", "PromotionSpec", "PromptsSpec", "RollbackSpec",
    "RolloutPolicy", "RolloutSpec", "RouterSpec", "ServiceSelectorRouterSpec", "StepSpec",
    "TargetSpec", "Targets", "UrlTarget", "policy_path",
]

API_VERSION = "rollout-gates.dev/v1alpha1"
#: Validation-context key: the directory relative file references are resolved against.
POLICY_DIR = "policy_dir"

#: Upper bounds of durations, in seconds: far above any sensible value, far below "forever".
_HOUR = 3600.0
_DAY = 86400.0


def _check_url(value: str) -> str:
    """An http(s) base URL with a host (and a valid port): what httpx will be given."""
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"URL {value!r} contains whitespace; write it without spaces")
    try:
        u = urlsplit(value)
        port = u.port  # ValueError: not a number or out of range
    except ValueError as e:
        raise ValueError(f"URL {value!r} is malformed ({e}); write e.g. "
                         "http://sd-blue.sd.svc:8000") from e
    if u.scheme not in ("http", "https"):
        raise ValueError(f"URL {value!r} must start with http:// or https://, e.g. "
                         "http://127.0.0.1:8001")
    if not u.hostname:
        raise ValueError(f"URL {value!r} has no host; write e.g. http://127.0.0.1:8001")
    if port == 0:
        raise ValueError(f"URL {value!r}: port 0 cannot be connected to")
    if u.query or u.fragment:
        raise ValueError(f"URL {value!r} is a base URL: remove the query or fragment "
                         f"({u.query or u.fragment!r}); paths are added by the controller")
    return value


def policy_path(value: str, info: ValidationInfo) -> str:
    """``value`` as an absolute path when it is relative and the loader gave the policy's
    directory (:data:`POLICY_DIR`); as written otherwise (a saved copy, a model built in code).
    Every relative path of a policy is the policy file's, never the working directory's."""
    context = info.context if isinstance(info.context, dict) else {}
    if POLICY_DIR not in context or Path(value).is_absolute():
        return value
    return str((Path(context[POLICY_DIR]) / value).resolve())


#: An http(s) base URL, checked as :func:`_check_url` says.
HttpUrl = Annotated[str, Field(pattern=r"^https?://", json_schema_extra={"format": "uri"}),
                    AfterValidator(_check_url)]

# Kubernetes label syntax: an optional DNS-subdomain prefix and "/", a name of <= 63 characters;
# values <= 63 characters, alphanumeric at both ends (or empty).
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")


class _Model(BaseModel):
    # allow_inf_nan=False: no float field of the policy accepts inf or NaN ("inf" seconds is
    # no deadline, and NaN compares false with every bound).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True, allow_inf_nan=False)


class Metadata(_Model):
    """Identity of the rollout; ``name`` keys its state, lock and history."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description=(
        "DNS-1123 label: lower-case letters, digits and '-', at most 63 characters."))
    namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
                                  description=(
        "Kubernetes namespace of the RolloutPolicy object (the CLI's --namespace wins; else "
        "targets.blue.namespace of a kubernetes target, else default)."))
    labels: dict[str, str] = Field(default_factory=dict, max_length=64, description=(
        "Kubernetes-style labels, copied into every JSON webhook payload as 'labels' (and "
        "shown in Slack messages): route or group notifications by team, model, cluster."))

    @field_validator("labels")
    @classmethod
    def _label_syntax(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _LABEL_KEY.fullmatch(key) or len(key) > 317:
                raise ValueError(
                    f"label key {key!r} is not a Kubernetes label key: [prefix/]name, name at "
                    "most 63 characters of letters, digits, '-', '_' and '.', alphanumeric at "
                    "both ends (e.g. team, app.kubernetes.io/name)")
            if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
                raise ValueError(
                    f"label {key}: value {value!r} is not a Kubernetes label value: at most "
                    "63 characters of letters, digits, '-', '_' and '.', alphanumeric at both "
                    "ends (quote numbers and booleans: \"1.5\", \"true\")")
        return v


class UrlTarget(_Model):
    """Already running SD servers: one at ``url``, or a fleet at ``urls``."""

    type: Literal["url"] = "url"
    url: HttpUrl = Field(description=(
        "Base URL, e.g. http://127.0.0.1:8001 (with urls: the first of them unless given)."))
    urls: list[HttpUrl] = Field(default_factory=list, max_length=256, description=(
        "Base URLs of every instance of this colour: the canary spreads its slices over all "
        "of them and judges each green instance against blue's pool."))

    @model_validator(mode="before")
    @classmethod
    def _url_from_urls(cls, data: Any) -> Any:
        """``urls`` alone: ``url`` is its first (where a single URL is wanted)."""
        if isinstance(data, dict) and "url" not in data:
            urls = data.get("urls")
            if isinstance(urls, list) and urls:
                return {**data, "url": urls[0]}
        return data

    @model_validator(mode="after")
    def _url_in_urls(self) -> UrlTarget:
        if self.urls and self.url not in self.urls:
            raise ValueError(f"url {self.url} is not one of urls: list every instance in urls "
                             "(url may then be left out)")
        if len(set(self.urls)) != len(self.urls):
            raise ValueError("urls lists a URL twice")
        return self

    @property
    def base_urls(self) -> list[str]:
        """Every instance's base URL, without a trailing slash."""
        return [u.rstrip("/") for u in (self.urls or [self.url])]


class ProcessTarget(_Model):
    """An SD server the local platform starts itself and stops on rollback or promotion."""

    type: Literal["process"] = "process"
    command: list[str] = Field(min_length=1, description=(
        "argv of the server process; a relative program path (with a '/') is relative to the "
        "policy file, a bare name is looked up on PATH."))
    url: HttpUrl = Field(description="Where the process will serve.")
    env: dict[str, str] = Field(default_factory=dict)
    ready_timeout_seconds: float = Field(120.0, gt=0, le=_HOUR)

    @field_validator("command")
    @classmethod
    def _resolve_program(cls, v: list[str], info: ValidationInfo) -> list[str]:
        """A relative program path is the policy's, like every relative path in it."""
        if "/" not in v[0]:
            return v
        return [policy_path(v[0], info), *v[1:]]


class KubernetesTarget(_Model):
    """A Deployment plus the Service in front of it."""

    type: Literal["kubernetes"] = "kubernetes"
    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    deployment: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    service: str = Field(pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
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
    socket: str = Field(min_length=1, description=(
        "Path of HAProxy's admin stats socket, relative to the policy file."))
    backend: str = "sd"
    blue_server: str = "blue"
    green_server: str = "green"

    @field_validator("socket")
    @classmethod
    def _resolve_socket(cls, v: str, info: ValidationInfo) -> str:
        return policy_path(v, info)


class NoneRouterSpec(_Model):
    """Analysis only: the pipeline switches traffic itself and acts on our exit code."""

    type: Literal["none"] = "none"


RouterSpec = Annotated[
    HaproxyRouterSpec | NoneRouterSpec | ServiceSelectorRouterSpec | GatewayApiRouterSpec,
    Field(discriminator="type")]


class StepSpec(_Model):
    """One traffic step: send ``weight`` percent to green, then analyse."""

    weight: int = Field(ge=0, le=100, description="Percent of traffic on green in this step.")
    pause_seconds: float = Field(0.0, ge=0, le=_DAY, description=(
        "Live-traffic soak before analysis."))
    canary: bool = Field(True, description="Run seeded canary requests during this step.")


class ConfigMapKeyRef(_Model):
    """One key of a ConfigMap in the rollout's namespace."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]{1,253}$")


class ConfigMapPrompts(_Model):
    """A prompt set kept in a ConfigMap, read by the kubernetes platform when an analysis
    starts (a missing ConfigMap or key is an error naming it)."""

    config_map_ref: ConfigMapKeyRef


#: ``canary.prompts``: a shipped set's name or a file (relative to the policy), a prompt set
#: written inline, or a ConfigMap key.
PromptsSpec = Annotated[str, Field(min_length=1)] | PromptSet | ConfigMapPrompts


class CanarySpec(_Model):
    """Seeded canary requests sent to both arms in shared time slices."""

    prompts: PromptsSpec = Field(DEFAULT_PROMPT_SET, description=(
        "Prompt set: the name of a shipped set (sd15-512, sdxl-1024, tiny-64) or a YAML file "
        "relative to the policy file's directory (read and validated at load); or the set "
        "inline ({name, defaults, prompts}); or {configMapRef: {name, key}} (kubernetes: read "
        "from the rollout's namespace when the analysis starts)."))
    api: Literal["openai", "a1111"] = "openai"
    max_requests: int = Field(600, ge=1, description="Budget of green requests per analysis.")
    concurrency: int = Field(8, ge=1, le=256, description=(
        "Requests in flight per arm (blue: K x N), each arm its own closed loop kept in step "
        "with the other: the slower arm cannot time the faster one's arrivals."))
    blue_per_green: int = Field(1, ge=1, le=64, description="K blue requests per green one.")
    warmup_requests: int = Field(2, ge=0, le=1000)
    timeout_seconds: float = Field(120.0, gt=0, le=_HOUR, description=(
        "Deadline of one canary request (the whole exchange); a timeout is an error."))
    deadline_seconds: float = Field(1800.0, gt=0, le=_DAY, description=(
        "Hard limit of one canary analysis: a green that never answers cannot hold it longer."))
    rate: float | None = Field(None, gt=0, le=1000, description=(
        "Open-loop arrivals (slices per second) instead of fixed concurrency: no coordinated "
        "omission, and no lock-step queue phases between the arms."))
    output_check: OutputCheckSpec = Field(default_factory=OutputCheckSpec, description=(
        "Same prompt and seed on both arms: compare the images (valid, report, equal, "
        "distance)."))

    @field_validator("prompts")
    @classmethod
    def _resolve_prompts(cls, v: str | PromptSet | ConfigMapPrompts,
                         info: ValidationInfo) -> str | PromptSet | ConfigMapPrompts:
        """With the loader's context: the file, relative to the policy, must load now."""
        context = info.context if isinstance(info.context, dict) else {}
        if not isinstance(v, str) or POLICY_DIR not in context:  # inline, a ConfigMap, a
            return v  # saved copy or a model built in code: as written
        base = Path(context[POLICY_DIR])
        try:
            load_prompts(v, base)
        except PromptSetError as e:
            raise ValueError(f"prompt set {v!r} does not load: {e}") from None
        if Path(v).is_absolute() or _is_shipped_name(v):
            return v
        return str(resolve_prompts(v, base).resolve())

    @model_validator(mode="after")
    def _deadlines(self) -> CanarySpec:
        if self.deadline_seconds < self.timeout_seconds:
            raise ValueError(
                f"deadlineSeconds ({self.deadline_seconds:g}) is shorter than one request's "
                f"timeoutSeconds ({self.timeout_seconds:g}): no request could time out before "
                "the analysis is cut off; raise deadlineSeconds or lower timeoutSeconds")
        return self


def _is_shipped_name(value: str) -> bool:
    return "/" not in value and "\\" not in value and not value.endswith((".yaml", ".yml"))


class PrometheusSourceSpec(_Model):
    """Where live metrics come from (the servers' per-colour series, ``color`` label)."""

    url: HttpUrl = Field(description="Prometheus base URL.")
    window_seconds: float = Field(30.0, ge=2, le=_DAY, description=(
        "Live window judged after each step's canary or soak, and during verification."))
    stale_after_seconds: float = Field(10.0, gt=0, le=_HOUR, description=(
        "A colour whose last scrape is older than this is nodata (traffic stopped?)."))

    @model_validator(mode="before")
    @classmethod
    def _moved_tolerance(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tolerance" in data:
            raise ValueError(
                "metrics.prometheus.tolerance was removed: it silently widened maxRatio of "
                "live latency gates by 15%. Set tolerance on the latency gate itself (gates[] "
                "with source: prometheus, e.g. tolerance: 0.15): the limit is then maxRatio x "
                "(1 + tolerance), the same under every method and source")
        return data


class MetricsSpec(_Model):
    """Live metric sources for the gates that read them."""

    prometheus: PrometheusSourceSpec | None = None
    consecutive_error_limit: int = Field(4, ge=0, le=100, description=(
        "Measurement errors in a row a live gate retries (with backoff, within the window) "
        "before its verdict is error; 0 judges the first error (Argo Rollouts' "
        "consecutiveErrorLimit)."))


GateSpec = Annotated[
    LatencyGateSpec | ErrorRateGateSpec | CapabilityRequirements | UtilizationRequirements,
    Field(discriminator="type")]


class AdmissionSpec(_Model):
    """Checks on green before any traffic or canary reaches it (besides capability gates)."""

    same_path_as_blue: bool = Field(True, description=(
        "Green's execution path per module (backend, device, dtype, attention kernels, memory "
        "format, compilation, ORT providers bound), as its /capabilities reports it, must equal "
        "blue's. Turn off for a rollout that changes the path on purpose."))
    engine_manifest: str | None = Field(None, min_length=1, description=(
        "TensorRT engine manifest (docs/engines.md), relative to the policy file: every engine "
        "must be present with its hash and built for green's TensorRT and compute capability, "
        "or it would be rebuilt at load (gate engines)."))

    @field_validator("engine_manifest")
    @classmethod
    def _resolve_manifest(cls, v: str | None, info: ValidationInfo) -> str | None:
        """With the loader's context: the manifest, relative to the policy, must load now."""
        context = info.context if isinstance(info.context, dict) else {}
        if v is None or POLICY_DIR not in context:
            return v
        from gates.engines import ManifestError, load_manifest

        path = (Path(context[POLICY_DIR]) / v).resolve()
        try:
            load_manifest(path)
        except ManifestError as e:
            raise ValueError(f"engine manifest {v!r} ({path}) does not load: {e}") from None
        return str(path)


class LimitsSpec(_Model):
    """Bounds of every read of another service's answer (:mod:`gates.bounded`).

    Why: httpx's timeouts are per socket read, so a server trickling a byte every few seconds
    never times out, and an endless body is buffered whole. Each exchange gets one deadline
    (connect + headers + whole body) and each body a cap; a broken bound is an ``error``
    verdict with the reason (a canary request: ``bad_payload``), never a hang.
    """

    exchange_seconds: float = Field(bounded.EXCHANGE_SECONDS, gt=0, le=_HOUR, description=(
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
    scale_down_delay_seconds: float = Field(30.0, ge=0, le=_DAY)


class PromotionSpec(_Model):
    """Promotion and the verification that follows the switch."""

    auto: bool = True
    verify_seconds: float = Field(0.0, ge=0, le=_DAY, description=(
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
    matrix: MatrixSpec | None = Field(None, description=(
        "The VersionMatrix green must run on (inline pins, or file: a kind VersionMatrix file "
        "relative to this policy): checked at admission on every green snapshot and, on "
        "Kubernetes, on the labels of every green pod's node (docs/policy.md)."))
    image: ImageSpec | None = Field(None, description=(
        "What green's image is audited against (pull-size budget, forbidden contents, "
        "library pins, signature): docs/images.md."))

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
        for cap in capability_gates(self.gates):  # INT8 only behind an accuracy gate
            if why := cap.int8_accuracy_gate_problem(self.canary.output_check.mode):
                raise ValueError(why)
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
