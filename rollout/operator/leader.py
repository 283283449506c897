"""Leader election: one active controller per Lease, standbys block until it is free.

Why our own and not kopf's peering: kopf's peering is built on its ``KopfPeering`` custom
resources and lets a higher-priority peer pause the others; it has no notion of a lease that
expires when its holder dies, which is what a ``kill -9`` of the leader needs (and what
Kubernetes' own controllers use: a ``coordination.k8s.io/v1`` Lease). The Lease code is the
status store's (:meth:`~rollout.platforms.kube_store.ConfigMapStatusStore.hold`): taken when
free or expired, renewed every third of its duration in the background, released on a clean
exit, and reported lost when it cannot be renewed for a whole duration or another holder took
it. A leader that lost its Lease must stop acting at once: the caller stops kopf and exits
non-zero (its Pod restarts as a standby).
"""

from __future__ import annotations

import math
import os
import socket
from contextlib import AbstractContextManager

from rollout.k8s.client import KubeClient
from rollout.platforms.kube_store import ConfigMapStatusStore, HeldLease

__all__ = ["default_identity", "lead"]


def default_identity() -> str:
    """``$POD_NAME`` (set from the downward API), else ``hostname-pid``."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def lead(client: KubeClient, namespace: str, lease_name: str, *, identity: str,
         duration: float) -> AbstractContextManager[HeldLease]:
    """Block until ``identity`` holds the Lease ``namespace/lease_name``; hold it (renewed)
    while the body runs; release it at the end. Watch ``HeldLease.lost_event``."""
    store = ConfigMapStatusStore(client, namespace, identity=identity, lease_duration=duration,
                                 lock_wait=math.inf)
    return store.hold(lease_name, what=f"the leadership of {lease_name}")
