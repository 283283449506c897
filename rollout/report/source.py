"""What a report shows, gathered from a rollout's state or from canary record files.

Two sources, one shape (:class:`ReportData`):

* a rollout's state directory: the transitions of its *latest* run from the SQLite store (a
  name can be promoted many times; each run starts with a row whose evidence says
  ``"new run"`` or with the very first row), the canary evidence recorded per analysis, and the
  canary's request records (``<state>/records/<name>/<label>/requests.jsonl``);
* canary records alone (a ``requests.jsonl`` file, or a directory holding one or more), for a
  canary run by hand with ``rollout canary --records``: no decision trail, and the judge's
  parameters are the caller's (said so in the report's notes).

Nothing here computes a verdict: the report recomputes the judge's evidence from the records
(:mod:`rollout.report.series`) and shows it beside what the controller recorded, so a reader can
see both agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gates.canary.records import ARMS, Arm
from gates.latency import LatencyGateSpec
from gates.records import RecordsError
from gates.registry import recorded_latency_gates
from rollout.errors import BadInputError, NotFoundError
from rollout.platforms.base import StatusStore
from rollout.store import StateStore, TransitionRecord

__all__ = [
    "CanaryRun",
    "LatencyGateParams",
    "ReportData",
    "TrailEntry",
    "UtilizationSeries",
    "load_records",
    "load_rollout",
]

_REQUESTS = "requests.jsonl"


@dataclass(frozen=True)
class LatencyGateParams:
    """The parameters a latency gate judged with, and what it recorded (if known).

    ``recorded`` is the gate's canary evidence (``decided_at``, ``e_value``, ``threshold``,
    ``verdict``...) as the controller stored it; ``None`` for records read on their own.
    """

    name: str
    quantile: float
    alpha: float
    max_ratio: float
    method: str = "sequential"
    recorded: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CanaryRun:
    """One canary analysis: its request rows and the latency gates that judged them.

    Attributes:
        label: ``step-0``, ``step-1``, ``verify``... (the records directory's name).
        path: the ``requests.jsonl`` read, or ``None`` when the records were not found.
        rows: every request row in file order (warm-up and cancelled ones included).
        gates: latency gates to show the judge's evidence for.
        recorded: the canary evidence the controller stored for this analysis (or ``None``).
        step: the traffic step (``None`` for verification or records read on their own).
        weight: green's share of user traffic during the analysis, in percent (if known).
    """

    label: str
    path: Path | None
    rows: tuple[Mapping[str, Any], ...]
    gates: tuple[LatencyGateParams, ...]
    recorded: Mapping[str, Any] | None = None
    step: int | None = None
    weight: int | None = None

    def latencies(self, arm: Arm) -> NDArray[np.float64]:
        """The arm's judged latencies (``ok`` rows) in the order the judge consumed them."""
        return np.asarray([float(r["latency_s"]) for r in self.rows
                           if r.get("arm") == arm and r.get("ok") is True], dtype=np.float64)

    @property
    def blue_per_green(self) -> int:
        """``K``: blue requests per slice, counted from the rows (every slice holds K blues)."""
        per_slice: dict[int, int] = {}
        for r in self.rows:
            if r.get("arm") == "blue" and isinstance(r.get("slice"), int):
                per_slice[r["slice"]] = per_slice.get(r["slice"], 0) + 1
        return max(per_slice.values(), default=1)


@dataclass(frozen=True)
class TrailEntry:
    """One transition of the decision trail."""

    generation: int
    at: float
    from_phase: str | None
    to_phase: str
    step: int
    reason: str
    action: str
    gates: Mapping[str, Mapping[str, Any]]
    weights: Mapping[str, int] | None


@dataclass(frozen=True)
class UtilizationSeries:
    """One utilization gate's samples in one analysis window (see ``utilization_evidence``)."""

    gate: str
    label: str
    floor_percent: float
    statistic: str
    interval_seconds: float
    gpus: Mapping[str, tuple[float, ...]]
    verdict: str | None
    reason: str


@dataclass(frozen=True)
class ReportData:
    """Everything one report shows.

    Attributes:
        name: the rollout's name (or the records' directory name).
        source: where it was read from, in words.
        phase: the rollout's last phase (``None`` for records read on their own).
        reason: why it is there.
        trail: the latest run's transitions.
        canaries: one entry per canary analysis, in order.
        admission: the latest admission's evidence (gates, capability violations, pipelines).
        utilization: utilization samples recorded per analysis.
        notes: caveats the reader must know (assumed parameters, missing records...).
        baselines: the two releases the run compared, ``(colour, digest, baseline file)``,
            the file ``None`` where no baseline of that digest is recorded.
    """

    name: str
    source: str
    phase: str | None
    reason: str
    trail: tuple[TrailEntry, ...] = ()
    canaries: tuple[CanaryRun, ...] = ()
    admission: Mapping[str, Any] | None = None
    utilization: tuple[UtilizationSeries, ...] = ()
    notes: tuple[str, ...] = field(default=())
    baselines: tuple[tuple[str, str, Path | None], ...] = ()


# -- records --------------------------------------------------------------------------------


def _read_rows(path: Path) -> tuple[dict[str, Any], ...]:
    """Read a canary ``requests.jsonl``, checking each row's fields the report relies on.

    Raises:
        RecordsError: unreadable file or a malformed row (with its 1-based line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecordsError(str(path), 0, f"cannot read: {e}", "check the path") from e
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordsError(str(path), i, f"not JSON: {e.msg}",
                               "give the canary's requests.jsonl") from e
        if not isinstance(row, dict) or row.get("arm") not in ARMS:
            raise RecordsError(str(path), i, "not a canary request row (no arm blue/green)",
                               "give the canary's requests.jsonl")
        lat = row.get("latency_s")
        if not isinstance(lat, int | float) or isinstance(lat, bool) \
                or not math.isfinite(lat) or lat < 0:
            raise RecordsError(str(path), i, f"latency_s {lat!r} is not a latency",
                               "latency_s must be a finite number of seconds >= 0")
        if not isinstance(row.get("ok"), bool):
            raise RecordsError(str(path), i, "ok must be true or false",
                               "give the canary's requests.jsonl")
        rows.append(row)
    return tuple(rows)


def _default_gate() -> LatencyGateParams:
    spec = LatencyGateSpec()
    return LatencyGateParams(spec.name, spec.quantile, spec.alpha, spec.max_ratio)


def load_records(path: Path, *, gate: LatencyGateParams | None = None) -> ReportData:
    """A report over canary records alone: ``requests.jsonl`` or a directory holding some.

    ``gate`` gives the judge's parameters (default: the latency gate's defaults), which the
    records themselves do not carry.

    Raises:
        NotFoundError: no ``requests.jsonl`` at or under ``path``.
        RecordsError: a malformed row.
    """
    files = [path] if path.is_file() else sorted(path.rglob(_REQUESTS)) if path.is_dir() else []
    if not files:
        raise NotFoundError(f"no canary records ({_REQUESTS}) at {path}")
    params = gate or _default_gate()
    base = path if path.is_dir() else path.parent
    runs = tuple(
        CanaryRun(label=str(f.parent.relative_to(base)) if f.parent != base else f.parent.name,
                  path=f, rows=_read_rows(f), gates=(params,))
        for f in files)
    notes = (f"Read from canary records only: the judge's parameters are the ones given to this "
             f"report (P{params.quantile * 100:g}, maxRatio {params.max_ratio:g}, alpha "
             f"{params.alpha:g}), not necessarily those of the run; there is no decision trail.",)
    name = (path if path.is_dir() else path.parent).resolve().name
    return ReportData(name=name, source=f"canary records {path}", phase=None, reason="",
                      canaries=runs, notes=notes)


# -- a rollout's state ----------------------------------------------------------------------


def _latest_run(history: Sequence[TransitionRecord]) -> list[TransitionRecord]:
    """The transitions of the last run of a name (a run starts at a ``new run`` row)."""
    start = 0
    for i, h in enumerate(history):
        if h.from_phase is None or h.evidence.get("action") == "new run":
            start = i
    return list(history[start:])


def _trail_entry(h: TransitionRecord) -> TrailEntry:
    ev = h.evidence
    return TrailEntry(generation=h.generation, at=h.at, from_phase=h.from_phase,
                      to_phase=h.to_phase, step=h.step, reason=h.reason,
                      action=str(ev.get("action") or ""), gates=dict(ev.get("gates") or {}),
                      weights=ev.get("weights"))


def _latency_gates(canary: Mapping[str, Any]) -> tuple[LatencyGateParams, ...]:
    """The recorded latency gates; the pooled judge's level where green was a fleet (its
    ``alpha`` shared with the per-instance judges, :mod:`gates.stats.fleet`)."""
    return tuple(
        LatencyGateParams(name=str(g["name"]), quantile=float(g["quantile"]),
                          alpha=float((g.get("levels") or {}).get("pooled_alpha", g["alpha"])),
                          max_ratio=float(g["max_ratio"]),
                          method=str(g.get("method", "sequential")), recorded=g)
        for g in recorded_latency_gates(canary.get("gates", [])))


def _canary_run(state_dir: Path, name: str, h: TransitionRecord,
                notes: list[str]) -> CanaryRun:
    canary: Mapping[str, Any] = h.evidence["canary"]
    step = h.evidence.get("step")
    label = f"step-{step}" if isinstance(step, int) else "verify"
    recorded = (canary.get("records") or {}).get("requests")
    candidates = [Path(recorded)] if recorded else []
    candidates.append(state_dir / "records" / name / label / _REQUESTS)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        notes.append(f"{label}: the canary's request records are gone "
                     f"({', '.join(map(str, candidates))}): only its recorded summary is shown.")
    weight = h.evidence.get("weight")
    return CanaryRun(label=label, path=path, rows=_read_rows(path) if path else (),
                     gates=_latency_gates(canary), recorded=canary,
                     step=step if isinstance(step, int) else None,
                     weight=weight if isinstance(weight, int) else None)


def _utilization(h: TransitionRecord) -> list[UtilizationSeries]:
    step = h.evidence.get("step")
    label = f"step-{step}" if isinstance(step, int) else "verify"
    out = []
    for gate, u in (h.evidence.get("utilization") or {}).items():
        result = (h.evidence.get("gates") or {}).get(gate, {})
        out.append(UtilizationSeries(
            gate=gate, label=label, floor_percent=float(u["floor_percent"]),
            statistic=str(u.get("statistic", "mean")),
            interval_seconds=float(u.get("interval_seconds", 1.0)),
            gpus={str(k): tuple(float(v) for v in vs) for k, vs in u.get("gpus", {}).items()},
            verdict=result.get("verdict") or u.get("verdict"),
            reason=str(result.get("reason") or u.get("error") or "")))
    return out


def _superseded(runs: list[CanaryRun], notes: list[str]) -> list[CanaryRun]:
    """Drop the rows of an analysis whose records a later one rewrote (a resumed step reuses
    its directory): they would be shown as this analysis's evidence but are not."""
    out = []
    for i, run in enumerate(runs):
        if run.path is not None and any(later.path == run.path for later in runs[i + 1:]):
            notes.append(f"{run.label}: analysed again later in this run, which rewrote its "
                         f"records: the earlier analysis shows only its recorded summary.")
            out.append(replace(run, path=None, rows=()))
        else:
            out.append(run)
    return out


