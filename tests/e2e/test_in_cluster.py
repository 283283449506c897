"""Acceptance of the in-cluster path: kmock as the API server, two ``rollout controller``
processes started with the args of the rendered ``deploy/k8s`` Deployment, real ``sd-server
--model tiny`` processes as the pods, and the ``rollout`` CLI as the GitOps step and the
user's hands.

What stands in for the cluster: each sd-server is a Pod (labels, node) on a Node (labels) and
an EndpointSlice of its slot's Service holding its 127.0.0.1 port; kmock's fake
kube-controller-manager reports Deployments rolled out; the HTTPRoute's weights are what the
router reads back. Everything the controller does, it does over real HTTP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from rollout.demo import SERVER_ARGS, sd_server_binary, server_ready
from rollout.k8s.client import (
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    HTTP_ROUTES,
    LEASES,
    NODES,
    PODS,
    ROLLOUT_POLICIES,
    SERVICES,
    KubeClient,
    RetryPolicy,
)
from rollout.k8s.spec import COLOR_LABEL
from rollout.local.processes import ManagedProcess, free_port, start_process, wait_until
from rollout.platforms.kube_store import ConfigMapStatusStore

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = ROOT / "deploy/k8s/base/controller-deployment.yaml"
NS = "sd"
SLOW = ["--fault-latency-ms", "2500"]


def _apiserver() -> ModuleType:
    """tests/rollout/kube/apiserver.py (kmock with API-server semantics), by path: tests/ is
    never put on sys.path, and the Kubernetes tests may have imported it already."""
    if "apiserver" in sys.modules:
        return sys.modules["apiserver"]
    spec = importlib.util.spec_from_file_location(
        "apiserver", ROOT / "tests/rollout/kube/apiserver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["apiserver"] = module
    spec.loader.exec_module(module)
    return module


def controller_argv(namespace: str, health_port: int) -> list[str]:
    """containers[0].args of the rendered controller Deployment, with ``$(VAR)`` expanded as
    the kubelet does; only the health port differs (each Pod has its own network namespace,
    these processes share one)."""
    docs = [d for d in yaml.safe_load_all(DEPLOYMENT.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = [str(a).replace("$(POD_NAMESPACE)", namespace)
            for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]]
    port = args.index("--health-port") + 1
    args[port] = str(health_port)
    return args


# -- the fleet: sd-server processes, shared by every case ------------------------------------

class Fleet:
    def __init__(self, root: Path) -> None:
        self.procs: dict[str, ManagedProcess] = {}
        self.ports: dict[str, int] = {}
        self.root = root

    def start(self, name: str, extra: list[str]) -> None:
        port = free_port()
        self.ports[name] = port
        self.procs[name] = start_process(name, [
            sd_server_binary(), *SERVER_ARGS, "--port", str(port), *extra],
            env={"OMP_NUM_THREADS": "1"}, log=self.root / f"{name}.log")

    def wait(self) -> None:
        for name, proc in self.procs.items():
            wait_until(partial(server_ready, f"http://127.0.0.1:{self.ports[name]}"),
                       timeout=240, what=name, proc=proc.proc, log=proc.log)

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        for name, extra in (("blue-0", []), ("green-0", []), ("green-1", []), ("green-2", []),
                            ("slow-0", SLOW)):
            f.start(name, extra)
        f.wait()
        yield f
    finally:
        f.stop()


# -- the cluster ------------------------------------------------------------------------------

def _workload(kube: KubeClient, slot: str, replicas: int) -> None:
    labels = {"app": "sd-server", COLOR_LABEL: slot}
    kube.create(DEPLOYMENTS, NS, {"metadata": {"name": f"sd-{slot}", "labels": labels}, "spec": {
        "replicas": replicas, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels},
                     "spec": {"containers": [{"name": "sd", "image": f"sd:{slot}"}]}}}})
    kube.create(SERVICES, NS, {"metadata": {"name": f"sd-{slot}"}, "spec": {
        "selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": 8000}]}})


def _pod(kube: KubeClient, slot: str, pod: str, node: str, port: int) -> None:
    """A Pod on a Node, and the EndpointSlice that puts its port behind the slot's Service
    (one slice per pod: a slice has one port list, and every pod here is 127.0.0.1)."""
    kube.create(NODES, "", {"metadata": {"name": node, "labels": {
        "kubernetes.io/hostname": node, "nvidia.com/gpu.product": "NVIDIA-L4"}}})
    kube.create(PODS, NS, {"metadata": {"name": pod, "labels": {"app": "sd-server",
                                                                COLOR_LABEL: slot}},
                           "spec": {"nodeName": node, "containers": [{"name": "sd"}]},
                           "status": {"phase": "Running", "podIP": "127.0.0.1"}})
    kube.create(ENDPOINT_SLICES, NS, {
        "metadata": {"name": pod, "labels": {"kubernetes.io/service-name": f"sd-{slot}"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                       "nodeName": node,
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}]})


class InCluster:
    """kmock, the seeded objects, the controllers, and the CLI pointed at it."""

    def __init__(self, root: Path, fleet: Fleet, green: list[str]) -> None:
        self.root, self.fleet = root, fleet
        self.api = _apiserver()
        self._cluster_cm = self.api.running_cluster()
        self.cluster = self._cluster_cm.__enter__()
        # Production-like timeouts: five sd-servers and the controllers share two cores.
        self.kube: KubeClient = self.cluster.client(root, RetryPolicy(request_timeout=10))
        self.kubeconfig = str(root / "kubeconfig-0")
        self.controllers: dict[str, subprocess.Popen[bytes]] = {}
        _workload(self.kube, "blue", 1)
        _workload(self.kube, "green", len(green))
        self.kube.create(HTTP_ROUTES, NS, {"metadata": {"name": "sd"}, "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"backendRefs": [{"name": "sd-blue", "port": 80, "weight": 100},
                                       {"name": "sd-green", "port": 80, "weight": 0}]}]}})
        _pod(self.kube, "blue", "sd-blue-0", "node-b0", fleet.ports["blue-0"])
        for i, proc in enumerate(green):
            _pod(self.kube, "green", f"sd-green-{i}", f"node-g{i}", fleet.ports[proc])
        self.kcm = self.api.FakeDeploymentController(self.kube)
        self.kcm.__enter__()

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig, "OMP_NUM_THREADS": "1",
                "ROLLOUT_STATE_DIR": str(self.root / "cli-state"), **extra}

    def start_controller(self, pod: str) -> None:
        log = (self.root / f"{pod}.log").open("wb")
        self.controllers[pod] = subprocess.Popen(
            [sys.executable, "-m", "rollout.cli", *controller_argv(NS, free_port()),
             "--state-dir", str(self.root / pod)],
            env=self.env(POD_NAME=pod, POD_NAMESPACE=NS), cwd=self.root, stdout=log,
            stderr=subprocess.STDOUT)

    def rollout(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rollout.cli", *args], capture_output=True,
                              text=True, timeout=timeout, cwd=self.root, env=self.env(),
                              check=False)

    def policy(self, **spec: Any) -> Path:
        target = {"type": "kubernetes", "namespace": NS, "port": 8000}
        doc = {"apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
               "metadata": {"name": "sd", "namespace": NS},
               "spec": {"platform": "kubernetes",
                        "targets": {c: {**target, "deployment": f"sd-{c}", "service": f"sd-{c}"}
                                    for c in ("blue", "green")},
                        "router": {"type": "gateway-api", "httpRoute": "sd"},
                        "steps": [{"weight": 0}],
                        # Enough requests for 3 pods to be judged one by one on a loaded
                        # 2-core box (90 left a healthy pod undecided after its 30 slices:
                        # 5 informative, ~7 needed); the judge stops as soon as all decided.
                        "canary": {"prompts": "tiny-64", "maxRequests": 240, "concurrency": 2,
                                   "warmupRequests": 1, "timeoutSeconds": 20,
                                   "deadlineSeconds": 150},
                        "gates": [{"type": "latency", "name": "p50", "quantile": 0.5,
                                   "maxRatio": 2.0},
                                  {"type": "error-rate", "name": "errors", "maxRate": 0.3}],
                        "rollback": {"onInconclusive": "rollback", "scaleDownDelaySeconds": 2},
                        **spec}}
        path = self.root / "policy.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def status(self) -> dict[str, Any]:
        return dict(self.kube.get(ROLLOUT_POLICIES, NS, "sd").get("status") or {})

    def wait_status(self, what: str, ok: Callable[[dict[str, Any]], bool],
                    timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                st = self.status()
            except Exception:  # not created yet
                st = {}
            if ok(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {st}\n{self.logs()}")

    def route(self) -> tuple[int, int]:
        refs = {r["name"]: r["weight"] for r in self.kube.get(HTTP_ROUTES, NS, "sd")[
            "spec"]["rules"][0]["backendRefs"]}
        return refs["sd-blue"], refs["sd-green"]

    def replicas(self, slot: str) -> int:
        return int(self.kube.get(DEPLOYMENTS, NS, f"sd-{slot}")["spec"]["replicas"])

    def leader(self) -> str:
        return str(self.kube.get(LEASES, NS, "rollout-controller")["spec"]["holderIdentity"])

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n" + (self.root / f"{p}.log").read_text()[-3000:]
                         for p in self.controllers)

    def close(self) -> None:
        for proc in self.controllers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.controllers.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.kcm.__exit__(None, None, None)
        self._cluster_cm.__exit__(None, None, None)


@pytest.fixture
def cluster_of(fleet: Fleet, tmp_path: Path) -> Iterator[Callable[..., InCluster]]:
    made: list[InCluster] = []

    def make(green: list[str], controllers: int = 1) -> InCluster:
        c = InCluster(tmp_path, fleet, green)
        made.append(c)
        for i in range(controllers):
            c.start_controller(f"rollout-controller-{i}")
        return c
    yield make
    for c in made:
        c.close()


def promote_wait(c: InCluster, policy: Path) -> tuple[int, dict[str, Any]]:
    r = c.rollout("promote", "--platform", "kubernetes", "--policy", str(policy), "--wait",
                  "--timeout", "240", "--output", "json")
    try:
        doc = json.loads(r.stdout[r.stdout.index("{"):])
    except ValueError:
        doc = {}
    assert r.returncode in (0, 1, 3), f"{r.returncode}\n{r.stdout}\n{r.stderr}\n{c.logs()}"
    return r.returncode, doc


def test_healthy_fleet_is_promoted_and_the_old_colour_scaled_down(
        cluster_of: Callable[..., InCluster]) -> None:
    c = cluster_of(["green-0", "green-1", "green-2"], controllers=2)
    code, _ = promote_wait(c, c.policy())
    st = c.status()
    assert code == 0 and st["phase"] == "Promoted", json.dumps(st, indent=1)
    assert c.route() == (0, 100) and (st["blueWeight"], st["greenWeight"]) == (0, 100)
    assert {i["pod"] for i in st["instances"] if i["arm"] == "green"} == {
        "sd-green-0", "sd-green-1", "sd-green-2"}
    assert c.replicas("blue") == 1  # scaleDownDelaySeconds: 2 not over yet
    deadline = time.monotonic() + 30
    while c.replicas("blue") != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert c.replicas("blue") == 0 and c.replicas("green") == 3


def test_one_degraded_green_replica_is_rolled_back_and_named(
        cluster_of: Callable[..., InCluster]) -> None:
    c = cluster_of(["green-0", "slow-0", "green-2"])
    code, _ = promote_wait(c, c.policy())
    st = c.status()
    assert code == 1 and st["phase"] == "RolledBack", st
    assert c.route() == (100, 0)
    assert "sd-green-1" in st["reason"] and "node-g1" in st["reason"], st["reason"]
    slow = next(i for i in st["instances"] if i["pod"] == "sd-green-1")
    assert slow["node"] == "node-g1" and slow["verdict"] == "fail"
    r = c.rollout("status", "sd", "--platform", "kubernetes", "-n", NS)
    assert "sd-green-1" in r.stdout + r.stderr


def test_killing_the_leader_mid_analysis_lets_the_standby_finish(
        cluster_of: Callable[..., InCluster]) -> None:
    c = cluster_of(["green-0", "green-1", "green-2"], controllers=2)
    c.rollout("promote", "--platform", "kubernetes", "--policy", str(c.policy()))
    c.wait_status("analysis", lambda s: s.get("phase") == "Analyzing")
    leader = c.leader()
    c.controllers[leader].send_signal(signal.SIGKILL)
    c.controllers[leader].wait(10)
    st = c.wait_status("the standby's verdict",
                       lambda s: s.get("phase") in ("Promoted", "RolledBack"), timeout=150)
    assert c.leader() != leader
    assert c.route() == ((0, 100) if st["phase"] == "Promoted" else (100, 0))
    # Each analysis has one recorded outcome: the killed leader's was never saved, and the
    # standby's re-run is the only one (a record's step is the step it moves to).
    outcomes: dict[int, list[str]] = {}
    step = 0
    for h in ConfigMapStatusStore(c.kube, NS).history("sd"):
        if h.from_phase == "Analyzing":
            outcomes.setdefault(step, []).append(h.to_phase)
        step = h.step
    assert outcomes and all(len(v) == 1 for v in outcomes.values()), (outcomes, st["reason"])


def test_manual_gate_abort_and_retry(cluster_of: Callable[..., InCluster]) -> None:
    c = cluster_of(["green-0", "green-1"])
    code, _ = promote_wait(c, c.policy(steps=[{"weight": 0}], promotion={"auto": False}))
    st = c.status()
    assert code == 3 and st["phase"] == "Paused" and st["awaitingPromotion"] is True
    assert c.route() == (100, 0)
    r = c.rollout("promote", "sd", "--confirm", "--platform", "kubernetes", "-n", NS)
    assert r.returncode == 0, r.stdout + r.stderr
    c.wait_status("Promoted", lambda s: s.get("phase") == "Promoted")
    assert c.route() == (0, 100)

    # A new generation (new spec), aborted during its analysis: all traffic back on blue.
    c.rollout("promote", "--platform", "kubernetes", "--policy",
              str(c.policy(steps=[{"weight": 0}, {"weight": 40}])))
    c.wait_status("analysis of generation 2", lambda s: s.get("phase") == "Analyzing"
                  and s.get("observedGeneration") == 2)
    r = c.rollout("abort", "sd", "--platform", "kubernetes", "-n", NS)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    st = c.wait_status("Aborted", lambda s: s.get("phase") == "Aborted")
    # Roles swapped at the promotion: slot sd-green serves (plays blue) now.
    assert c.route() == (0, 100) and st["blueWeight"] == 100

    r = c.rollout("retry", "sd", "--platform", "kubernetes", "-n", NS)
    assert r.returncode == 0, r.stdout + r.stderr
    st = c.wait_status("the retry's verdict", lambda s: s.get("attempt") == 2
                       and s.get("phase") in ("Promoted", "RolledBack"), timeout=150)
    assert st["observedGeneration"] == 2
