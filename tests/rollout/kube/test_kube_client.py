"""The client layer: error mapping onto our tree, retries with backoff, kubeconfig, watches."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from apiserver import NS, Cluster
from kubernetes.client.exceptions import ApiException

from rollout.errors import (
    BadInputError,
    NotFoundError,
    PermanentError,
    StateConflictError,
    TemporaryError,
    UnavailableError,
)
from rollout.k8s.client import (
    CONFIG_MAPS,
    DEPLOYMENTS,
    AccessDeniedError,
    KubeClient,
    RetryPolicy,
    connect,
    map_api_error,
)


def _api_error(status: int, message: str = "boom") -> ApiException:
    return ApiException(status=status, reason="Reason", body=json.dumps(
        {"kind": "Status", "code": status, "message": message}))


@pytest.mark.parametrize(("status", "kind"), [
    (400, BadInputError), (422, BadInputError), (401, AccessDeniedError),
    (403, AccessDeniedError), (404, NotFoundError), (409, StateConflictError),
    (410, StateConflictError), (429, UnavailableError), (500, UnavailableError),
    (503, UnavailableError), (405, PermanentError)])
def test_http_status_maps_onto_the_error_tree(status: int, kind: type[Exception]) -> None:
    err = map_api_error(_api_error(status, "the message"), "get ConfigMap sd/x")
    assert type(err) is kind
    assert str(err).startswith(f"get ConfigMap sd/x: HTTP {status}: the message")
    assert isinstance(err, TemporaryError) == (status in (429, 500, 503))


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    e = _api_error(503)
    e.headers = {"Retry-After": "3"}
    err = map_api_error(e, "get x")
    assert isinstance(err, UnavailableError) and err.delay == 3.0
    assert RetryPolicy(base_delay=0.1, max_delay=8).delay(0, err.delay) == 3.0
    assert RetryPolicy(base_delay=0.1, max_delay=2).delay(0, err.delay) == 2.0


def test_forbidden_is_permanent_and_not_retried(cluster: Cluster, kube: KubeClient) -> None:
    cluster.fault("GET", "/configmaps/x$", status=403, times=5)
    with pytest.raises(AccessDeniedError, match="ServiceAccount's Role"):
        kube.get(CONFIG_MAPS, NS, "x")
    assert cluster.requests("GET", "/configmaps/x$") == 1


def test_server_errors_are_retried_with_growing_backoff(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    sleeps: list[float] = []
    kube = cluster.client(tmp_path, RetryPolicy(attempts=5, base_delay=0.1, max_delay=10,
                                                request_timeout=1))
    kube.sleep = sleeps.append
    kube.create(CONFIG_MAPS, NS, {"metadata": {"name": "x"}})
    cluster.fault("GET", "/configmaps/x$", status=500, times=3)
    assert kube.get(CONFIG_MAPS, NS, "x")["metadata"]["name"] == "x"
    assert cluster.requests("GET", "/configmaps/x$") == 4
    # Full-jitter halves: attempt n sleeps in [0.5, 1] x 0.1 x 2**n.
    assert [round(s / (0.1 * 2 ** n) + 0.25) for n, s in enumerate(sleeps)] == [1, 1, 1]


def test_unreachable_server_gives_up_after_the_attempts(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {}}]\n",
        encoding="utf-8")
    kube = connect(kubeconfig=str(config), retry=RetryPolicy(attempts=3, base_delay=0.01,
                                                             max_delay=0.02, request_timeout=1))
    with pytest.raises(UnavailableError, match=r"unreachable.*gave up after 3 attempts"):
        kube.get(CONFIG_MAPS, NS, "x")


def test_kubeconfig_credentials_are_sent(cluster: Cluster, kube: KubeClient) -> None:
    kube.create(CONFIG_MAPS, NS, {"metadata": {"name": "x"}})
    headers = cluster.call(lambda: list(cluster.api)[-1].headers)
    assert headers["Authorization"] == "Bearer test-token"


def test_missing_configuration_is_bad_input(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadInputError, match="no usable Kubernetes configuration"):
        connect(kubeconfig=str(tmp_path / "absent"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(BadInputError, match="not in a pod"):  # no ServiceAccount token here
        connect()


def test_watch_ends_at_the_server_timeout_and_filters_by_name(kube: KubeClient) -> None:
    for name in ("a", "b"):
        kube.create(DEPLOYMENTS, NS, {"metadata": {"name": name}, "spec": {"replicas": 1}})
    started = time.monotonic()
    events = list(kube.watch(DEPLOYMENTS, NS, name="a", timeout_seconds=1))
    assert 0.9 < time.monotonic() - started < 3
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("ADDED", "a")]
