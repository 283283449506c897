"""Every container of the rendered manifests runs: the exact ``command``/``args`` (the image's
ENTRYPOINT where the manifest gives none, ``$(VAR)`` expanded as the kubelet does) are run as
real processes of the real CLI.

* The controller Deployment's argv, against the kmock API server (KUBECONFIG names it, as the
  in-cluster config would name the real one): it serves /healthz, takes the Lease the manifests
  ship, and stops on SIGTERM within the grace period; given what `kubectl apply -k` creates,
  it starts the rollout and every API call it makes is allowed by its Roles.
* The PostSync Job's argv, against kmock with no controller: it applies the RolloutPolicy and
  waits; only ``--timeout`` is shortened (and the ConfigMap mount is emulated: the same file
  under the same name in a temporary directory), every other argument is the manifest's.
* The SD slots' argv: ``rollout admit`` parses it and, on this GPU-free machine, refuses
  (exit 1, a violation, never 2: usage) before exec'ing the server; the server's part of the
  argv goes through the server's own argument handling (``config_from_args``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_manifests import OVERLAYS, ROOT, objects

sys.path.insert(0, str(ROOT / "tests" / "rollout" / "kube"))  # the kmock fixture (OPERATOR's)
from apiserver import Cluster, running_cluster

from rollout.k8s.client import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    HTTP_ROUTES,
    LEASES,
    ROLLOUT_POLICIES,
    SERVICES,
)
from rollout.policy.loader import parse_policy
from rollout.policy.models import RolloutSpec

BIN = Path(sys.executable).parent
POD_NAMESPACE = "sd"
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """``$(VAR)`` -> its value when the container defines VAR, else left as written;
    ``$$`` -> ``$`` (Kubernetes' dependent-variable expansion of command and args)."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR.sub(one, arg)


def entrypoint(image: str) -> list[str]:
    """The ENTRYPOINT of the image's Dockerfile (deploy/<repository name>/Dockerfile)."""
    repo = image.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    lines = (ROOT / "deploy" / repo / "Dockerfile").read_text(encoding="utf-8").splitlines()
    found = [json.loads(line.split(None, 1)[1]) for line in lines
             if line.startswith("ENTRYPOINT ")]
    assert found, f"deploy/{repo}/Dockerfile has no ENTRYPOINT in exec form"
    return list(found[-1])


def pod_env(pod: dict[str, Any], c: dict[str, Any], pod_name: str) -> dict[str, str]:
    fields = {"metadata.namespace": POD_NAMESPACE, "metadata.name": pod_name}
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = kubelet_expand(e["value"], env)
        else:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def argv(pod: dict[str, Any], c: dict[str, Any], pod_name: str) -> list[str]:
    """What the kubelet runs: command (else the image's ENTRYPOINT) + args, expanded."""
    env = pod_env(pod, c, pod_name)
    command = c.get("command") or entrypoint(c["image"])
    return [kubelet_expand(a, env) for a in (*command, *c.get("args", []))]


def containers(kind: str) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(overlay, object name, pod spec, container) of every container of ``kind``."""
    return [(overlay, o["metadata"]["name"], o["spec"]["template"]["spec"], c)
            for overlay in OVERLAYS for o in objects(overlay) if o["kind"] == kind
            for c in o["spec"]["template"]["spec"]["containers"]]


def test_every_container_is_covered_here() -> None:
    """A new workload kind or container would run untested: name it here first."""
    kinds = {o["kind"] for overlay in OVERLAYS for o in objects(overlay)
             if "template" in o.get("spec", {})}
    assert kinds == {"Deployment", "Job"}
    names = {(name, c["name"]) for kind in kinds for _, name, _, c in containers(kind)}
    assert names == {("rollout-controller", "controller"), ("rollout-promote", "promote"),
                     ("sd-blue", "sd-server"), ("sd-green", "sd-server")}


def test_the_kubelet_expansion_is_the_documented_one() -> None:
    env = {"A": "x"}
    assert [kubelet_expand(a, env) for a in ("$(A)", "$(B)", "$$(A)", "p$(A)q", "$A")] == [
        "x", "$(B)", "$(A)", "pxq", "$A"]


def _local(args: list[str]) -> list[str]:
    """argv[0] from this checkout's virtualenv, as the image's PATH finds it."""
    found = BIN / args[0]
    assert found.is_file(), f"{args[0]} is not installed in {BIN} (make install)"
    return [str(found), *args[1:]]


def _kubeconfig(cluster: Cluster, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": cluster.url}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "sa",
                                                   "namespace": POD_NAMESPACE}}],
        "users": [{"name": "sa", "user": {"token": "service-account-token"}}]}),
        encoding="utf-8")
    return path


_SERVED = {"Lease": LEASES, "RolloutPolicy": ROLLOUT_POLICIES, "Deployment": DEPLOYMENTS,
           "Service": SERVICES, "ConfigMap": CONFIG_MAPS, "HTTPRoute": HTTP_ROUTES}


def _seed(cluster: Cluster, overlay: str, *kinds: str) -> None:
    """Create the overlay's objects of ``kinds`` in kmock, as `kubectl apply -k` would."""
    kube = cluster.clients[0]
    for o in objects(overlay):
        if o["kind"] in kinds:
            kube.create(_SERVED[o["kind"]], o["metadata"]["namespace"], o)


def _process_env(kubeconfig: Path, pod_env_vars: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **pod_env_vars, "PATH": f"{BIN}:{keep.get('PATH', '/usr/bin:/bin')}",
            "KUBECONFIG": str(kubeconfig)}


_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
                   r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)"
                   r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")
