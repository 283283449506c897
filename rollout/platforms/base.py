"""The ``Platform`` and ``StatusStore`` extension points.

A platform knows where blue and green run and how to reach each of their serving instances (one
URL per pod on Kubernetes, so a single pod on a bad node is caught; with the pod and node where
it knows them, so a verdict can name the replica), reads the files a policy keeps in the
cluster (a ConfigMap's prompt set), waits for green to be ready, and tidies up after a
terminal phase (stop or scale down the losing colour, swap roles
on promotion). A status store persists the rollout status with optimistic concurrency and
hands out the single-writer lock: SQLite + flock locally, a ConfigMap + Lease on Kubernetes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from gates.canary.fleet import Instance
from rollout.machine import RolloutStatus
from rollout.store import Intent, TransitionRecord

__all__ = ["Platform", "StatusStore"]


class Platform(Protocol):
    """Where the two colours run."""

    def check(self) -> None:
        """Fail fast (BadInputError) before any change when the targets cannot be used."""

    def endpoints(self, color: str) -> list[str]:
        """Base URLs of every serving instance of ``color`` (canaries and probes go to each)."""

    def instances(self, color: str) -> list[Instance]:
        """Every serving instance of ``color`` with its pod and node where known (the same
        instances as :meth:`endpoints`, in the same order)."""

    def config_map_text(self, name: str, key: str) -> str:
        """The text under ``key`` of ConfigMap ``name`` in the rollout's namespace.

        Raises:
            BadInputError: the ConfigMap or the key is missing (the message names it), or the
                platform keeps no ConfigMaps (local).
        """

    def wait_ready(self, color: str, *, timeout: float) -> None:
        """Block until ``color`` serves (readiness, not just liveness), or raise."""

    def finish(self, status: RolloutStatus) -> None:
        """After a terminal phase: retire the colour that lost."""


class StatusStore(Protocol):
    """Durable rollout status with history, user intents and a single-writer lock."""

    def load(self, name: str) -> RolloutStatus | None:
        """The persisted status, or None."""

    def save(self, status: RolloutStatus, *, previous: RolloutStatus | None,
             evidence: dict[str, Any] | None = None, consumed: list[int] | None = None) -> None:
        """Persist ``status`` if the stored one is still ``previous`` (else StateConflictError)."""

    def history(self, name: str) -> list[TransitionRecord]:
        """Every recorded transition."""

    def request(self, name: str, intent: Intent) -> None:
        """Record a user's abort/rollback/resume."""

    def pending_intents(self, status: RolloutStatus) -> tuple[RolloutStatus, list[int]]:
        """``status`` with unconsumed intents folded in, and their ids."""

    def lock(self, name: str) -> AbstractContextManager[None]:
        """Exclusive right to act on ``name`` (LockedError naming the holder otherwise)."""


