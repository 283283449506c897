"""The in-cluster controller: RolloutPolicy objects reconciled through the rollout engine.

One concern per module:

* :mod:`.reconcile`: one RolloutPolicy, level-triggered and idempotent (start, resume, a new
  generation, intents, tidy-up), through the same engine the local platform runs;
* :mod:`.status`: the engine's status projected onto the object's ``.status`` (kstatus
  conditions, weights read back, gates, per-instance evidence);
* :mod:`.leader`: leader election on a ``coordination.k8s.io`` Lease;
* :mod:`.health`: ``/healthz`` and ``/readyz``;
* :mod:`.runner`: kopf's registry, settings and credentials, and the controller's life.
"""

from __future__ import annotations

__all__: list[str] = []
