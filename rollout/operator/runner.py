"""kopf wiring: a registry with one daemon per RolloutPolicy, settings, credentials, and the
controller's life (standby -> leader -> kopf -> exit).

Why a daemon per object (not on.create/on.update handlers): a rollout runs for minutes to
hours and must be resumed after any restart; a daemon is started by kopf for every object it
lists (so a new leader picks up every rollout in flight), stopped when the object is deleted
(behind kopf's finalizer, so an abort completes before the object goes) and its body is a
live view, so a new ``generation`` is seen while the engine runs. The daemon itself is
level-triggered (:mod:`.reconcile`); kopf does the watching, the retries of its own API calls,
and the finalizer. A sync daemon runs in a thread of its own, so several rollouts proceed at
once and the engine's blocking code needs no changes.

Why the registry is private (not kopf's global one): tests run several controllers in one
process, and ``rollout controller`` must not pick up handlers some imported module left on
the global registry.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from rollout.k8s.client import ROLLOUT_POLICIES, KubeClient
from rollout.operator.health import Health
from rollout.operator.leader import lead
from rollout.operator.reconcile import Reconciler

__all__ = ["ControllerConfig", "registry_for", "run_controller", "settings_for"]

_log = logging.getLogger("rollout.operator")
#: Annotations and finalizer kopf writes on our objects, under our own prefix.
PREFIX = "rollout-gates.dev"


@dataclass(frozen=True)
class ControllerConfig:
    """Everything ``rollout controller`` was asked to do."""

    namespaces: Collection[str]  # empty: every namespace
    lease_namespace: str
    lease_name: str
    lease_duration: float
    identity: str
    state_dir: Path


def _connection(client: KubeClient) -> kopf.ConnectionInfo:
    """kopf's credentials from our client's configuration (in-cluster or the kubeconfig),
    so kopf and the engine talk to the same API server as the same user."""
    cfg = client.api.configuration
    header = (cfg.get_api_key_with_prefix("BearerToken")
              or cfg.get_api_key_with_prefix("authorization") or "")
    parts = str(header).split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (
        (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        username=cfg.username or None, password=cfg.password or None, scheme=scheme,
        token=token, certificate_path=cfg.cert_file, private_key_path=cfg.key_file)


def registry_for(client: KubeClient, reconciler: Reconciler) -> kopf.OperatorRegistry:
    """A registry with our login and the RolloutPolicy daemon."""
    registry = kopf.OperatorRegistry()
    res = ROLLOUT_POLICIES

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return _connection(client)

    # cancellation_timeout: a sync daemon cannot be cancelled, only asked to stop; give it
    # time to finish an abort on deletion (returning traffic to blue takes seconds).
    @kopf.daemon(res.group, res.version, res.plural, registry=registry, initial_delay=0,
                 backoff=5.0, cancellation_timeout=30.0)
    def rollout_policy(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        reconciler.daemon(body, stopped)

    del login, rollout_policy  # registered; the names only document the handlers
    return registry


def settings_for() -> kopf.OperatorSettings:
    """kopf's settings for this controller.

    * no scanning of CRDs and Namespaces: the CRD is installed before the controller and the
      namespaces are named on the command line, so RBAC needs neither (least privilege);
    * kopf's own bookkeeping in annotations under our prefix, never in ``.status``, which
      belongs to the RolloutPolicyStatus schema alone;
    * Kubernetes events only for warnings and errors (a rollout logs every step; the
      decision trail is in the ConfigMap store, not in events).
    """
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = f"{PREFIX}/controller"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    settings.watching.server_timeout = 300
    return settings


def run_controller(client: KubeClient, config: ControllerConfig, health: Health) -> int:
    """Wait for the leadership, then run kopf until a signal (0) or until the Lease is lost
    (1). Returns the exit code; the caller must exit the process with ``os._exit`` because a
    rollout's daemon thread cannot be interrupted and must not keep a non-leader alive."""
    health.role = "standby"
    _log.info("%s: standby, waiting for the Lease %s/%s", config.identity,
              config.lease_namespace, config.lease_name)
    with lead(client, config.lease_namespace, config.lease_name, identity=config.identity,
              duration=config.lease_duration) as held:
        _log.info("%s: leading (Lease %s/%s)", config.identity, config.lease_namespace,
                  config.lease_name)
        health.role = "leader"

        def watchdog() -> None:
            held.lost_event.wait()
            health.failed = held.lost
            _log.error("%s: %s; stopping", config.identity, held.lost)
            # Stop kopf the way the kubelet does (kopf handles SIGTERM in its loop). Not a
            # stop_flag: kopf waits on a thread-side flag in an executor thread, which nothing
            # wakes when kopf stops for a signal, and asyncio.run would wait for it forever.
            os.kill(os.getpid(), signal.SIGTERM)
            # kopf waits for its daemons; a rollout's may be mid-analysis and a non-leader
            # must not go on acting: give kopf a moment, then leave regardless.
            threading.Timer(max(1.0, config.lease_duration / 3), os._exit, (1,)).start()

        threading.Thread(target=watchdog, daemon=True, name="lease-watchdog").start()
        reconciler = Reconciler(client, config.state_dir)
        kopf.run(registry=registry_for(client, reconciler), settings=settings_for(),
                 standalone=True, clusterwide=not config.namespaces,
                 namespaces=list(config.namespaces), ready_flag=health.synced)
        return 1 if held.lost else 0
