"""Deliberate fault injection, for testing the controller's gates against a misbehaving green.

This is the only place in the server that delays or fails on purpose, and it announces itself:
``/capabilities`` carries the settings under ``fault_injection`` and ``/metrics`` exports
``sd_fault_injection_active``. Degraded *paths* (CPU, math attention, ORT CPU EP) are never
simulated here; they are produced for real by :mod:`sd_server.paths`.

Faults act in the worker thread, where a real GPU fault would: an added latency or a stall holds
the whole batch and everything queued behind it; an injected error fails individual requests.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict
from typing import Any

from sd_server.config import FaultConfig

__all__ = ["FaultInjector", "InjectedFaultError"]


class InjectedFaultError(RuntimeError):
    """A request failed because ``--fault-error-rate`` said so."""


class FaultInjector:
    """Draws faults from a seeded RNG so a reliability test can be replayed."""

    def __init__(self, cfg: FaultConfig) -> None:
        self.cfg = cfg
        self._rng = random.Random(cfg.seed)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.cfg.active

    def settings(self) -> dict[str, Any]:
        return {"active": self.active, **asdict(self.cfg)}

    def delay_batch(self) -> None:
        """Sleep the configured added latency, plus a stall when one is drawn."""
        if self.cfg.latency_s > 0:
            time.sleep(self.cfg.latency_s)
        if self.cfg.stall_s > 0 and self._draw(self.cfg.stall_rate):
            time.sleep(self.cfg.stall_s)

    def fails(self) -> bool:
        """Whether the next request gets an injected error."""
        return self._draw(self.cfg.error_rate)

    def _draw(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate
