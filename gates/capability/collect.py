"""Collect a capability snapshot here (``--local``) or read one (a file, a server's URL).

Why both: the controller judges green from the outside (a snapshot file, or the SD server's
``GET /capabilities``, whose ``snapshot`` key holds the document), while a container
entrypoint judges itself (``rollout admit --local -- COMMAND``). Locally, every probe is
time-boxed (:mod:`gates.capability.probe`): the snapshot returns within its deadline with a
fact per probe, whatever the GPU stack does.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from pydantic import ValidationError

from gates.bounded import CAPABILITIES_MAX_BYTES, BoundedReadError, read_bounded
from gates.capability.host import probe_host
from gates.capability.libraries import probe_libraries, probe_python_packages
from gates.capability.logscan import CATALOG, LogHit, Phrase, scan_file
from gates.capability.ort_probe import DEFAULT_PROVIDERS, probe_onnxruntime
from gates.capability.probe import Probe, ProbeOutcome, run_probes
from gates.capability.snapshot import (
    CapabilitySnapshot,
    HostFacts,
    ProviderProbe,
    TorchFacts,
)
from gates.capability.torch_probe import probe_torch

__all__ = [
    "CAPABILITIES_PATH",
    "DEFAULT_DEADLINE_S",
    "SnapshotSourceError",
    "capabilities_document",
    "collect_local",
    "default_probes",
    "fetch_snapshot",
    "load_snapshot",
    "scan_log_files",
    "snapshot_from_document",
]

CAPABILITIES_PATH: Final = "/capabilities"
DEFAULT_DEADLINE_S: Final = 30.0
#: Per-probe budgets: NVML and library loads are quick or hung; torch import and the ORT
#: child (interpreter start, session, TensorRT engine build) take seconds.
_QUICK_S, _SLOW_S = 5.0, 25.0
#: Margin between the ORT child's own kill timeout and its thread's budget, so a hung child
#: is killed and reported with its last output rather than merely abandoned.
_CHILD_MARGIN_S = 0.5

T = TypeVar("T")


class SnapshotSourceError(ValueError):
    """A snapshot could not be read: unreachable URL, bad JSON, not a valid snapshot."""


def scan_log_files(paths: Sequence[Path], phrases: Sequence[Phrase] = CATALOG) -> list[LogHit]:
    """Scan each log file for degraded-path phrases (see :mod:`gates.capability.logscan`).

    Raises:
        OSError: a file cannot be read.
    """
    return [hit for path in paths for hit in scan_file(path, phrases=phrases)]


def default_probes(
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    log_files: Sequence[Path] = (),
) -> list[Probe]:
    """The standard probes; tests add their own (a hanging one) to this list."""
    ort_budget = min(_SLOW_S, deadline_s)
    ort = partial(
        probe_onnxruntime,
        tuple(providers),
        timeout_s=max(0.1, ort_budget - _CHILD_MARGIN_S),
    )
    probes = [
        Probe("host", probe_host, _QUICK_S),
        Probe("libraries", probe_libraries, _QUICK_S),
        Probe("python-packages", probe_python_packages, _QUICK_S),
        Probe("torch", probe_torch, _SLOW_S),
        Probe("onnxruntime", ort, ort_budget),
    ]
    if log_files:
        probes.append(Probe("logs", partial(scan_log_files, tuple(log_files)), _QUICK_S))
    return probes


def _value(outcomes: Mapping[str, ProbeOutcome], name: str, kind: type[T]) -> T | None:
    outcome = outcomes.get(name)
    value = outcome.value if outcome is not None else None
    return value if isinstance(value, kind) else None


def collect_local(
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    log_files: Sequence[Path] = (),
    probes: Sequence[Probe] | None = None,
) -> CapabilitySnapshot:
    """Snapshot this machine and process, within ``deadline_s``.

    Args:
        providers: ORT provider order the probe session requests.
        deadline_s: overall time box; a probe still running then is a ``timeout`` fact.
        log_files: logs to scan for degraded-path phrases (recorded as ``log_hits``).
        probes: replaces :func:`default_probes` (for tests and custom collectors).
    """
    started = time.monotonic()
    taken_at = datetime.now(UTC)
    if probes is None:
        probes = default_probes(providers, deadline_s=deadline_s, log_files=log_files)
    outcomes = run_probes(probes, deadline_s=deadline_s)
    return CapabilitySnapshot(
        taken_at=taken_at,
        hostname=socket.gethostname(),
        deadline_s=deadline_s,
        duration_s=time.monotonic() - started,
        host=_value(outcomes, "host", HostFacts),
        libraries=_value(outcomes, "libraries", tuple) or (),
        python_packages=_value(outcomes, "python-packages", dict) or {},
        torch=_value(outcomes, "torch", TorchFacts),
        provider_probe=_value(outcomes, "onnxruntime", ProviderProbe),
        log_hits=tuple(_value(outcomes, "logs", list) or ()),
        probes=tuple(o.fact for o in outcomes.values()),
    )


def capabilities_document(snapshot: CapabilitySnapshot) -> dict[str, Any]:
    """The body a server returns at ``GET /capabilities``: ``{"snapshot": {...}}``."""
    return {"snapshot": snapshot.model_dump(mode="json")}


def fetch_snapshot(
    url: str,
    *,
    timeout_s: float = 10.0,
    client: httpx.Client | None = None,
    max_bytes: int = CAPABILITIES_MAX_BYTES,
) -> CapabilitySnapshot:
    """Read a server's snapshot from ``URL/capabilities`` (or ``URL`` if it ends so).

    ``timeout_s`` is the deadline of the whole exchange (connect, headers, body) and
    ``max_bytes`` the cap on the body (:mod:`gates.bounded`): a server trickling its answer
    or sending an endless one is refused, not waited for.

    Raises:
        SnapshotSourceError: unreachable, too slow, too large, not JSON, no ``snapshot`` key,
            or invalid.
    """
    base = url.rstrip("/")
    target = base if base.endswith(CAPABILITIES_PATH) else base + CAPABILITIES_PATH
    try:
        if client is None:
            with httpx.Client() as own:
                response = read_bounded(own, own.build_request("GET", target),
                                        deadline_s=timeout_s, max_bytes=max_bytes)
        else:
            response = read_bounded(client, client.build_request("GET", target),
                                    deadline_s=timeout_s, max_bytes=max_bytes)
    except BoundedReadError as e:  # names the URL already
        raise SnapshotSourceError(str(e)) from e
    except httpx.HTTPError as e:
        raise SnapshotSourceError(f"{target}: {type(e).__name__}: {e}") from e
    if not response.is_success:
        raise SnapshotSourceError(f"{target}: HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError as e:
        raise SnapshotSourceError(f"{target}: not JSON: {e}") from e
    return snapshot_from_document(body, target)


def snapshot_from_document(body: Any, source: str) -> CapabilitySnapshot:
    """The snapshot inside a ``GET /capabilities`` body read elsewhere (``source`` names it).

    Raises:
        SnapshotSourceError: no ``snapshot`` key, or not a valid snapshot.
    """
    if not isinstance(body, dict) or "snapshot" not in body:
        raise SnapshotSourceError(f"{source}: the response has no 'snapshot' key")
    try:
        return CapabilitySnapshot.model_validate(body["snapshot"])
    except ValidationError as e:
        raise SnapshotSourceError(f"{source}: not a valid capability snapshot: {e}") from e


def load_snapshot(source: str, *, timeout_s: float = 10.0) -> CapabilitySnapshot:
    """A snapshot from an ``http(s)://`` server URL or a JSON file path.

    Raises:
        SnapshotSourceError: the source cannot be read or is not a valid snapshot.
    """
    if source.startswith(("http://", "https://")):
        return fetch_snapshot(source, timeout_s=timeout_s)
    path = Path(source)
    try:
        return CapabilitySnapshot.from_file(path)
    except OSError as e:
        raise SnapshotSourceError(f"{path}: {e}") from e
    except ValidationError as e:
        raise SnapshotSourceError(f"{path}: not a valid capability snapshot: {e}") from e
