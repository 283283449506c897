"""The ``kubernetes`` platform: two slot Deployments, per-pod endpoints, readiness, tidy-up.

What it does, in the order a rollout needs it (:func:`build_kubernetes` wires it up):

1. **Roles.** The policy names two slots (see :mod:`~rollout.k8s.spec`); which
   one serves is read from the cluster: from the Deployments' ``rollout-gates.dev/role``
   annotations while a rollout of this name is unfinished (so a restarted controller keeps
   the roles it started with, even when traffic already moved), otherwise from the router
   (the slot that gets all traffic serves). Promotion swaps the annotations.
2. **wait_ready("green")** prepares the candidate slot: scales it up to the serving slot's
   replica count if it was scaled down after the last rollout, records the roles, points
   the preview Service at it, then waits like ``kubectl rollout status`` does: the controller
   observed the current generation, every replica is updated and available, no old replica
   is left, and the Deployment has not exceeded its progress deadline (fails at once if it
   has). It watches the Deployment (with a server-side timeout) instead of polling.
3. **instances(color)** lists the slot Service's EndpointSlices and returns one instance per
   ready pod (its URL, the pod from the endpoint's ``targetRef`` and the node from its
   ``nodeName``), so canaries and capability checks reach every pod and a verdict names the
   replica: one pod on a bad GPU node is caught even when the Service would hide it behind its
   healthy siblings. ``endpoints(color)`` is their URLs. Needs ``list`` on EndpointSlices.
   **config_map_text(name, key)** reads a prompt set a policy keeps in a ConfigMap of the
   namespace (``canary.prompts.configMapRef``), when the analysis starts.
4. **placements(color)** lists the slot's pods (by its colour label) and reads the labels of
   each pod's node, for the version matrix's node check at admission
   (:func:`gates.matrix.placement_violations`). Needs ``list`` on pods in the namespace and
   ``get`` on nodes (cluster-scoped: a ClusterRole).
5. **finish(status)** after a terminal phase: on promotion swap the roles and point the
   preview at the now idle slot; then, after the policy's scale-down delay (connections
   drain, and a rollback to the old slot stays instant meanwhile), scale the losing slot to
   zero to free its GPUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gates.canary.fleet import Instance
from gates.matrix import NodePlacement
from rollout.errors import BadInputError, NotFoundError, StateConflictError, UnavailableError
from rollout.k8s.client import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    NODES,
    PODS,
    SERVICES,
    Json,
    KubeClient,
    connect,
)
from rollout.k8s.spec import (
    COLOR_LABEL,
    GatewayApiRouterSpec,
    Role,
    ServiceSelectorRouterSpec,
    SlotRoles,
)
from rollout.machine import Phase, RolloutStatus
from rollout.platforms.base import Platform, StatusStore
from rollout.platforms.kube_store import ConfigMapStatusStore
from rollout.policy.models import KubernetesTarget, NoneRouterSpec, RolloutPolicy
from rollout.routers.base import TrafficRouter
from rollout.routers.gateway_api import GatewayApiRouter
from rollout.routers.none import NoneRouter
from rollout.routers.service_selector import ServiceSelectorRouter

__all__ = ["ROLE_ANNOTATION", "KubernetesPlatform", "build_kubernetes", "rollout_progress"]

#: Annotation on each slot Deployment: ``serving`` or ``candidate``.
ROLE_ANNOTATION = "rollout-gates.dev/role"
_SLOTS: tuple[Role, Role] = ("blue", "green")


def rollout_progress(deployment: Json) -> tuple[bool, str]:
    """Whether a Deployment finished rolling out, and what it waits for (kubectl's rules).

    Raises:
        UnavailableError: the Deployment exceeded its progress deadline (it will not finish).
    """
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    status = deployment.get("status") or {}
    name = f"Deployment {meta.get('namespace')}/{meta.get('name')}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            raise UnavailableError(f"{name} exceeded its progress deadline: "
                                   f"{cond.get('message', '')}")
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False, "waiting for the Deployment controller to observe the new spec"
    want = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    if updated < want:
        return False, f"{updated} of {want} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available} of {want} replicas available"


@dataclass
class KubernetesPlatform:
    """The two slot Deployments of one namespace (see the module docstring).

    Args:
        targets: each slot's Deployment and Service.
        roles: which slot serves in this rollout.
        preview_service: a Service kept pointed at the candidate slot, or None.
        scale_down_delay: seconds between the end of a rollout and scaling the loser to 0.
    """

    client: KubeClient
    namespace: str
    targets: Mapping[Role, KubernetesTarget]
    roles: SlotRoles
    preview_service: str | None = None
    color_label: str = COLOR_LABEL
    scale_down_delay: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def check(self) -> None:
        """Both slots' Deployments and Services exist and the pods carry their slot label."""
        for slot in _SLOTS:
            t = self.targets[slot]
            deployment = self._deployment(slot)
            labels = ((deployment.get("spec") or {}).get("template") or {}).get(
                "metadata", {}).get("labels") or {}
            if labels.get(self.color_label) != slot:
                raise BadInputError(
                    f"Deployment {self.namespace}/{t.deployment} (targets.{slot}) must label "
                    f"its pods {self.color_label}={slot}; they have {labels}")
            try:
                self.client.get(SERVICES, self.namespace, t.service)
            except NotFoundError as e:
                raise BadInputError(f"targets.{slot}.service: {e}") from e

    def endpoints(self, color: str) -> list[str]:
        """``http://POD_IP:PORT`` of every ready pod of the slot playing ``color``.

        Raises:
            UnavailableError: no pod is ready.
        """
        return [i.url for i in self.instances(color)]

    def instances(self, color: str) -> list[Instance]:
        """Every ready pod of the slot playing ``color``: ``http://POD_IP:PORT``, the pod
        (the endpoint's ``targetRef`` when it is a Pod) and its node (``nodeName``), sorted by
        URL. An address listed by two slices (a Service mid-update) counts once.

        Raises:
            UnavailableError: no pod is ready.
        """
        t = self.targets[self.roles.slot(_role(color))]
        slices = self.client.list_objects(ENDPOINT_SLICES, self.namespace, label_selector=(
            f"kubernetes.io/service-name={t.service}"))
        found: dict[str, Instance] = {}
        for s in slices:
            port = _slice_port(s, t.port)
            for ep in s.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                # Per the EndpointSlice API, an unset "ready" means ready.
                if cond.get("ready") is False or cond.get("terminating") is True:
                    continue
                addresses = ep.get("addresses") or []
                if addresses:  # consumers use the first address (the API's rule)
                    host = addresses[0]
                    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
                    ref = ep.get("targetRef") or {}
                    pod = str(ref.get("name") or "") if ref.get("kind", "Pod") == "Pod" else ""
                    found.setdefault(url, Instance(url, pod=pod,
                                                   node=str(ep.get("nodeName") or "")))
        if not found:
            raise UnavailableError(f"no ready pod behind Service {self.namespace}/{t.service} "
                                   f"({color}: slot {self.roles.slot(_role(color))})")
        return [found[u] for u in sorted(found)]

    def config_map_text(self, name: str, key: str) -> str:
        """The text under ``key`` of ConfigMap ``name`` in the rollout's namespace.

        Raises:
            BadInputError: no such ConfigMap, or it has no such key (the message names both
                and the keys it has).
        """
        try:
            cm = self.client.get(CONFIG_MAPS, self.namespace, name)
        except NotFoundError as e:
            raise BadInputError(f"canary.prompts.configMapRef: ConfigMap {self.namespace}/"
                                f"{name} not found; create it (kubectl create configmap {name} "
                                f"--from-file={key}=PROMPTS.yaml) or fix the name") from e
        data = cm.get("data") or {}
        if key not in data:
            raise BadInputError(f"canary.prompts.configMapRef: ConfigMap {self.namespace}/{name} "
                                f"has no key {key!r} (it has: {', '.join(sorted(data)) or 'none'})")
        return str(data[key])

    def placements(self, color: str) -> list[NodePlacement]:
        """Every live pod of the slot playing ``color``, its node and that node's labels (a
        node that is gone has none). Terminating and finished pods are left out."""
        slot = self.roles.slot(_role(color))
        pods = self.client.list_objects(PODS, self.namespace,
                                        label_selector=f"{self.color_label}={slot}")
        nodes: dict[str, dict[str, str]] = {}
        out: list[NodePlacement] = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            phase = (pod.get("status") or {}).get("phase")
            if meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
                continue
            node = (pod.get("spec") or {}).get("nodeName") or None
            if node is not None and node not in nodes:
                try:
                    found = self.client.get(NODES, "", node)
                except NotFoundError:
                    found = {}
                nodes[node] = dict((found.get("metadata") or {}).get("labels") or {})
            out.append(NodePlacement(str(meta.get("name")), node,
                                     nodes[node] if node is not None else {}))
        return sorted(out, key=lambda p: p.pod)

    def wait_ready(self, color: str, *, timeout: float) -> None:
        """Block until the slot playing ``color`` has rolled out completely.

        For ``green`` the slot is first prepared (scaled up, roles recorded, preview pointed).

        Raises:
            UnavailableError: not ready within ``timeout`` seconds, or past its progress
                deadline (the message says what it was waiting for).
        """
        role = _role(color)
        slot = self.roles.slot(role)
        if role == "green":
            self._prepare_candidate()
        deadline = time.monotonic() + timeout
        deployment = self._deployment(slot)
        done, why = rollout_progress(deployment)
        while not done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(f"Deployment {self.namespace}/"
                                       f"{self.targets[slot].deployment} not ready after "
                                       f"{timeout:.0f}s: {why}")
            try:
                for _, seen in self.client.watch(
                        DEPLOYMENTS, self.namespace, name=self.targets[slot].deployment,
                        resource_version=deployment["metadata"].get("resourceVersion"),
                        timeout_seconds=max(1, min(30, round(remaining)))):
                    deployment = seen
                    done, why = rollout_progress(deployment)
                    if done:
                        break
            except StateConflictError:  # 410 Gone: our resourceVersion is too old; re-read
                deployment = self._deployment(slot)
                done, why = rollout_progress(deployment)

    def finish(self, status: RolloutStatus) -> None:
        """Swap the roles after a promotion, then scale the losing slot to zero."""
        if not status.terminal:
            return
        loser = self.roles.slot("blue" if status.phase is Phase.PROMOTED else "green")
        if status.phase is Phase.PROMOTED:
            self._record_roles(self.roles.swapped())
            self._point_preview(loser)
        if self.scale_down_delay > 0:
            self.sleep(self.scale_down_delay)
        self.client.patch(DEPLOYMENTS, self.namespace, self.targets[loser].deployment,
                          {"spec": {"replicas": 0}})

    def _prepare_candidate(self) -> None:
        candidate = self._deployment(self.roles.candidate)
        if int((candidate.get("spec") or {}).get("replicas", 1)) == 0:
            serving = self._deployment(self.roles.serving)
            replicas = max(1, int((serving.get("spec") or {}).get("replicas", 1)))
            self.client.patch(DEPLOYMENTS, self.namespace,
                              self.targets[self.roles.candidate].deployment,
                              {"spec": {"replicas": replicas}})
        self._record_roles(self.roles)
        self._point_preview(self.roles.candidate)

    def _record_roles(self, roles: SlotRoles) -> None:
        for slot in _SLOTS:
            value = "serving" if slot == roles.serving else "candidate"
            self.client.patch(DEPLOYMENTS, self.namespace, self.targets[slot].deployment,
                              {"metadata": {"annotations": {ROLE_ANNOTATION: value}}})

    def _point_preview(self, slot: Role) -> None:
        if self.preview_service is not None:
            self.client.patch(SERVICES, self.namespace, self.preview_service,
                              {"spec": {"selector": {self.color_label: slot}}})

    def _deployment(self, slot: Role) -> Json:
        try:
            return self.client.get(DEPLOYMENTS, self.namespace, self.targets[slot].deployment)
        except NotFoundError as e:
            raise BadInputError(f"targets.{slot}.deployment: {e}") from e


def _role(color: str) -> Role:
    if color not in _SLOTS:
        raise BadInputError(f"unknown colour {color!r}: expected blue or green")
    return "blue" if color == "blue" else "green"


def _slice_port(endpoint_slice: Json, default: int) -> int:
    """The pod port of a slice: the one named ``http``, else its only port, else ``default``."""
    ports: list[Any] = [p for p in endpoint_slice.get("ports") or [] if p.get("port")]
    named = [p for p in ports if p.get("name") == "http"]
    if named:
        return int(named[0]["port"])
    return int(ports[0]["port"]) if len(ports) == 1 else default


def _recorded_roles(client: KubeClient, namespace: str,
                   targets: Mapping[Role, KubernetesTarget]) -> SlotRoles | None:
    """The roles written on the Deployments when the current rollout started, if consistent."""
    serving = [slot for slot in _SLOTS if (client.get(
        DEPLOYMENTS, namespace, targets[slot].deployment).get("metadata") or {}).get(
        "annotations", {}).get(ROLE_ANNOTATION) == "serving"]
    return SlotRoles(serving=serving[0]) if len(serving) == 1 else None


def build_kubernetes(policy: RolloutPolicy, *, kubeconfig: str | None = None,
                     context: str | None = None, client: KubeClient | None = None,
                     lock_wait: float = 0.0
                     ) -> tuple[Platform, StatusStore, TrafficRouter]:
    """The platform, status store and router of a Kubernetes rollout of ``policy``.

    Reads (never writes) the cluster to find which slot serves; the first write happens in
    ``platform.wait_ready("green")``. Expected order in the caller: ``platform.check()``,
    ``router.check()``, then under ``store.lock(name)``: ``wait_ready("green")``, the
    controller loop, ``platform.finish(final)``.

    Args:
        client: an existing client (tests); otherwise one is made from ``kubeconfig`` and
            ``context`` or the pod's ServiceAccount.
        lock_wait: seconds to wait for another controller's Lease before LockedError.

    Raises:
        BadInputError: the policy's targets or router do not fit Kubernetes, or the cluster
            does not say which slot serves.
    """
    spec = policy.spec
    targets: dict[Role, KubernetesTarget] = {}
    for slot in _SLOTS:
        target = getattr(spec.targets, slot)
        if not isinstance(target, KubernetesTarget):
            raise BadInputError(f"targets.{slot} must be of type kubernetes on the kubernetes "
                                f"platform, not {target.type}")
        targets[slot] = target
    namespace = targets["blue"].namespace
    if targets["green"].namespace != namespace:
        raise BadInputError("targets.blue and targets.green must be in one namespace "
                            "(one Role grants the controller access to both)")
    kube = client or connect(kubeconfig=kubeconfig, context=context)
    store = ConfigMapStatusStore(kube, namespace, lock_wait=lock_wait)

    router_spec: Any = spec.router
    router: ServiceSelectorRouter | GatewayApiRouter | NoneRouter
    if isinstance(router_spec, ServiceSelectorRouterSpec):
        router = ServiceSelectorRouter(kube, router_spec, namespace)
        color_label, preview = router_spec.color_label, router_spec.preview_service
    elif isinstance(router_spec, GatewayApiRouterSpec):
        router = GatewayApiRouter(kube, router_spec, namespace,
                                  {slot: targets[slot].service for slot in _SLOTS})
        color_label, preview = COLOR_LABEL, None
    elif isinstance(router_spec, NoneRouterSpec):
        router, color_label, preview = NoneRouter(), COLOR_LABEL, None
    else:
        raise BadInputError(f"router type {router_spec.type!r} cannot route on Kubernetes: "
                            "use service-selector, gateway-api or none")

    roles = _resolve_roles(kube, namespace, targets, router, store, policy.metadata.name)
    if not isinstance(router, NoneRouter):
        router = router.with_roles(roles)
    platform = KubernetesPlatform(
        kube, namespace, targets, roles, preview_service=preview, color_label=color_label,
        scale_down_delay=spec.rollback.scale_down_delay_seconds)
    return platform, store, router


def _resolve_roles(kube: KubeClient, namespace: str, targets: Mapping[Role, KubernetesTarget],
                   router: ServiceSelectorRouter | GatewayApiRouter | NoneRouter,
                   store: ConfigMapStatusStore, name: str) -> SlotRoles:
    try:
        recorded = _recorded_roles(kube, namespace, targets)
    except NotFoundError as e:
        raise BadInputError(f"targets: {e}") from e
    status = store.load(name)
    if status is not None and not status.terminal and recorded is not None:
        return recorded  # resuming: traffic may already be on the candidate
    serving = None if isinstance(router, NoneRouter) else router.serving_slot()
    if serving is not None:
        return SlotRoles(serving=serving)
    if isinstance(router, NoneRouter):
        return recorded or SlotRoles()
    raise BadInputError("traffic is split between the slots and no unfinished rollout says "
                        "which one serves: move all traffic to one slot first")
