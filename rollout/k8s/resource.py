"""The ``RolloutPolicy`` custom resource's status: what the controller reports to the cluster.

The resource *is* the policy document (``apiVersion: rollout-gates.dev/v1alpha1``, ``kind:
RolloutPolicy``, the same ``spec`` a local policy file has), so one language serves ``rollout
promote --policy FILE`` on a laptop and ``kubectl apply`` on a cluster. The controller alone
writes ``.status`` (the status subresource); users and the CLI write ``.spec`` and intents.

Why a model of its own: three readers must agree on it: the CRD's status schema (generated
from this model), the controller that writes it, and the GitOps tools that read it (the Argo CD
health check in Lua, Flux's kstatus through ``conditions``, ``kubectl wait --for=condition=Ready``).

Conditions follow kstatus (``sigs.k8s.io/cli-utils/pkg/kstatus``): ``Reconciling`` is True while
a rollout of the current generation is under way, ``Stalled`` is True when it ended without
promotion (rolled back or aborted: it will not progress without a new spec or a retry), and
``Ready`` is True only once the current generation was promoted. ``observedGeneration`` says
which ``metadata.generation`` the rest of the status describes: a status older than the spec
is never read as the verdict on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "CONDITION_TYPES",
    "ConditionStatus",
    "GateStatus",
    "InstanceStatus",
    "RolloutPolicyStatus",
]

ConditionType = Literal["Ready", "Reconciling", "Stalled"]
CONDITION_TYPES: tuple[ConditionType, ...] = ("Ready", "Reconciling", "Stalled")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class ConditionStatus(_Model):
    """One kstatus condition (the shape of ``metav1.Condition``)."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str = Field(description="RFC 3339 time the status last changed.")
    observed_generation: int = Field(0, ge=0)


class GateStatus(_Model):
    """The last verdict of one gate."""

    name: str
    verdict: str = Field(description="pass, fail, inconclusive, nodata or error.")
    reason: str = ""


class InstanceStatus(_Model):
    """What the canary measured on one serving instance (a pod) of one colour."""

    arm: Literal["blue", "green"]
    url: str
    pod: str = ""
    node: str = ""
    n: int = Field(0, ge=0)
    p50: float | None = Field(None, description="Seconds.")
    p95: float | None = Field(None, description="Seconds.")
    errors: int = Field(0, ge=0)
    verdict: str = ""


class RolloutPolicyStatus(_Model):
    """``.status`` of a RolloutPolicy, written by the controller only."""

    observed_generation: int = Field(0, ge=0, description=(
        "The metadata.generation this status describes."))
    phase: str = Field("", description=(
        "Pending, Admitting, Shifting, Analyzing, Paused, Promoting, Verifying, Promoted, "
        "RollingBack, RolledBack or Aborted."))
    awaiting_promotion: bool = Field(False, description=(
        "Paused at the manual gate (promotion.auto: false) until `rollout promote NAME "
        "--confirm`."))
    step: int = Field(0, ge=0)
    steps: int = Field(0, ge=0, description="How many steps the plan has.")
    blue_weight: int | None = Field(None, ge=0, le=100, description=(
        "Percent on blue, read back from the router."))
    green_weight: int | None = Field(None, ge=0, le=100, description=(
        "Percent on green, read back from the router."))
    verdict: str = Field("", description="The last combined verdict.")
    reason: str = Field("", max_length=4096)
    internal_error: bool = Field(False, description=(
        "Rolled back because the controller failed, not because green was judged worse."))
    attempt: int = Field(0, ge=0, description="Runs of this generation (retry adds one).")
    gates: list[GateStatus] = Field(default_factory=list)
    instances: list[InstanceStatus] = Field(default_factory=list)
    conditions: list[ConditionStatus] = Field(default_factory=list)
    history_config_map: str = Field("", description=(
        "ConfigMap (owned by this object) holding the decision trail and evidence."))
    started_at: str = ""
    finished_at: str = ""