def load_rollout(name: str, state_dir: Path, *, store: StatusStore | None = None) -> ReportData:
    """A report over the latest run of rollout ``name``.

    The transitions come from ``store`` (default: the local platform's SQLite store in
    ``state_dir``); canary records are looked up under ``state_dir`` where the evidence does
    not name them.

    Raises:
        NotFoundError: no such rollout.
        BadInputError: ``state_dir`` holds no local rollout state and no ``store`` was given.
        RecordsError: a canary record file is malformed.
    """
    if store is None:
        if not (state_dir / "rollouts.db").is_file():
            raise BadInputError(f"{state_dir} holds no rollout state (no rollouts.db)")
        store = StateStore(state_dir)
    history = _latest_run(store.history(name))
    if not history:
        raise NotFoundError(f"no rollout {name!r} in {state_dir}")
    notes: list[str] = []
    canaries: list[CanaryRun] = []
    utilization: list[UtilizationSeries] = []
    admission: Mapping[str, Any] | None = None
    for h in history:
        action = h.evidence.get("action")
        if action == "admit":
            admission = h.evidence
        if "canary" in h.evidence:
            canaries.append(_canary_run(state_dir, name, h, notes))
        utilization += _utilization(h)
    last = history[-1]
    canaries = _superseded(canaries, notes)
    return ReportData(name=name, source=f"rollout {name} (state {state_dir})",
                      phase=last.to_phase,
                      reason=last.reason, trail=tuple(_trail_entry(h) for h in history),
                      canaries=tuple(canaries), admission=admission,
                      utilization=tuple(utilization), notes=tuple(notes),
                      baselines=_baselines(state_dir, admission))


def _baselines(state_dir: Path, admission: Mapping[str, Any] | None
               ) -> tuple[tuple[str, str, Path | None], ...]:
    """The releases an admission compared (``evidence["release"]``) and their baseline files:
    a reviewer opens what blue and green were, not only how this run measured them."""
    from rollout.baselines import BaselineStore

    release = (admission or {}).get("release") or {}
    store = BaselineStore.of(state_dir)
    out = []
    for colour in ("blue", "green"):
        digest = ((release.get(colour) or {}).get("image") or {}).get("digest")
        if digest:
            path = store.path(str(digest))
            out.append((colour, str(digest), path if path.is_file() else None))
    return tuple(out)
