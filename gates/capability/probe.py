"""Time-boxed probes: every probe runs in its own daemon thread against one shared deadline.

Why threads and a deadline: a GPU stack fails by *hanging* as often as by raising (NVML on a
wedged driver, CUDA initialization, a TensorRT build). A snapshot that hangs blocks a rollout
or a container start, so each probe gets ``min(its timeout, the overall deadline)``; one that
does not answer in time is recorded as a ``timeout`` fact and abandoned (a daemon thread never
holds the process open), and the others' results are kept. Probes that need a process of
their own (the ONNX Runtime probe) enforce the same budget on their subprocess, which can be
killed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gates.capability.snapshot import ProbeFact, ProbeStatus

__all__ = ["Probe", "ProbeAbsentError", "ProbeOutcome", "describe_error", "run_probes"]


class ProbeAbsentError(LookupError):
    """What the probe looks at is not installed: a fact (``absent``), not a failure."""


def describe_error(exc: BaseException) -> str:
    """``TypeName: message``, the form every recorded failure takes."""
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Probe:
    """A named, time-boxed question about the environment.

    Attributes:
        name: the key its outcome is recorded under.
        run: the question; returns the fact or raises (:class:`ProbeAbsentError` for "absent").
        timeout_s: its own budget, capped by the collector's overall deadline.
    """

    name: str
    run: Callable[[], object]
    timeout_s: float


@dataclass(frozen=True)
class ProbeOutcome:
    """The recorded fact, and the probe's value when it answered (else ``None``)."""

    fact: ProbeFact
    value: object | None = None


@dataclass
class _Slot:
    done: threading.Event = field(default_factory=threading.Event)
    outcome: ProbeOutcome | None = None


def _worker(probe: Probe, slot: _Slot, started: float) -> None:
    value: object | None = None
    status: ProbeStatus = "ok"
    error: str | None = None
    try:
        value = probe.run()
    except ProbeAbsentError as e:
        status, error = "absent", str(e)
    except TimeoutError as e:  # a probe that enforced its own budget (a killed subprocess)
        status, error = "timeout", str(e)
    except BaseException as e:  # a probe must never take the collector down
        status, error = "error", describe_error(e)
    duration = time.monotonic() - started
    fact = ProbeFact(probe=probe.name, status=status, error=error, duration_s=duration)
    slot.outcome = ProbeOutcome(fact, value)
    slot.done.set()


def run_probes(probes: Sequence[Probe], *, deadline_s: float) -> Mapping[str, ProbeOutcome]:
    """Run all probes concurrently; return within ``deadline_s`` (plus scheduling slack).

    Raises:
        ValueError: duplicate probe names or a non-positive deadline.
    """
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s!r}")
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate probe names in {names}")
    started = time.monotonic()
    slots: dict[str, _Slot] = {}
    for probe in probes:
        slot = slots[probe.name] = _Slot()
        threading.Thread(
            target=_worker, args=(probe, slot, started), name=f"probe-{probe.name}", daemon=True
        ).start()
    outcomes: dict[str, ProbeOutcome] = {}
    for probe in probes:
        budget = min(probe.timeout_s, deadline_s)
        slot = slots[probe.name]
        slot.done.wait(max(0.0, started + budget - time.monotonic()))
        outcome = slot.outcome
        if outcome is None:
            outcome = ProbeOutcome(
                ProbeFact(
                    probe=probe.name,
                    status="timeout",
                    error=f"no answer within {budget:g} s",
                    duration_s=time.monotonic() - started,
                )
            )
        outcomes[probe.name] = outcome
    return outcomes
