"""The ``service-selector`` router: the active Service selects one slot's pods by a label.

A selector switch moves all traffic at once and exactly (kube-proxy follows the Service's
EndpointSlices), so it can only express 0 % or 100 % on green. Anything else is refused as
bad input rather than rounded: a rollout must never believe a split it did not get. The
patch touches only the colour label of the selector (a merge patch of that one map key), so
other selector labels a team keeps there are left alone; ``get_weights`` reads the selector
back from the API server.

Make-before-break, and why no ordering is needed here: the switch is ONE merge patch that
replaces the value of one selector key (``color: blue`` -> ``color: green``), never "remove the
old label, then add the new one". The API server stores the old selector or the new one, so the
Service always selects exactly one slot; there is no intermediate selector that matches no pod
(or both), and a controller killed before or after the patch leaves a Service that serves. The
endpoints follow the selector in one EndpointSlice reconciliation, and kube-proxy replaces a
Service's rules per node in one sync. The "make" half is the controller's: traffic moves to a
slot only after ``wait_ready`` saw its Deployment rolled out, and the slot losing traffic keeps
its pods (connections in flight finish, nodes whose kube-proxy is late still reach ready pods)
until the rollout is terminal and ``rollback.scaleDownDelaySeconds`` has passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rollout.errors import BadInputError, NotFoundError, RouterError
from rollout.k8s.client import SERVICES, Json, KubeClient
from rollout.k8s.spec import Role, ServiceSelectorRouterSpec, SlotRoles
from rollout.machine import Weights

__all__ = ["ServiceSelectorRouter"]


@dataclass(frozen=True)
class ServiceSelectorRouter:
    """Switches ``spec.activeService`` between the two slots."""

    client: KubeClient
    spec: ServiceSelectorRouterSpec
    namespace: str
    roles: SlotRoles = field(default_factory=SlotRoles)

    def with_roles(self, roles: SlotRoles) -> ServiceSelectorRouter:
        """The same router for a rollout whose slots play ``roles``."""
        return replace(self, roles=roles)

    def check(self) -> None:
        """The active Service exists and selects a slot by the colour label."""
        self.serving_slot()

    def set_weights(self, weights: Weights) -> None:
        """Point the active Service at the slot that gets 100 % (one atomic patch)."""
        if weights.green not in (0, 100) or weights.blue + weights.green != 100:
            raise BadInputError(
                f"the service-selector router moves all traffic at once; it cannot apply "
                f"{weights.blue}/{weights.green} (use steps [0] or the gateway-api router)")
        slot = self.roles.slot("green" if weights.green == 100 else "blue")
        try:
            self.client.patch(SERVICES, self.namespace, self.spec.active_service,
                              {"spec": {"selector": {self.spec.color_label: slot}}})
        except NotFoundError as e:
            raise RouterError(f"active Service vanished: {e}") from e

    def get_weights(self) -> Weights:
        """The split the active Service applies now (read back from the API server)."""
        role = self.roles.role(self.serving_slot())
        return Weights(blue=100, green=0) if role == "blue" else Weights(blue=0, green=100)

    def serving_slot(self) -> Role:
        """The slot the active Service selects now.

        Raises:
            BadInputError: the Service is missing or selects no slot by the colour label.
        """
        service = self._service()
        selected = ((service.get("spec") or {}).get("selector") or {}).get(self.spec.color_label)
        if selected not in ("blue", "green"):
            raise BadInputError(
                f"Service {self.namespace}/{self.spec.active_service} must select pods by "
                f"{self.spec.color_label}=blue|green; its selector is "
                f"{(service.get('spec') or {}).get('selector')}")
        return "blue" if selected == "blue" else "green"

    def _service(self) -> Json:
        try:
            return self.client.get(SERVICES, self.namespace, self.spec.active_service)
        except NotFoundError as e:
            raise BadInputError(f"router.activeService: {e}") from e
