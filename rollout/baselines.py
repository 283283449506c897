"""Release baselines: per image digest, what that release was when a rollout admitted it.

Why: a rollback restores an image, and with it a capability snapshot and a latency profile; if
those were not kept with the digest, nobody can say what "back to the last good release" gave
back, or what changed between two releases besides the code. Each admitted green leaves one
:class:`Baseline` in ``STATE_DIR/baselines/sha256-<hex>.json``:

* its declared image (``ref``, ``digest``: the snapshot's ``image`` block) and its capability
  snapshot and execution path as admission read them (``evidence["release"]``);
* the ``image`` gate's audit summary, when the policy's ``spec.image`` audited an archive;
* green's canary latencies per prompt, from each canary run of that rollout (its records).

:class:`BaselineRecorder` is a ``Controller.on_transition`` observer that writes them (called
after the store persisted the transition; a write that fails is logged, never stops the
rollout). On a rollback it reports the digest it restored (blue's) and that digest's recorded
snapshot (:func:`restored_release`). :func:`diff_baselines` compares two releases: capability
snapshot diff, execution path, P50/P95 ratio with confidence intervals per prompt, and the
image audit changes when both audits exist (``rollout baselines diff``).

Re-admitting a digest replaces its snapshot and canary runs: a baseline is the latest
evidence about that release. Latencies of two baselines come from different canary runs (other
load, maybe another machine): the intervals bound sampling noise, not such drift.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gates.capability.collect import execution_path
from gates.capability.diff import DiffEntry, diff
from gates.capability.snapshot import CapabilitySnapshot
from gates.image.audit import AuditSummary
from rollout.errors import BadInputError, NotFoundError
from rollout.machine import Observation, Phase, RolloutStatus

__all__ = [
    "ALL_PROMPTS",
    "BASELINES_DIR",
    "Baseline",
    "BaselineDiff",
    "BaselineRecorder",
    "BaselineStore",
    "LatencyShift",
    "QuantileShift",
    "Restored",
    "diff_baselines",
    "restored_release",
]

BASELINES_DIR: Final = "baselines"
#: The key of every prompt's latencies together in :attr:`BaselineDiff.latency`.
ALL_PROMPTS: Final = "*"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_log = logging.getLogger("rollout.baselines")


class Baseline(BaseModel):
    """One release, keyed by its image digest (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ReleaseBaseline"] = "ReleaseBaseline"
    digest: str = Field(pattern=_DIGEST.pattern)
    ref: str | None = None
    rollout: str
    generation: int = Field(description=(
        "The rollout status generation that admitted it (rollout history shows it)."))
    admitted_at: float = Field(description="Unix time of the admission that recorded it.")
    outcome: str | None = Field(None, description="How that rollout ended (Promoted, ...).")
    snapshot: dict[str, Any]
    pipeline: dict[str, Any] | None = None
    audit: AuditSummary | None = None
    canary: dict[str, dict[str, list[float]]] = Field(default_factory=dict, description=(
        "Canary run label (step-0, verify) -> prompt id -> green's judged latencies (s)."))

    def capability_snapshot(self) -> CapabilitySnapshot:
        """The recorded snapshot, validated.

        Raises:
            BadInputError: the recorded snapshot is not a valid one (edited, or a newer schema).
        """
        try:
            return CapabilitySnapshot.model_validate(self.snapshot)
        except ValidationError as e:
            raise BadInputError(f"baseline {self.digest}: its snapshot is not valid: {e}") from e

    def latencies(self) -> dict[str, list[float]]:
        """Prompt id -> every canary run's latencies, plus :data:`ALL_PROMPTS`."""
        out: dict[str, list[float]] = {}
        for prompts in self.canary.values():
            for prompt, values in prompts.items():
                out.setdefault(prompt, []).extend(values)
        if out:
            out[ALL_PROMPTS] = [v for k, vs in sorted(out.items()) for v in vs]
        return out


class _Pointer(BaseModel):
    """Which release a rollout's latest run put in front (green) and which a rollback of it
    restores (blue); ``generation``: the status generation of that admission (every later
    transition of the run has a higher one, a new run admits and rewrites the pointer)."""

    model_config = ConfigDict(extra="forbid")

    generation: int
    green: str | None = None
    blue: str | None = None


class BaselineStore:
    """Baselines as JSON files under ``root`` (``STATE_DIR/baselines``), written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, state_dir: Path) -> BaselineStore:
        """The store of a controller's state directory."""
        return cls(Path(state_dir) / BASELINES_DIR)

    def path(self, digest: str) -> Path:
        """Where ``digest``'s baseline lives."""
        return self.root / f"{digest.replace(':', '-')}.json"

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def save(self, baseline: Baseline) -> Path:
        """Write (or replace) ``baseline``."""
        path = self.path(baseline.digest)
        self._write(path, baseline.model_dump_json(indent=2) + "\n")
        return path

    def get(self, digest: str) -> Baseline | None:
        """The baseline of exactly ``digest``, if recorded.

        Raises:
            BadInputError: the file is not a baseline.
        """
        path = self.path(digest)
        if not path.is_file():
            return None
        try:
            return Baseline.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as e:
            raise BadInputError(f"{path}: not a release baseline: {e}") from e

    def all(self) -> list[Baseline]:
        """Every baseline, oldest admission first."""
        found = []
        for path in sorted(self.root.glob("sha256-*.json")):
            baseline = self.get(path.stem.replace("-", ":", 1))
            if baseline is not None:
                found.append(baseline)
        return sorted(found, key=lambda b: b.admitted_at)

    def find(self, prefix: str) -> Baseline:
        """The baseline whose digest starts with ``prefix`` (``sha256:`` optional, like git's
        abbreviated hashes).

        Raises:
            NotFoundError: none matches. BadInputError: several match, or not hex.
        """
        hexa = prefix.removeprefix("sha256:").lower()
        if not hexa or not re.fullmatch(r"[0-9a-f]{1,64}", hexa):
            raise BadInputError(f"{prefix!r} is not a digest or a prefix of one (sha256:<hex>)")
        matches = sorted(self.root.glob(f"sha256-{hexa}*.json"))
        if not matches:
            raise NotFoundError(f"no baseline for {prefix} in {self.root}")
        if len(matches) > 1:
            raise BadInputError(f"{prefix} names {len(matches)} baselines: give more digits")
        found = self.get(matches[0].stem.replace("-", ":", 1))
        assert found is not None
        return found

    def _pointer_path(self, name: str) -> Path:
        return self.root / "rollouts" / f"{name}.json"

    def pointer(self, name: str) -> _Pointer | None:
        """The release pair of rollout ``name``'s latest admitted run."""
        path = self._pointer_path(name)
        try:
            return _Pointer.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None

    def set_pointer(self, name: str, pointer: _Pointer) -> None:
        """Remember the release pair of rollout ``name``'s run."""
        self._write(self._pointer_path(name), pointer.model_dump_json() + "\n")


class Restored(BaseModel):
    """What a rollback gave back: blue's digest and, if recorded, its baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    digest: str
    baseline: Baseline | None

    def describe(self) -> str:
        """One line for the log and the CLI."""
        if self.baseline is None:
            return f"restored {self.digest} (no baseline recorded for it)"
        snap = self.baseline.capability_snapshot()
        versions = ", ".join(f"{k} {v}" for k, v in snap.versions.model_dump().items()
                             if v and k != "bound_providers")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.baseline.admitted_at))
        return (f"restored {self.digest}{f' ({self.baseline.ref})' if self.baseline.ref else ''}"
                f": baseline of {when} UTC, snapshot fingerprint {snap.fingerprint}"
                f"{f' ({versions})' if versions else ''}")


def restored_release(state_dir: Path, name: str) -> Restored | None:
    """The release a rollback of rollout ``name``'s latest run restores (blue's digest, as
    its admission read it), with that digest's recorded baseline; ``None`` when blue declared
    no image."""
    store = BaselineStore.of(state_dir)
    pointer = store.pointer(name)
    if pointer is None or pointer.blue is None:
        return None
    return Restored(digest=pointer.blue, baseline=store.get(pointer.blue))


def _digest(release: Mapping[str, Any], colour: str) -> str | None:
    image = (release.get(colour) or {}).get("image") or {}
    digest = image.get("digest")
    return digest if isinstance(digest, str) and _DIGEST.fullmatch(digest) else None


def _green_latencies(records: Mapping[str, Any]) -> dict[str, list[float]]:
    """Prompt id -> green's judged latencies, from a canary run's ``green.jsonl``."""
    out: dict[str, list[float]] = {}
    path = records.get("green")
    if not isinstance(path, str):
        return out
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("ok") and row.get("excluded") is None:
                out.setdefault(str(row.get("prompt_id")), []).append(float(row["latency_s"]))
    return out


class BaselineRecorder:
    """``Controller.on_transition`` observer keeping a :class:`Baseline` per admitted digest.

    Args:
        state_dir: the controller's state directory (baselines go to ``baselines/`` in it).
        log: where the rollback line goes (the engine's ``Callbacks.log``).
        clock: wall clock (tests).
    """

    def __init__(self, state_dir: Path, *, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = BaselineStore.of(state_dir)
        self.log = log
        self.clock = clock

    def __call__(self, prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
        try:
            self._observe(prev, nxt, obs)
        except (OSError, ValueError, BadInputError) as e:
            _log.warning("release baseline of %s not recorded: %s", nxt.name, e)

    def _observe(self, prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
        release, image = obs.evidence.get("release"), obs.evidence.get("image")
        if prev.phase is Phase.ADMITTING and isinstance(release, dict):
            self._admitted(nxt, release, image.get("audit") if isinstance(image, dict) else None)
        canary = obs.evidence.get("canary")
        if isinstance(canary, dict) and isinstance(canary.get("records"), dict):
            label = "verify" if prev.phase is Phase.VERIFYING else f"step-{prev.step}"
            self._canary(nxt, label, canary["records"])
        if nxt.terminal and not prev.terminal:
            self._finished(nxt)

    def _current(self, status: RolloutStatus) -> tuple[_Pointer, Baseline] | None:
        pointer = self.store.pointer(status.name)
        if pointer is None or pointer.generation > status.generation or pointer.green is None:
            return None
        baseline = self.store.get(pointer.green)
        return None if baseline is None else (pointer, baseline)

    def _admitted(self, status: RolloutStatus, release: Mapping[str, Any],
                  audit: Mapping[str, Any] | None) -> None:
        """``release``: admission's :func:`rollout.admission.release_evidence`; ``audit``: the
        ``image`` gate's audit summary of green's digest, if it audited one."""
        green = release.get("green") or {}
        digest = _digest(release, "green")
        self.store.set_pointer(status.name, _Pointer(
            generation=status.generation, green=digest if status.phase is Phase.SHIFTING
            else None, blue=_digest(release, "blue")))
        if digest is None or status.phase is not Phase.SHIFTING or not green.get("snapshot"):
            return  # not admitted, or nothing to key a baseline by
        image = green.get("image") or {}
        self.store.save(Baseline(
            digest=digest, ref=image.get("ref"), rollout=status.name,
            generation=status.generation, admitted_at=self.clock(),
            snapshot=green["snapshot"], pipeline=green.get("pipeline"),
            audit=AuditSummary.model_validate(audit) if audit else None))

    def _canary(self, status: RolloutStatus, label: str, records: Mapping[str, Any]) -> None:
        current = self._current(status)
        if current is None:
            return
        latencies = _green_latencies(records)
        if latencies:
            baseline = current[1]
            self.store.save(baseline.model_copy(update={
                "canary": {**baseline.canary, label: latencies}}))

    def _finished(self, status: RolloutStatus) -> None:
        current = self._current(status)
        if current is not None:
            self.store.save(current[1].model_copy(update={"outcome": status.phase.value}))
        if status.phase is not Phase.PROMOTED:
            restored = restored_release(self.store.root.parent, status.name)
            if restored is not None and self.log is not None:
                self.log(f"rollout {status.name}: {restored.describe()}")


class QuantileShift(BaseModel):
    """One quantile of two releases: each with its exact interval, and B/A with a
    Bonferroni interval (:func:`gates.stats.quantiles.quantile_ratio`); ``None`` where the
    data cannot bound it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantile: float
    a: float
    a_ci: tuple[float | None, float | None]
    b: float
    b_ci: tuple[float | None, float | None]
    ratio: float | None
    ratio_ci: tuple[float | None, float | None]


class LatencyShift(BaseModel):
    """P50 and P95 of one prompt (or :data:`ALL_PROMPTS`) in releases A and B."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_a: int
    n_b: int
    shifts: tuple[QuantileShift, ...]


class BaselineDiff(BaseModel):
    """Release A (older) against release B: what ``rollout baselines diff A B`` prints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    a: str
    b: str
    ref_a: str | None
    ref_b: str | None
    fingerprint_equal: bool
    capability: tuple[DiffEntry, ...] = Field(description=(
        "Snapshot facts that differ, as rollout snapshot diff names them: blue = A, green = B."))
    execution_path: dict[str, tuple[Any, Any]]
    latency: dict[str, LatencyShift]
    latency_note: str | None = None
    image: dict[str, Any] | None = Field(None, description=(
        "Audit changes A -> B (both audited), else None."))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _shift(a: Sequence[float], b: Sequence[float], q: float, conf: float) -> QuantileShift:
    from gates.stats.quantiles import quantile_ci, quantile_ratio

    ea, eb = quantile_ci(a, q, conf_level=conf), quantile_ci(b, q, conf_level=conf)
    r = quantile_ratio(a, b, q, conf_level=conf)  # "blue" = A, "green" = B: ratio is B/A
    return QuantileShift(quantile=q, a=ea.value, a_ci=(_finite(ea.ci_low), _finite(ea.ci_high)),
                         b=eb.value, b_ci=(_finite(eb.ci_low), _finite(eb.ci_high)),
                         ratio=_finite(r.estimate),
                         ratio_ci=(_finite(r.ci_low), _finite(r.ci_high)))


def diff_baselines(a: Baseline, b: Baseline, *, conf_level: float = 0.95,
                   quantiles: tuple[float, ...] = (0.5, 0.95)) -> BaselineDiff:
    """Compare release ``a`` (the older) with ``b``: capability snapshot (non-volatile facts,
    :func:`gates.capability.diff.diff`), execution path, latency per prompt both measured,
    image audit changes."""
    snap = diff(a.capability_snapshot(), b.capability_snapshot())
    path_a, path_b = execution_path(a.pipeline), execution_path(b.pipeline)
    paths = {k: (path_a.get(k), path_b.get(k)) for k in sorted(path_a.keys() | path_b.keys())
             if path_a.get(k) != path_b.get(k)}
    la, lb = a.latencies(), b.latencies()
    latency = {prompt: LatencyShift(n_a=len(la[prompt]), n_b=len(lb[prompt]), shifts=tuple(
        _shift(la[prompt], lb[prompt], q, conf_level) for q in quantiles))
        for prompt in sorted(la.keys() & lb.keys())}
    missing = [d for d, lat in ((a.digest, la), (b.digest, lb)) if not lat]
    note = f"no canary latencies recorded for {', '.join(missing)}" if missing else None
    image = a.audit.changes(b.audit) if a.audit is not None and b.audit is not None else None
    return BaselineDiff(a=a.digest, b=b.digest, ref_a=a.ref, ref_b=b.ref,
                        fingerprint_equal=snap.fingerprint_equal, capability=snap.entries,
                        execution_path=paths, latency=latency, latency_note=note, image=image)
