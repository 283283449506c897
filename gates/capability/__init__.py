"""GPU capability snapshots, their diff, and the ``capability`` admission gate.

Nothing here imports torch or onnxruntime at import time: the torch probe imports it inside
its worker thread, the ONNX Runtime probe runs in a child process.
"""

from gates.capability.collect import (
    CAPABILITIES_PATH,
    DEFAULT_DEADLINE_S,
    SnapshotSourceError,
    capabilities_document,
    collect_local,
    default_probes,
    fetch_snapshot,
    load_snapshot,
    scan_log_files,
    snapshot_from_document,
)
from gates.capability.diff import DiffEntry, SnapshotDiff, diff, snapshot_facts
from gates.capability.fingerprint import VersionMatrix, fingerprint_of
from gates.capability.logscan import CATALOG, LogHit, scan_file, scan_text
from gates.capability.ort_probe import DEFAULT_PROVIDERS
from gates.capability.probe import Probe, ProbeAbsentError, run_probes
from gates.capability.requirements import check_capability
from gates.capability.snapshot import (
    SCHEMA_VERSION,
    CapabilitySnapshot,
    ProbeFact,
    ProviderProbe,
    snapshot_json_schema,
)
from gates.capability.spec import (
    SAME_AS_BLUE,
    BaselineRequiredError,
    CapabilityReport,
    CapabilityRequirements,
    VersionPins,
    Violation,
)

__all__ = [
    "CAPABILITIES_PATH",
    "CATALOG",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_PROVIDERS",
    "SAME_AS_BLUE",
    "SCHEMA_VERSION",
    "BaselineRequiredError",
    "CapabilityReport",
    "CapabilityRequirements",
    "CapabilitySnapshot",
    "DiffEntry",
    "LogHit",
    "Probe",
    "ProbeAbsentError",
    "ProbeFact",
    "ProviderProbe",
    "SnapshotDiff",
    "SnapshotSourceError",
    "VersionMatrix",
    "VersionPins",
    "Violation",
    "capabilities_document",
    "check_capability",
    "collect_local",
    "default_probes",
    "diff",
    "fetch_snapshot",
    "fingerprint_of",
    "load_snapshot",
    "run_probes",
    "scan_file",
    "scan_log_files",
    "scan_text",
    "snapshot_facts",
    "snapshot_from_document",
    "snapshot_json_schema",
]
