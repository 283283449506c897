"""A colour is a fleet: which serving instance gets each canary request.

Why: a Service hides its pods behind one name, so a canary that sends everything to one pod per
colour never measures a green replica on a drifted node. The canary instead spreads its slices
over every ready instance of each arm and keeps evidence per instance
(:mod:`gates.stats.fleet` judges each green instance against blue's pool).

Assignment is round-robin in *seeded shuffled blocks*: the requests of one arm are numbered in
the order the slices are numbered (green: slice ``n``; blue: ``n * K + j`` for the ``j``-th blue
request of slice ``n``), cut into blocks of as many requests as the arm has instances, and each
block visits every instance once in an order drawn from the run's seed. So

* every instance of an arm gets the same number of requests (+-1), whatever the budget;
* the run is reproducible from its seed;
* the pairing of a green instance with blue instances is randomized: slices of green instance
  ``i`` meet every blue instance, in an order that does not depend on any latency, so a green
  instance is compared with blue's *pool*, not with one blue pod that shares its residue
  class (plain round-robin with as many blue as green pods pairs them one to one forever).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Instance", "InstancePicker"]

_SEED_MIX = 0x5EED_F1EE7  # block orders are independent of the arm-order shuffle's stream


@dataclass(frozen=True)
class Instance:
    """One serving instance of a colour: its base URL and, where the platform knows them, the
    pod and the node it runs on (``""`` when unknown)."""

    url: str
    pod: str = ""
    node: str = ""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"instance URL must start with http:// or https://, got "
                             f"{self.url!r}")

    @property
    def label(self) -> str:
        """How reasons name it: ``pod sd-green-2 on node gpu-b`` (the URL where unknown)."""
        if not self.pod:
            return self.url if not self.node else f"{self.url} on node {self.node}"
        return f"pod {self.pod}" + (f" on node {self.node}" if self.node else "") + \
            f" ({self.url})"


@dataclass
class InstancePicker:
    """Which instance of a fleet serves request number ``i`` (module docstring).

    Args:
        instances: the arm's instances, at least one.
        seed: the run's seed (with ``stream`` it fixes every block's order).
        stream: tells the arms' orders apart (0 for blue, 1 for green).

    Raises:
        ValueError: no instance.
    """

    instances: Sequence[Instance]
    seed: int = 0
    stream: int = 0
    _orders: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.instances:
            raise ValueError("a fleet needs at least one instance")

    def pick(self, i: int) -> Instance:
        """The instance of request ``i`` (``i >= 0``)."""
        size = len(self.instances)
        if size == 1:
            return self.instances[0]
        block, pos = divmod(i, size)
        order = self._orders.get(block)
        if order is None:
            rng = random.Random((self.seed ^ _SEED_MIX) * 1_000_003 + block * 2 + self.stream)
            order = self._orders[block] = tuple(rng.sample(range(size), size))
        return self.instances[order[pos]]
