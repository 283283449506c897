"""A kmock Kubernetes API on loopback, in its own thread and event loop, for the sync client.

kmock's own pytest fixture is async and deadlocks the synchronous official client (the client
blocks the very loop that should answer it), so the emulator runs here in a daemon thread with
a private event loop, and tests talk to it over real HTTP.

:class:`ApiServer` adds the API-server behaviour kmock 0.8 lacks and our code relies on:

* server-set ``uid``, ``resourceVersion`` (one counter for all objects), ``generation``
  (1 at creation, +1 when ``spec`` changes) and ``creationTimestamp``;
* ``metadata.resourceVersion`` in a patch is a precondition: stale -> 409 Conflict, and
  nothing is applied;
* ``/status`` patches change only ``status``, and ``generation`` only moves with ``spec``;
* ``labelSelector`` filtering of lists and watches (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``);
* ``timeoutSeconds`` on watches (kmock's streams never end by themselves), and no event lost
  between a watch's initial snapshot and its subscription (kmock subscribes after);
* API discovery of the RolloutPolicy resource with its ``status`` subresource, and of what
  kopf waits for (:data:`DISCOVERED`), so a kopf operator runs against it unchanged;
* a JSON patch whose ``test`` operation fails is answered 422, as Kubernetes does (kopf
  guards its patches with a test of ``resourceVersion`` and retries on 422);
* faults that *replace* a request (kmock's injected responses still apply the change):
  an HTTP status, a delay longer than the client's timeout, optionally after applying.

Writes are serialised under one lock so a precondition is checked and applied atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import dicts, rendering
from pydantic import BaseModel

from gates.verdict import Verdict
from rollout.controller import Controller
from rollout.k8s.client import (
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    HTTP_ROUTES,
    SERVICES,
    KubeClient,
    RetryPolicy,
    connect,
)
from rollout.k8s.spec import (
    COLOR_LABEL,
    GatewayApiRouterSpec,
    ServiceSelectorRouterSpec,
)
from rollout.machine import GateResult, Observation, Plan, RolloutStatus
from rollout.platforms.kube_store import ConfigMapStatusStore
from rollout.platforms.kubernetes import build_kubernetes
from rollout.policy.models import API_VERSION, RolloutPolicy

RESOURCES = ("apps/v1/deployments", "v1/services", "v1/configmaps",
             "discovery.k8s.io/v1/endpointslices", "coordination.k8s.io/v1/leases",
             "gateway.networking.k8s.io/v1/httproutes", "v1/pods")
_VERBS = ("get", "list", "watch", "create", "patch", "update", "delete")
#: What kopf discovers before it watches anything: our CRD's resource with its ``status``
#: subresource (kopf then patches status there), Namespaces and CRDs (kopf waits for both to
#: be served even with scanning disabled), Events (kopf posts them), and cluster-scoped Nodes.
DISCOVERED: dict[str, dict[str, Any]] = {
    "rollout-gates.dev/v1alpha1/rolloutpolicies": dict(
        kind="RolloutPolicy", singular="rolloutpolicy", namespaced=True, verbs=_VERBS,
        subresources={"status"}, categories={"all"}),
    "v1/namespaces": dict(kind="Namespace", singular="namespace", namespaced=False,
                          verbs=_VERBS),
    "apiextensions.k8s.io/v1/customresourcedefinitions": dict(
        kind="CustomResourceDefinition", singular="customresourcedefinition",
        namespaced=False, verbs=_VERBS),
    "v1/events": dict(kind="Event", singular="event", namespaced=True, verbs=_VERBS),
    "v1/nodes": dict(kind="Node", singular="node", namespaced=False, verbs=_VERBS),
}

#: Fast backoff for tests: the schedule is the same, only the scale differs.
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, request_timeout=0.5)


@dataclass
class Fault:
    """Answer matching requests with ``status`` after ``delay`` s, ``times`` times, once the
    first ``after`` matching requests went through untouched.

    ``apply=True`` lets the request change the state first (a write that landed but whose
    answer was lost), otherwise nothing is applied (a real 5xx or a dropped request).
    """

    method: str
    path: str
    status: int = 500
    delay: float = 0.0
    times: int = 1
    apply: bool = False
    after: int = 0
    seen: int = 0

    def matches(self, request: rendering.Request) -> bool:
        """Whether to fault this request (counts every matching request it sees)."""
        if request.method.value != self.method or not re.search(self.path, request.url.path):
            return False
        self.seen += 1
        return self.after < self.seen <= self.after + self.times


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _pointer(obj: Any, path: str) -> Any:
    """The value at JSON pointer ``path`` in ``obj`` (None where it is absent)."""
    for part in filter(None, path.split("/")):
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and key.isdigit() and int(key) < len(obj):
            obj = obj[int(key)]
        else:
            return None
    return obj


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with the API-server semantics listed in the module docstring."""

    faults: list[Fault] = attrs.field(factory=list)
    _revision: int = 0
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    def _next_rv(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        fault = next((f for f in self.faults if f.matches(request)), None)
        if fault is not None:
            if fault.apply:
                await self._write(request)
            await asyncio.sleep(fault.delay)
            return await self._render_error(kmock.KubernetesError(
                status=fault.status, reason="InjectedFault", message=f"injected {fault.status}"))
        return await self._write(request)

    async def _write(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action not in (kmock.action.CREATE,
                                                              kmock.action.UPDATE):
            return await super()._handle(request)
        async with self._writes:
            try:
                data = self._stamp(request)
            except kmock.KubernetesError as e:
                return await self._render_error(e)
            # The request is frozen (and an evolved copy matches no reaction): swap its body.
            if isinstance(request.data, list):
                request.data[:] = data
            else:
                request.data.clear()
                request.data.update(data)
            return await super()._handle(request)

    def _stamp(self, request: rendering.Request) -> Any:
        data = copy.deepcopy(request.data)
        if request.action == kmock.action.CREATE:
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):  # kopf's events
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(),
                        creationTimestamp=datetime.datetime.now(datetime.UTC).strftime(
                            "%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("namespace", request.namespace)
            if "spec" in data:
                meta["generation"] = 1
            return data
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return data  # the emulator answers 404
        current = copy.deepcopy(self.objects[key].raw)
        meta = current.get("metadata") or {}
        if isinstance(data, list):  # JSON patch: stamp by an extra operation
            for op in data:  # a failed "test" is 422 (kopf's optimistic precondition)
                if op.get("op") == "test" and _pointer(current, op["path"]) != op.get("value"):
                    raise kmock.KubernetesError(
                        status=422, reason="Invalid",
                        message=f"the server rejected our request: test of {op['path']} failed")
            return [*data, {"op": "replace", "path": "/metadata/resourceVersion",
                            "value": self._next_rv()}]
        wanted = (data.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != meta.get("resourceVersion"):
            raise kmock.KubernetesError(
                status=409, reason="Conflict",
                message=f'Operation cannot be fulfilled on {request.resource.plural} '
                        f'"{request.name}": the object has been modified; please apply your '
                        f'changes to the latest version and try again')
        if request.subresource == "status":
            data = {"status": data.get("status")}
        else:
            data.pop("status", None)
        new = dicts.patch_dict(current, data)
        stamp: dict[str, Any] = {"resourceVersion": self._next_rv()}
        if new.get("spec") != current.get("spec"):
            stamp["generation"] = int(meta.get("generation") or 0) + 1
        data.setdefault("metadata", {}).update(stamp)
        return data

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        body = await super()._serve_list(request)
        assert isinstance(body, dict)
        selector = request.params.get("labelSelector")
        if selector:
            body["items"] = [o for o in body["items"] if _selector_matches(selector, _labels(o))]
        body["metadata"] = {"resourceVersion": str(self._revision)}
        return body

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """kmock's watch snapshots first and subscribes after, losing events in between; here
        the subscription and the snapshot are taken together under the write lock."""
        yield b""  # send the headers now, as kmock does
        assert request.resource is not None
        loop = asyncio.get_running_loop()
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = None if timeout is None else loop.time() + timeout
        selector = request.params.get("labelSelector") or ""

        def wanted(obj: dict[str, Any]) -> bool:
            ns = (obj.get("metadata") or {}).get("namespace")
            return ((request.namespace is None or ns == request.namespace)
                    and _selector_matches(selector, _labels(obj)))

        bus = self._buses[request.resource]
        async with self._writes:
            marker = await bus.mark()
            snapshot = [obj.raw for (res, _, _), obj in self.objects.items()
                        if res == request.resource and not obj.deleted]
        stream = aiter(bus.stream(since=marker))
        try:
            for obj in snapshot:
                if wanted(obj):
                    yield {"type": "ADDED", "object": obj}
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(stream), remaining)
                except TimeoutError:
                    return
                if wanted(event.get("object") or {}):
                    yield event
        finally:
            await stream.aclose()
            await bus.unmark(marker)


@dataclass
class Cluster:
    """The running emulator, its URL, and a thread-safe way to touch its state."""

    api: ApiServer
    url: str
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    thread: threading.Thread
    clients: list[KubeClient] = field(default_factory=list)

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the server's loop (the emulator's state is not thread-safe)."""
        async def run() -> Any:
            async with self.api._writes:
                return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=5)

    def obj(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        """A deep copy of the stored object."""
        return self.call(lambda: copy.deepcopy(self.api.objects[resource, namespace, name].raw))

    def fault(self, method: str, path: str, **kwargs: Any) -> Fault:
        f = Fault(method, path, **kwargs)
        self.call(lambda: self.api.faults.append(f))
        return f

    def requests(self, method: str, path: str) -> int:
        """How many requests of ``method`` to a path matching ``path`` were served."""
        return int(self.call(lambda: sum(
            1 for r in list(self.api)
            if r.method.value == method and re.search(path, r.url.path))))

    def client(self, tmp_path: Path, retry: RetryPolicy = FAST_RETRY) -> KubeClient:
        """A client built the production way, from a kubeconfig file naming this server."""
        kubeconfig = tmp_path / f"kubeconfig-{len(self.clients)}"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
            f"clusters:\n- name: kmock\n  cluster:\n    server: {self.url}\n"
            "contexts:\n- name: kmock\n  context: {cluster: kmock, user: ci, namespace: sd}\n"
            "users:\n- name: ci\n  user: {token: test-token}\n", encoding="utf-8")
        c = connect(kubeconfig=str(kubeconfig), retry=retry)
        self.clients.append(c)
        return c


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        api = ApiServer()
        for res in RESOURCES:
            api.resources[res] = {}
        for res, info in DISCOVERED.items():
            api.resources[res] = info
        stop = asyncio.Event()
        async with api, kmock.Server(api) as srv:
            box.update(api=api, url=str(srv.url).rstrip("/"), stop=stop)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True,
                              name="kmock")
    thread.start()
    assert started.wait(10), "kmock did not start"
    cluster = Cluster(box["api"], box["url"], loop, box["stop"], thread)
    try:
        yield cluster
    finally:
        for c in cluster.clients:
            c.api.close()
        loop.call_soon_threadsafe(cluster.stop.set)
        thread.join(10)
        loop.close()


# -- a small SD fleet: two slot Deployments, their Services, routers' objects ------------------

NS = "sd"


def _deployment(slot: str, replicas: int, prefix: str = "sd") -> dict[str, Any]:
    labels = {"app": "sd-server", COLOR_LABEL: slot, **_fleet(prefix)}
    return {"metadata": {"name": f"{prefix}-{slot}", "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "sd", "image": "sd:1"}]}}}}


def _fleet(prefix: str) -> dict[str, str]:
    """A label telling two fleets of one namespace apart (none for the default one)."""
    return {} if prefix == "sd" else {"fleet": prefix}


def _service(name: str, slot: str, prefix: str = "sd") -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"selector": {"app": "sd-server", COLOR_LABEL: slot, **_fleet(prefix)},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8000}]}}


def _slice(slot: str, ips: list[str], ready: list[bool], prefix: str = "sd") -> dict[str, Any]:
    return {"metadata": {"name": f"{prefix}-{slot}-abcde",
                         "labels": {"kubernetes.io/service-name": f"{prefix}-{slot}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8000}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": r}}
                          for ip, r in zip(ips, ready, strict=True)]}


def seed(kube: KubeClient, prefix: str = "sd") -> None:
    """Blue serves 2 replicas; green was scaled down after the previous rollout. ``prefix``
    names a second fleet in the same namespace (``PREFIX-blue``, HTTPRoute ``PREFIX``...)."""
    for slot, replicas in (("blue", 2), ("green", 0)):
        kube.create(DEPLOYMENTS, NS, _deployment(slot, replicas, prefix))
        kube.create(SERVICES, NS, _service(f"{prefix}-{slot}", slot, prefix))
    kube.create(SERVICES, NS, _service(f"{prefix}-active", "blue", prefix))
    kube.create(SERVICES, NS, _service(f"{prefix}-preview", "green", prefix))
    kube.create(HTTP_ROUTES, NS, {"metadata": {"name": prefix}, "spec": {
        "parentRefs": [{"name": "gw"}],
        "rules": [{"backendRefs": [{"name": f"{prefix}-blue", "port": 80, "weight": 100},
                                   {"name": f"{prefix}-green", "port": 80, "weight": 0}]}]}})
    kube.create(ENDPOINT_SLICES, NS, _slice("blue", ["127.0.10.1", "127.0.10.2"], [True, True],
                                            prefix))
    kube.create(ENDPOINT_SLICES, NS, _slice("green", ["127.0.20.1", "127.0.20.2", "127.0.20.3"],
                                            [True, False, True], prefix))


class FakeDeploymentController:
    """What kube-controller-manager would do: report every Deployment rolled out, except the
    ``stuck`` ones, whose pods never become available (a green that cannot start)."""

    def __init__(self, kube: KubeClient, stuck: frozenset[str] = frozenset()) -> None:
        self.kube, self.stuck = kube, stuck
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="fake-kcm")

    def __enter__(self) -> FakeDeploymentController:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)

    def _run(self) -> None:
        while not self.done.wait(0.05):
            for d in self.kube.list_objects(DEPLOYMENTS, NS):
                meta, status = d["metadata"], d.get("status") or {}
                n = d["spec"]["replicas"]
                want = {"observedGeneration": meta["generation"], "replicas": n,
                        "updatedReplicas": n,
                        "availableReplicas": 0 if meta["name"] in self.stuck else n}
                if any(status.get(k) != v for k, v in want.items()):
                    self.kube.patch(DEPLOYMENTS, NS, meta["name"], {"status": want},
                                    subresource="status")


class ScriptedAnalyzer:
    """Gate verdicts from a script: the real analyzer is not the platform's business."""

    def __init__(self, *verdicts: Verdict) -> None:
        self.verdicts = iter(verdicts)
        self.calls: list[str] = []

    def _obs(self, what: str) -> Observation:
        self.calls.append(what)
        return Observation(gates={"p95": GateResult(next(self.verdicts), what)})

    def admit(self, status: RolloutStatus) -> Observation:
        return self._obs("admit")

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        return self._obs(f"analyze {step}")

    def verify(self, status: RolloutStatus) -> Observation:
        return self._obs("verify")


def make_policy(router: BaseModel, *, steps: tuple[int, ...] = (0,)) -> RolloutPolicy:
    """A kubernetes policy for the seeded fleet (the router block is set after validation
    because the lead's RouterSpec union may not list the Kubernetes routers yet)."""
    target = {"type": "kubernetes", "namespace": NS, "port": 8000}
    policy = RolloutPolicy.model_validate({
        "apiVersion": API_VERSION, "kind": "RolloutPolicy", "metadata": {"name": "sd"},
        "spec": {"platform": "kubernetes",
                 "targets": {"blue": {**target, "deployment": "sd-blue", "service": "sd-blue"},
                             "green": {**target, "deployment": "sd-green",
                                       "service": "sd-green"}},
                 "steps": [{"weight": w} for w in steps], "gates": [{"type": "latency"}],
                 "rollback": {"scaleDownDelaySeconds": 0}}})
    return policy.model_copy(update={"spec": policy.spec.model_copy(update={"router": router})})


SELECTOR = ServiceSelectorRouterSpec(active_service="sd-active", preview_service="sd-preview")
GATEWAY = GatewayApiRouterSpec(http_route="sd")


def promote(kube: KubeClient, policy: RolloutPolicy, analyzer: ScriptedAnalyzer, *,
            ready_timeout: float = 5.0) -> RolloutStatus:
    """What ``rollout promote --platform kubernetes`` does, in the documented order."""
    platform, store, router = build_kubernetes(policy, client=kube)
    platform.check()
    router.check()
    name = policy.metadata.name
    with store.lock(name):
        platform.wait_ready("green", timeout=ready_timeout)
        status = store.load(name)
        if status is None or status.terminal:
            if status is not None:
                assert isinstance(store, ConfigMapStatusStore)
                store.delete(name)
            status = RolloutStatus(name=name, plan=Plan(
                weights=tuple(s.weight for s in policy.spec.steps)))
            store.save(status, previous=None)
        final = Controller(store, router, analyzer).run(status)
        platform.finish(final)
    return final
