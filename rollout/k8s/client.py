"""The one door to the Kubernetes API: the official client, our error tree, one retry layer.

Every other Kubernetes module (platform, routers, status store) talks to the API through
:class:`KubeClient` with plain JSON dicts, for three reasons:

* **One error mapping.** ``ApiException`` and urllib3's transport errors are mapped here, once,
  onto :mod:`rollout.errors` (``raise ... from e``), so callers decide on *our* types: retrying
  a 409 or a 403 cannot help, retrying a 503 or a read timeout can::

      HTTP 400, 422         BadInputError        the request or the manifest is wrong
      HTTP 401, 403         AccessDeniedError    credentials or RBAC (a PermanentError)
      HTTP 404              NotFoundError
      HTTP 409, 410         StateConflictError   stale resourceVersion / already exists / gone
      HTTP 429, 5xx         UnavailableError     retried, honouring Retry-After
      timeouts, resets      UnavailableError     retried
      TLS failure           BadInputError        the kubeconfig's CA or server name is wrong

* **One retry layer.** urllib3's own retries are switched off (``Configuration.retries =
  False``) so a dead API server costs a bounded, visible number of attempts with exponential
  backoff and jitter (:class:`RetryPolicy`), not three hidden ones per attempt.
* **JSON as it is on the wire.** The generated model classes drop fields their client version
  does not know and would need a second code path for custom resources (HTTPRoute); dicts keep
  the objects exactly as ``kubectl get -o json`` shows them, for built-in and custom kinds.

This is the only module that imports ``kubernetes`` (about 2 s of import time), so nothing
pays for it unless a Kubernetes rollout is actually run.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from rollout.errors import (
    AccessDeniedError,
    BadInputError,
    NotFoundError,
    PermanentError,
    RolloutError,
    StateConflictError,
    TemporaryError,
    UnavailableError,
)

__all__ = [
    "CONFIG_MAPS",
    "DEPLOYMENTS",
    "ENDPOINT_SLICES",
    "EVENTS",
    "HTTP_ROUTES",
    "LEASES",
    "NODES",
    "PODS",
    "ROLLOUT_POLICIES",
    "SERVICES",
    "AccessDeniedError",
    "Json",
    "KubeClient",
    "PatchType",
    "Resource",
    "RetryPolicy",
    "connect",
    "map_api_error",
]

Json = dict[str, Any]
PatchType = Literal["merge", "strategic", "json"]
T = TypeVar("T")

_PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}


@dataclass(frozen=True)
class Resource:
    """A namespaced API resource, enough to build its REST paths."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    def path(self, namespace: str, name: str | None = None,
             subresource: str | None = None) -> str:
        """``/api[s]/.../namespaces/NS/PLURAL[/NAME[/SUB]]`` (no namespace part for a
        cluster-scoped resource: ``namespace`` is ignored)."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = (f"{root}/namespaces/{namespace}/{self.plural}" if self.namespaced
                else f"{root}/{self.plural}")
        if name is not None:
            path += f"/{name}"
            if subresource is not None:
                path += f"/{subresource}"
        return path

    def describe(self, namespace: str, name: str | None = None) -> str:
        """``Kind ns/name`` for messages."""
        if not self.namespaced:
            return f"{self.kind} {name}" if name else f"{self.kind}s"
        return f"{self.kind} {namespace}/{name}" if name else f"{self.kind}s in {namespace}"


DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
SERVICES = Resource("", "v1", "services", "Service")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
HTTP_ROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
PODS = Resource("", "v1", "pods", "Pod")
#: Cluster-scoped: pass any namespace (it is ignored), e.g. ``client.get(NODES, "", name)``.
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
EVENTS = Resource("", "v1", "events", "Event")
#: Our custom resource: the policy document itself, with the controller's status subresource.
ROLLOUT_POLICIES = Resource("rollout-gates.dev", "v1alpha1", "rolloutpolicies", "RolloutPolicy")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for :class:`~rollout.errors.TemporaryError` only.

    ``attempts`` counts calls, not retries; each call may take up to ``request_timeout``
    seconds (connect and read), and the sleeps between calls grow from ``base_delay`` to at
    most ``max_delay`` (a server's Retry-After hint is honoured up to ``max_delay``).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    request_timeout: float = 10.0

    def delay(self, attempt: int, hint: float = 0.0) -> float:
        """Seconds to sleep after failed call number ``attempt`` (0-based)."""
        backoff = min(self.max_delay, self.base_delay * 2.0 ** attempt)
        jittered = backoff * (0.5 + random.random() / 2)  # jitter spreads competing retries
        return min(self.max_delay, max(jittered, hint))


def _status_message(e: ApiException) -> str:
    """The API server's ``Status.message`` if the body is a Status, else the HTTP reason."""
    try:
        body = json.loads(e.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(e.reason or "no reason given")


def _retry_after(e: ApiException) -> float:
    """The server's Retry-After in seconds, 0 if it gave none (our backoff decides then)."""
    try:
        return float((e.headers or {}).get("Retry-After", 0.0))
    except (TypeError, ValueError):
        return 0.0


def map_api_error(e: Exception, what: str) -> RolloutError:
    """Our error for a failed API call ``what`` (e.g. "patch Service ns/active").

    Raises nothing itself; callers ``raise map_api_error(e, what) from e``.
    """
    if isinstance(e, ApiException):
        status = int(e.status or 0)
        message = f"{what}: HTTP {status}: {_status_message(e)}"
        if status in (400, 422):
            return BadInputError(message)
        if status in (401, 403):
            return AccessDeniedError(
                f"{message} (check the ServiceAccount's Role in deploy/k8s or the kubeconfig's "
                "credentials)")
        if status == 404:
            return NotFoundError(message)
        if status in (409, 410):
            return StateConflictError(message)
        if status == 429 or status >= 500:
            return UnavailableError(message, delay=_retry_after(e))
        if status == 0:  # the client's own wrapper of TLS errors
            return BadInputError(f"{what}: TLS with the API server failed: {e.reason}")
        return PermanentError(message)
    if isinstance(e, urllib3.exceptions.HTTPError | OSError):
        return UnavailableError(f"{what}: API server unreachable: {type(e).__name__}: {e}")
    if isinstance(e, ValueError):  # a body that is not JSON
        return UnavailableError(f"{what}: API server answered something that is not JSON: {e}")
    raise TypeError(f"not an API error: {e!r}") from e


@dataclass
class KubeClient:
    """JSON-in, JSON-out Kubernetes calls with error mapping and retries.

    Args:
        api: a configured official ``ApiClient`` (auth, TLS, token refresh are its job).
        retry: the backoff of TemporaryErrors.
        sleep: injectable for tests that count backoffs instead of waiting them out.
    """

    api: k8s_client.ApiClient
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep

    def get(self, res: Resource, namespace: str, name: str) -> Json:
        """The object, or NotFoundError."""
        return self._call(f"get {res.describe(namespace, name)}", "GET",
                          res.path(namespace, name))

    def list_objects(self, res: Resource, namespace: str, *,
                     label_selector: str | None = None) -> list[Json]:
        """Items of ``res`` in ``namespace`` (optionally filtered by a label selector)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        body = self._call(f"list {res.describe(namespace)}", "GET", res.path(namespace),
                          query=query)
        return list(body.get("items") or [])

    def create(self, res: Resource, namespace: str, body: Mapping[str, Any]) -> Json:
        """Create ``body``; StateConflictError if it exists already."""
        name = body.get("metadata", {}).get("name")
        return self._call(f"create {res.describe(namespace, name)}", "POST",
                          res.path(namespace), body=dict(body))

    def patch(self, res: Resource, namespace: str, name: str, body: Mapping[str, Any] | list[Any],
              *, patch_type: PatchType = "merge", subresource: str | None = None) -> Json:
        """Patch an object. A ``metadata.resourceVersion`` in a merge patch is a precondition:
        the API server answers 409 (StateConflictError) if the object moved on since."""
        what = f"patch {res.describe(namespace, name)}" + (f"/{subresource}" if subresource
                                                            else "")
        return self._call(what, "PATCH", res.path(namespace, name, subresource),
                          body=body if isinstance(body, list) else dict(body),
                          content_type=_PATCH_CONTENT_TYPES[patch_type])

    def watch(self, res: Resource, namespace: str, *, name: str | None = None,
              resource_version: str | None = None, timeout_seconds: int = 30
              ) -> Iterator[tuple[str, Json]]:
        """Stream ``(type, object)`` events until the server closes the watch.

        ``timeoutSeconds`` asks the server to end the stream; the client's read timeout is a
        little longer so a server that forgets does not hang us. Events of other objects are
        dropped here too (a field selector is a server-side optimisation, not a guarantee we
        rely on). An ``ERROR`` event is raised as the mapped error (410: StateConflictError).
        """
        query: list[tuple[str, str]] = [("watch", "true"),
                                        ("timeoutSeconds", str(timeout_seconds))]
        if name is not None:
            query.append(("fieldSelector", f"metadata.name={name}"))
        if resource_version:
            query.append(("resourceVersion", resource_version))
        what = f"watch {res.describe(namespace, name)}"
        response = self._with_retries(what, lambda: self._send(
            "GET", res.path(namespace), query=query, body=None, content_type=None,
            timeout=(self.retry.request_timeout, timeout_seconds + self.retry.request_timeout)))
        try:
            for line in response:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise map_api_error(ApiException(status=code, reason=obj.get("message")),
                                        what)
                if name is None or obj.get("metadata", {}).get("name") == name:
                    yield str(event.get("type")), obj
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise map_api_error(e, what) from e
        finally:
            response.close()  # an unfinished stream must not go back to the pool half-read
            response.release_conn()

    # -- transport -----------------------------------------------------------------------

    def _call(self, what: str, method: str, path: str, *,
              query: list[tuple[str, str]] | None = None, body: Any = None,
              content_type: str | None = None) -> Json:
        def once() -> Json:
            response = self._send(method, path, query=query or [], body=body,
                                  content_type=content_type, timeout=self.retry.request_timeout)
            try:
                data = json.loads(response.data or b"{}")
            except ValueError as e:
                raise map_api_error(e, what) from e
            finally:
                response.release_conn()
            if not isinstance(data, dict):
                raise UnavailableError(f"{what}: expected a JSON object, got {type(data)}")
            return data

        return self._with_retries(what, once)

    def _send(self, method: str, path: str, *, query: list[tuple[str, str]], body: Any,
              content_type: str | None, timeout: float | tuple[float, float]
              ) -> urllib3.HTTPResponse:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        _, url, headers, body, _ = self.api.param_serialize(
            method, path, query_params=query, header_params=headers, body=body,
            auth_settings=["BearerToken"])
        rest = self.api.call_api(method, url, header_params=headers, body=body,
                                 _request_timeout=timeout)
        response: urllib3.HTTPResponse = rest.response
        if not 200 <= response.status <= 299:
            error = ApiException(status=response.status, reason=response.reason,
                                 body=response.data.decode("utf-8", "replace"))
            error.headers = response.headers
            response.release_conn()
            raise error
        return response

    def _with_retries(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                try:
                    return fn()
                except ApiException as e:
                    raise map_api_error(e, what) from e
                except (urllib3.exceptions.HTTPError, OSError) as e:
                    raise map_api_error(e, what) from e
            except TemporaryError as e:
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise UnavailableError(f"{e} (gave up after {attempt} attempts)",
                                           delay=e.delay) from e
                self.sleep(self.retry.delay(attempt - 1, e.delay))


def connect(*, kubeconfig: str | None = None, context: str | None = None,
            retry: RetryPolicy | None = None) -> KubeClient:
    """A client from a kubeconfig (explicit, ``$KUBECONFIG`` or ``~/.kube/config``) or, inside
    a pod with neither given, from the pod's ServiceAccount.

    Raises:
        BadInputError: no usable configuration was found.
    """
    cfg = k8s_client.Configuration()
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=cfg)
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                # $KUBECONFIG read now: the kubernetes package reads it once, at import.
                config_file=kubeconfig or os.environ.get("KUBECONFIG"), context=context,
                client_configuration=cfg)
    except (k8s_config.ConfigException, OSError) as e:
        source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise BadInputError(
            f"no usable Kubernetes configuration ({source}"
            f"{', context ' + context if context else ''}; not in a pod): {e}") from e
    cfg.retries = False  # one retry layer: ours (see RetryPolicy)
    return KubeClient(k8s_client.ApiClient(cfg), retry=retry or RetryPolicy())
