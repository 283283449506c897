"""Policy blocks of the Kubernetes routers, and the slot/role vocabulary of the platform.

Slots and roles. The policy's ``targets.blue`` and ``targets.green`` name two *slots*: fixed
Deployments (``sd-blue``, ``sd-green``) whose pods carry the slot's name in the colour label.
The state machine speaks of *roles*: ``blue`` is what serves now, ``green`` is what is being
rolled out (as in :class:`~rollout.machine.Weights`). On Kubernetes the roles swap between the
slots at every promotion (the next release goes to the idle slot, as Argo Rollouts does with
its active/preview ReplicaSets), so :class:`SlotRoles` records which slot plays which role,
and every Kubernetes component translates through it.

The router models follow :mod:`rollout.policy.models`: camelCase aliases, unknown keys
rejected, ``type`` as the discriminator of the ``RouterSpec`` union.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "COLOR_LABEL",
    "GatewayApiRouterSpec",
    "Role",
    "ServiceSelectorRouterSpec",
    "SlotRoles",
]

#: The pod label whose value is the slot's name (``blue`` or ``green``).
COLOR_LABEL = "rollout-gates.dev/color"

Role = Literal["blue", "green"]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True)


class ServiceSelectorRouterSpec(_Model):
    """All-or-nothing switch: the active Service selects one slot's pods by the colour label.

    Only 0 % and 100 % are possible, so use it with steps ``[0]`` (green analysed through the
    preview Service and per pod, no live traffic) and let promotion switch the selector.
    """

    type: Literal["service-selector"] = "service-selector"
    active_service: str = Field(pattern=_DNS_LABEL, description=(
        "Service that receives live traffic; its selector is switched between slots."))
    preview_service: str | None = Field(None, pattern=_DNS_LABEL, description=(
        "Service that always selects the slot being rolled out (canaries go there)."))
    color_label: str = Field(COLOR_LABEL, description="Pod label whose value is the slot.")


class GatewayApiRouterSpec(_Model):
    """Weighted split through a Gateway API ``HTTPRoute``'s ``backendRefs``.

    One rule of the route must reference both slots' Services (``targets.*.service``); the
    router changes only their ``weight`` fields and reads them back.
    """

    type: Literal["gateway-api"] = "gateway-api"
    http_route: str = Field(pattern=_DNS_LABEL, description="Name of the HTTPRoute.")
    rule: int = Field(0, ge=0, description="Index of the rule whose backendRefs are weighted.")


@dataclass(frozen=True)
class SlotRoles:
    """Which slot plays which role in this rollout (``serving`` is the blue role)."""

    serving: Role = "blue"

    @property
    def candidate(self) -> Role:
        """The slot being rolled out (the green role)."""
        return "green" if self.serving == "blue" else "blue"

    def slot(self, role: Role) -> Role:
        """The slot that plays ``role``."""
        return self.serving if role == "blue" else self.candidate

    def role(self, slot: Role) -> Role:
        """The role that ``slot`` plays."""
        return "blue" if slot == self.serving else "green"

    def swapped(self) -> SlotRoles:
        """The roles after a promotion: the candidate serves."""
        return SlotRoles(serving=self.candidate)
