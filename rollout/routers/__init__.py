"""Traffic routers, one per file, chosen by the policy's ``router.type``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rollout.errors import BadInputError
from rollout.routers.base import TrafficRouter
from rollout.routers.haproxy import HaproxyRouter
from rollout.routers.none import NoneRouter

__all__ = ["ROUTERS", "TrafficRouter", "make_router"]

#: Routers the local platform builds from a policy block; Kubernetes routers need a client and
#: are built by :func:`rollout.platforms.kubernetes.build_kubernetes`.
ROUTERS: dict[str, Callable[[Any], TrafficRouter]] = {
    "haproxy": lambda s: HaproxyRouter(s.socket, s.backend, s.blue_server, s.green_server),
    "none": lambda s: NoneRouter(),
}


def make_router(spec: Any) -> TrafficRouter:
    """The router for a policy's ``router`` block.

    Raises:
        BadInputError: the type needs another platform.
    """
    try:
        return ROUTERS[spec.type](spec)
    except KeyError as e:
        raise BadInputError(f"router type {spec.type!r} needs --platform kubernetes") from e
