"""The ``none`` router: analysis only, for pipelines that switch traffic themselves.

It records nothing and reads back nothing, so ``rollout promote --output json`` reports the
weights as unknown (null) and the pipeline acts on the exit code.
"""

from __future__ import annotations

from rollout.machine import Weights

__all__ = ["NoneRouter"]


class NoneRouter:
    """A router that moves no traffic."""

    def check(self) -> None:
        """Nothing to check."""

    def set_weights(self, weights: Weights) -> None:
        """Traffic is the pipeline's job; nothing to do."""

    def get_weights(self) -> Weights | None:
        """Unknown: this router does not see traffic."""
        return None