_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def authorization_requests(cluster: Cluster, since: int) -> set[tuple[str, str, str, str]]:
    """What RBAC authorizes for each resource request the server saw: (group,
    resource[/subresource], verb, name or ''), as the API server's request info derives it
    (a list or watch narrowed by ``fieldSelector=metadata.name=X`` is authorized for X).
    Discovery (/api, /apis/G/V) is every authenticated user's and is left out; ``since``
    skips the requests made before (the test's own seeding)."""
    seen: set[tuple[str, str, str, str]] = set()
    for method, path, params in cluster.call(lambda: [
            (r.method.value, r.url.path, dict(r.url.query))
            for r in list(cluster.api)[since:]]):
        m = _PATH.match(path)
        if m is None or (m["ns"] is None and m["resource"] == "namespaces" and not m["name"]):
            continue
        if m["resource"] == "namespaces" and m["name"] and m["ns"] is None:
            continue  # /api/v1/namespaces/NS: a namespace read, none made here
        name = m["name"] or ""
        resource = f"{m['resource']}/{m['sub']}" if m["sub"] else m["resource"]
        if method == "GET" and not name:
            verb = "watch" if params.get("watch") in ("true", "1") else "list"
            field = params.get("fieldSelector", "")
            name = field.removeprefix("metadata.name=") if field.startswith(
                "metadata.name=") else ""
        else:
            verb = _VERBS.get(method, "get")
        seen.add((m["group"] or "", resource, verb, name))
    return seen


def bound_rules(overlay: str, service_account: str) -> list[dict[str, Any]]:
    """The rules of every Role and ClusterRole the overlay binds to ``service_account``."""
    objs = objects(overlay)
    roles = {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in objs
             if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and any(s["name"] == service_account for s in b["subjects"])}
    return [r for o in objs if (o["kind"], o["metadata"]["name"]) in roles for r in o["rules"]]


