"""The ``TrafficRouter`` extension point: set the blue/green split and read it back.

Read-back is part of the protocol because a router that silently ignored a change is how
traffic ends up somewhere nobody decided (flagger #1011). ``get_weights`` returning None means
the router cannot observe the split (the ``none`` router); the controller then reports the
weights as unknown instead of inventing them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rollout.machine import Weights

__all__ = ["TrafficRouter"]


@runtime_checkable
class TrafficRouter(Protocol):
    """Moves traffic between the blue and green deployments."""

    def check(self) -> None:
        """Fail fast before any change if the router cannot be used.

        Raises:
            BadInputError: misconfiguration (socket missing, backend or server unknown).
            UnavailableError: the router exists but does not answer now.
        """

    def set_weights(self, weights: Weights) -> None:
        """Apply the split (percent of traffic to each colour).

        Raises:
            RouterError: the change was not accepted.
        """

    def get_weights(self) -> Weights | None:
        """The split the router actually applies now, or None if it cannot be observed."""
