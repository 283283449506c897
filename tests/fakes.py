"""Small in-memory stand-ins shared by tests that drive the real Controller and store."""

from __future__ import annotations

from rollout.machine import Weights


class Router:
    """A traffic router that applies every change at once and reads it back exactly."""

    def __init__(self) -> None:
        self.weights = Weights(blue=100, green=0)

    def check(self) -> None:
        pass

    def set_weights(self, weights: Weights) -> None:
        self.weights = weights

    def get_weights(self) -> Weights:
        return self.weights