def denied(requests: set[tuple[str, str, str, str]], rules: list[dict[str, Any]]
           ) -> list[tuple[str, str, str, str]]:
    return sorted(q for q in requests if not any(
        q[0] in r["apiGroups"] and q[1] in r["resources"] and q[2] in r["verbs"]
        and (not r.get("resourceNames") or q[3] in r["resourceNames"]) for r in rules))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster() as c:
        c.client(tmp_path)  # the test's own client (clients[0]), for seeding and reading
        yield c


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the health server does
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _controller() -> tuple[dict[str, Any], dict[str, Any]]:
    found = [(pod, c) for _, name, pod, c in containers("Deployment")
             if name == "rollout-controller"]
    assert len(found) == len(OVERLAYS) and all(f == found[0] for f in found)  # the base's
    return found[0]


def _start_controller(cluster: Cluster, tmp_path: Path, *seed: str
                      ) -> tuple[subprocess.Popen[str], list[str], int]:
    """The controller Deployment's argv as a process, once it serves its liveness probe and
    holds the Lease; also the number of API requests made before it started."""
    pod, c = _controller()
    pod_name = "rollout-controller-7d9f8-x2x4q"
    args = argv(pod, c, pod_name)
    assert args[:2] == ["rollout", "controller"] and "$(" not in " ".join(args)
    port = c["ports"][0]["containerPort"]
    assert _port_free(port), f"port {port} (the manifest's) is taken on this machine"
    lease_name = args[args.index("--lease-name") + 1]
    _seed(cluster, OVERLAYS[0], *seed)
    seeded = cluster.call(lambda: len(list(cluster.api)))
    proc = subprocess.Popen(
        _local(args), env=_process_env(_kubeconfig(cluster, tmp_path), pod_env(pod, c, pod_name)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    healthy = holder = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            healthy = _get(f"http://127.0.0.1:{port}{c['livenessProbe']['httpGet']['path']}")
        except OSError:
            healthy = None
        holder = cluster.obj("coordination.k8s.io/v1/leases", POD_NAMESPACE,
                             lease_name).get("spec", {}).get("holderIdentity")
        if healthy == 200 and holder == pod_name:
            break
        time.sleep(0.2)
    if proc.poll() is not None or (healthy, holder) != (200, pod_name):
        proc.kill()
        pytest.fail(f"healthz {healthy}, Lease holder {holder!r}: {proc.communicate()[0]}")
    return proc, args, seeded


def test_controller_deployment_argv_serves_health_takes_the_lease_and_stops_on_sigterm(
        cluster: Cluster, tmp_path: Path) -> None:
    pod, _ = _controller()
    proc, _, _ = _start_controller(cluster, tmp_path, "Lease")  # the Role cannot create it
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends first...
    grace = pod.get("terminationGracePeriodSeconds", 30)
    try:
        out = proc.communicate(timeout=grace)[0]
    except subprocess.TimeoutExpired:  # ...and SIGKILL after the grace period
        proc.kill()
        pytest.fail(f"still running {grace} s after SIGTERM: the kubelet would kill it: "
                    + proc.communicate()[0][-3000:])
    assert proc.returncode == 0, out


def test_controller_deployment_calls_only_what_its_role_grants(
        cluster: Cluster, tmp_path: Path) -> None:
    """Least privilege checked against behaviour: with what `kubectl apply -k` creates (no
    pods: no kubelet here), the controller starts the rollout; every call it made is allowed
    by the Roles bound to its ServiceAccount."""
    pod, _ = _controller()
    proc, args, seeded = _start_controller(cluster, tmp_path, *_SERVED)
    try:
        policy = next(o for o in objects(OVERLAYS[0]) if o["kind"] == "RolloutPolicy")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not cluster.obj(
                "rollout-gates.dev/v1alpha1/rolloutpolicies", POD_NAMESPACE,
                policy["metadata"]["name"]).get("status"):
            time.sleep(0.2)
        time.sleep(2)
    finally:
        proc.kill()  # mid-rollout: a restart resumes from status (the crash tests' subject)
        proc.communicate()
    made = authorization_requests(cluster, since=seeded)
    lease_name = args[args.index("--lease-name") + 1]
    assert {("coordination.k8s.io", "leases", "patch", lease_name),
            ("rollout-gates.dev", "rolloutpolicies", "watch", ""),
            ("apps", "deployments", "get", "sd-green")} <= made
    assert not denied(made, bound_rules(OVERLAYS[0], pod["serviceAccountName"]))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postsync_job_argv_applies_the_policy_and_waits(
        overlay: str, cluster: Cluster, tmp_path: Path) -> None:
    [(_, _, pod, c)] = [x for x in containers("Job") if x[0] == overlay]
    args = argv(pod, c, "rollout-promote-abcde")
    # The ConfigMap mount, emulated: the same file, under the same name.
    policy_at = args.index("--policy") + 1
    mounted = Path(args[policy_at])
    cm_name = next(v["configMap"]["name"] for v in pod["volumes"]
                   if v["name"] == next(m["name"] for m in c["volumeMounts"]
                                        if m["mountPath"] == str(mounted.parent)))
    [cm] = [o for o in objects(overlay) if o["kind"] == "ConfigMap"
            and o["metadata"]["name"] == cm_name]
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / mounted.name).write_text(cm["data"][mounted.name], encoding="utf-8")
    timeout_at = args.index("--timeout") + 1
    short = [*args[:policy_at], str(tmp_path / "etc" / mounted.name),
             *args[policy_at + 1:timeout_at], "3", *args[timeout_at + 1:]]
    assert [a for i, a in enumerate(short) if i not in (policy_at, timeout_at)] == [
        a for i, a in enumerate(args) if i not in (policy_at, timeout_at)]
    seeded = cluster.call(lambda: len(list(cluster.api)))
    result = subprocess.run(_local(short), env=_process_env(_kubeconfig(cluster, tmp_path), {}),
                            capture_output=True, text=True, timeout=120, check=False)
    assert not denied(authorization_requests(cluster, since=seeded),
                      bound_rules(overlay, pod["serviceAccountName"]))
    assert result.returncode not in (2, 5), result.stdout + result.stderr
    assert result.returncode == 3, result.stdout + result.stderr  # nobody settled it in time
    json.loads(result.stdout)  # the report is one JSON document
    policy = parse_policy(cm["data"][mounted.name], "policy.yaml")
    applied = cluster.obj("rollout-gates.dev/v1alpha1/rolloutpolicies", POD_NAMESPACE,
                          policy.metadata.name)
    # The CR means what the file says (compared as validated specs: the same language).
    assert RolloutSpec.model_validate(applied["spec"]) == policy.spec


def test_sd_server_argv_is_refused_by_admission_here_and_parses(tmp_path: Path) -> None:
    seen = set()
    for _, _, pod, c in containers("Deployment"):
        if c["name"] != "sd-server":
            continue
        args = argv(pod, c, "sd-blue-5c6d7-abcde")
        seen.add(tuple(args))
    [args] = seen  # both slots, both overlays: one argv
    assert args[:2] == ("rollout", "admit")
    result = subprocess.run(_local(list(args)), capture_output=True, text=True, timeout=120,
                            check=False, env=_process_env(tmp_path / "none", {}))
    # No GPU on this machine: a violation (1), itemized; never a usage error (2), never exec.
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gpu" in (result.stdout + result.stderr).lower()
    server = list(args[args.index("--") + 1:])
    assert server[0] == "sd-server"
    # What admission would exec, through the server's own argument handling (starting it
    # here would only load a model to refuse the CPU path; a bad flag would exit 2 here).
    parsed = subprocess.run(
        [sys.executable, "-c", "import sys; from sd_server.cli import config_from_args; "
         "c = config_from_args(sys.argv[1:]); print(c.host, c.port, c.path.device.value)",
         *server[1:]],
        capture_output=True, text=True, timeout=60, check=False)
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.split() == [server[server.index("--host") + 1],
                                     server[server.index("--port") + 1],
                                     server[server.index("--device") + 1]]
