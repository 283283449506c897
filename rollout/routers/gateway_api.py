"""The ``gateway-api`` router: weights of an HTTPRoute rule's ``backendRefs``.

Gateway API weights are relative (``weight`` defaults to 1; a ref with weight 0 gets no
traffic), so the split is read back as percentages of their sum. Changing weights rewrites the
rule list, which a merge patch can only replace whole; the patch therefore carries the route's
``resourceVersion`` as a precondition, and a concurrent edit (a GitOps sync, a person) turns into
a 409 that is answered by re-reading and re-applying only the weights, never by overwriting the
other party's change.

Make-before-break comes from atomicity rather than ordering: both backendRefs' weights change
in ONE patch (the whole rule list in one request), so the API server stores the old split or
the new one and no reader (the Gateway's controller, a watch, ``get_weights``) ever sees a
half-applied switch. Two patches, one per ref, would pass through 0/0 when lowering first (the
Gateway has no backend left for the rule and answers errors), or stay there if the controller
died between them. The data plane's convergence is the Gateway implementation's: Envoy-based
ones swap the route's cluster weights in one update, and the old slot keeps its pods until the
rollout is terminal and ``rollback.scaleDownDelaySeconds`` has passed. A 0/0 target is refused
before any request, since it would drop all traffic.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rollout.errors import BadInputError, NotFoundError, RouterError, StateConflictError
from rollout.k8s.client import HTTP_ROUTES, Json, KubeClient
from rollout.k8s.spec import GatewayApiRouterSpec, Role, SlotRoles
from rollout.machine import Weights

__all__ = ["GatewayApiRouter"]

_CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class GatewayApiRouter:
    """Weights between the two slots' Services in one rule of an HTTPRoute.

    Args:
        backends: the Service name of each slot (``targets.<slot>.service``).
    """

    client: KubeClient
    spec: GatewayApiRouterSpec
    namespace: str
    backends: Mapping[Role, str]
    roles: SlotRoles = field(default_factory=SlotRoles)

    def with_roles(self, roles: SlotRoles) -> GatewayApiRouter:
        """The same router for a rollout whose slots play ``roles``."""
        return replace(self, roles=roles)

    def check(self) -> None:
        """The route exists and its rule references both slots' Services."""
        self._slot_weights(self._route())

    def set_weights(self, weights: Weights) -> None:
        """Write the split as the two backendRefs' weights, both in one patch.

        Re-read and re-applied on a concurrent edit (409).

        Raises:
            BadInputError: the split is 0/0 (nothing would serve); nothing was sent.
            RouterError: the route kept changing under us.
        """
        if weights.blue == 0 and weights.green == 0:
            raise BadInputError("weights 0/0 would leave no slot serving; refused")
        wanted = {self.roles.slot("blue"): weights.blue, self.roles.slot("green"): weights.green}
        for _ in range(_CONFLICT_RETRIES):
            route = self._route()
            rules: list[Any] = copy.deepcopy((route.get("spec") or {}).get("rules") or [])
            refs = self._refs(rules)
            if all(refs[slot].get("weight", 1) == w for slot, w in wanted.items()):
                return
            for slot, w in wanted.items():
                refs[slot]["weight"] = w
            try:  # one request for both refs: the route never holds a half-applied split
                self.client.patch(HTTP_ROUTES, self.namespace, self.spec.http_route, {
                    "metadata": {"resourceVersion": route["metadata"]["resourceVersion"]},
                    "spec": {"rules": rules}})
                return
            except StateConflictError:
                continue  # someone else edited the route: re-read, re-apply the weights only
        raise RouterError(f"HTTPRoute {self.namespace}/{self.spec.http_route} changed under "
                          f"us {_CONFLICT_RETRIES} times in a row; weights not applied")

    def get_weights(self) -> Weights:
        """The split the route specifies now, in percent (read back from the API server)."""
        slot_weights = self._slot_weights(self._route())
        total = sum(slot_weights.values())
        if total == 0:
            raise RouterError(f"HTTPRoute {self.namespace}/{self.spec.http_route} gives both "
                              "slots weight 0: no traffic is served")
        blue = round(100 * slot_weights[self.roles.slot("blue")] / total)
        return Weights(blue=blue, green=100 - blue)

    def serving_slot(self) -> Role | None:
        """The slot that gets all traffic now, or None while the traffic is split."""
        slot_weights = self._slot_weights(self._route())
        serving = [slot for slot, w in slot_weights.items() if w > 0]
        return serving[0] if len(serving) == 1 else None

    def _route(self) -> Json:
        try:
            return self.client.get(HTTP_ROUTES, self.namespace, self.spec.http_route)
        except NotFoundError as e:
            raise BadInputError(f"router.httpRoute: {e}") from e

    def _slot_weights(self, route: Json) -> dict[Role, int]:
        rules = (route.get("spec") or {}).get("rules") or []
        return {slot: int(ref.get("weight", 1)) for slot, ref in self._refs(rules).items()}

    def _refs(self, rules: list[Any]) -> dict[Role, dict[str, Any]]:
        """The two slots' backendRefs in ``rules[spec.rule]`` (the same dicts, to edit)."""
        where = f"HTTPRoute {self.namespace}/{self.spec.http_route}"
        if self.spec.rule >= len(rules):
            raise BadInputError(f"{where} has {len(rules)} rules; router.rule is "
                                f"{self.spec.rule}")
        refs = rules[self.spec.rule].get("backendRefs") or []
        found: dict[Role, dict[str, Any]] = {}
        for slot, service in self.backends.items():
            matching = [r for r in refs if r.get("name") == service
                        and r.get("kind", "Service") == "Service" and not r.get("group")]
            if len(matching) != 1:
                raise BadInputError(f"{where} rule {self.spec.rule} must reference Service "
                                    f"{service!r} (slot {slot}) exactly once")
            found[slot] = matching[0]
        others = [r.get("name") for r in refs if not any(r is f for f in found.values())]
        if others:
            raise BadInputError(f"{where} rule {self.spec.rule} also sends traffic to "
                                f"{others}; the router owns the whole split")
        return found
