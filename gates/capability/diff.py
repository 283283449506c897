"""Compare two snapshots (blue, green) fact by fact, grouped by category.

Why one flattening: the readable table of ``rollout snapshot`` and the diff both need the
snapshot as ``category -> key -> value``; :func:`snapshot_facts` is that one view. Facts that
change on every run or machine (timings, numeric error, host name, GPU UUIDs) are in the
``meta`` and ``measured`` categories, shown in tables and left out of diffs, so a diff lists
only what can change what green does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, JsonValue, computed_field

from gates.capability.snapshot import CapabilitySnapshot

__all__ = [
    "VOLATILE_CATEGORIES",
    "DiffEntry",
    "FactCategory",
    "SnapshotDiff",
    "diff",
    "snapshot_facts",
]

FactCategory = Literal[
    "meta",
    "image",
    "versions",
    "gpu",
    "host",
    "libraries",
    "packages",
    "torch",
    "providers",
    "logs",
    "probes",
    "measured",
]
_CATEGORIES: tuple[FactCategory, ...] = get_args(FactCategory)
VOLATILE_CATEGORIES: Final[frozenset[FactCategory]] = frozenset({"meta", "measured"})
_PROBE_MEASURES = ("session_create_ms", "first_run_ms", "warm_run_ms", "max_abs_error")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, JsonValue]]:
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _round(value: float) -> float:
    """Four significant digits: measurements are for reading, not for comparing."""
    return float(f"{value:.4g}")


def snapshot_facts(snap: CapabilitySnapshot) -> dict[FactCategory, dict[str, JsonValue]]:
    """The snapshot as ``category -> key -> JSON value`` (the table and diff view)."""
    facts: dict[FactCategory, dict[str, JsonValue]] = {c: {} for c in _CATEGORIES}
    facts["meta"].update(
        taken_at=snap.taken_at.isoformat(), hostname=snap.hostname, fingerprint=snap.fingerprint
    )
    facts["versions"].update(_flatten(snap.versions.model_dump(mode="json")))
    facts["measured"]["snapshot_s"] = _round(snap.duration_s)
    if snap.image is not None:
        facts["image"].update(snap.image.model_dump(mode="json", exclude_none=True))
    if snap.host is not None:
        host = snap.host.model_dump(mode="json", exclude={"gpus"})
        facts["gpu"]["count"] = len(snap.host.gpus)
        facts["gpu"]["nvml_error"] = host.pop("nvml_error")
        for gpu in snap.host.gpus:
            dump = gpu.model_dump(mode="json", exclude={"index", "uuid"})
            facts["gpu"].update(_flatten(dump, f"gpu{gpu.index}."))
            facts["meta"][f"gpu{gpu.index}.uuid"] = gpu.uuid
        facts["host"].update(_flatten(host))
    for lib in snap.libraries:
        facts["libraries"][lib.name] = lib.version
    facts["packages"].update(snap.python_packages)
    if snap.torch is not None:
        facts["torch"].update(_flatten(snap.torch.model_dump(mode="json")))
    if (probe := snap.provider_probe) is not None:
        dump = probe.model_dump(
            mode="json", exclude={"log_lines", "log_hits", "warnings", *_PROBE_MEASURES}
        )
        facts["providers"].update(_flatten(dump))
        facts["providers"]["log_categories"] = [
            c for c in sorted({h.category for h in probe.log_hits})
        ]
        for name in _PROBE_MEASURES:
            value = getattr(probe, name)
            facts["measured"][f"onnxruntime.{name}"] = _round(value) if value else value
    facts["logs"].update(Counter(hit.category for hit in snap.log_hits))
    for fact in snap.probes:
        facts["probes"][fact.probe] = f"{fact.status}: {fact.error}" if fact.error else fact.status
        facts["measured"][f"probe.{fact.probe}_s"] = _round(fact.duration_s)
    return facts


class DiffEntry(BaseModel):
    """One fact that differs; ``None`` where a snapshot lacks it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: FactCategory
    key: str
    blue: JsonValue
    green: JsonValue


class SnapshotDiff(BaseModel):
    """The differences between blue and green, non-volatile facts only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blue_fingerprint: str
    green_fingerprint: str
    entries: tuple[DiffEntry, ...]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fingerprint_equal(self) -> bool:
        """Same version matrix (the entries may still differ: GPUs, flags, logs)."""
        return self.blue_fingerprint == self.green_fingerprint

    def by_category(self) -> dict[FactCategory, list[DiffEntry]]:
        """Entries grouped by category, in the snapshot's category order."""
        grouped: dict[FactCategory, list[DiffEntry]] = {}
        for entry in self.entries:
            grouped.setdefault(entry.category, []).append(entry)
        return grouped

    def keys(self, category: FactCategory) -> set[str]:
        """The keys that differ within one category."""
        return {e.key for e in self.entries if e.category == category}


def diff(blue: CapabilitySnapshot, green: CapabilitySnapshot) -> SnapshotDiff:
    """Every non-volatile fact whose value differs between ``blue`` and ``green``."""
    a, b = snapshot_facts(blue), snapshot_facts(green)
    entries = [
        DiffEntry(category=cat, key=key, blue=a[cat].get(key), green=b[cat].get(key))
        for cat in a
        if cat not in VOLATILE_CATEGORIES
        for key in sorted(a[cat].keys() | b[cat].keys())
        if a[cat].get(key) != b[cat].get(key)
    ]
    return SnapshotDiff(
        blue_fingerprint=blue.fingerprint, green_fingerprint=green.fingerprint, entries=entries
    )
