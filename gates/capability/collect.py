"""Collect a capability snapshot here (``--local``) or read one (a file, a server's URL).

Why both: the controller judges green from the outside (a snapshot file, or the SD server's
``GET /capabilities``, whose ``snapshot`` key holds the document), while a container
entrypoint judges itself (``rollout admit --local -- COMMAND``). Locally, every probe is
time-boxed (:mod:`gates.capability.probe`): the snapshot returns within its deadline with a
fact per probe, whatever the GPU stack does.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gates.bounded import CAPABILITIES_MAX_BYTES, BoundedReadError, read_bounded
from gates.capability.host import probe_host
from gates.capability.libraries import probe_libraries, probe_python_packages
from gates.capability.logscan import CATALOG, LogHit, Phrase, scan_file
from gates.capability.ort_probe import DEFAULT_PROVIDERS, probe_onnxruntime
from gates.capability.probe import Probe, ProbeOutcome, run_probes
from gates.capability.snapshot import (
    CapabilitySnapshot,
    HostFacts,
    ImageFacts,
    ProviderProbe,
    TorchFacts,
)
from gates.capability.torch_probe import probe_torch

__all__ = [
    "CAPABILITIES_PATH",
    "DEFAULT_DEADLINE_S",
    "PATH_FIELDS",
    "CapabilitiesDocument",
    "ModulePath",
    "OrtPath",
    "PipelinePath",
    "SnapshotSourceError",
    "capabilities_document",
    "collect_local",
    "default_probes",
    "execution_path",
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
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    session_options: Mapping[str, bool | int] | None = None,
) -> list[Probe]:
    """The standard probes; tests add their own (a hanging one) to this list.

    ``provider_options`` and ``session_options`` configure the ORT probe session like the
    server's (see :func:`~gates.capability.ort_probe.probe_onnxruntime`).
    """
    ort_budget = min(_SLOW_S, deadline_s)
    ort = partial(
        probe_onnxruntime,
        tuple(providers),
        timeout_s=max(0.1, ort_budget - _CHILD_MARGIN_S),
        provider_options=provider_options,
        session_options=session_options,
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
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    session_options: Mapping[str, bool | int] | None = None,
) -> CapabilitySnapshot:
    """Snapshot this machine and process, within ``deadline_s``; the image it runs comes
    from ``ROLLOUT_IMAGE_REF``/``ROLLOUT_IMAGE_DIGEST`` (:meth:`ImageFacts.from_env`).

    Args:
        providers: ORT provider order the probe session requests.
        deadline_s: overall time box; a probe still running then is a ``timeout`` fact.
        log_files: logs to scan for degraded-path phrases (recorded as ``log_hits``).
        probes: replaces :func:`default_probes` (for tests and custom collectors).
        provider_options: per-provider ORT options for the probe session (the server's own).
        session_options: ORT ``SessionOptions`` attributes for the probe session.
    """
    started = time.monotonic()
    taken_at = datetime.now(UTC)
    if probes is None:
        probes = default_probes(providers, deadline_s=deadline_s, log_files=log_files,
                                provider_options=provider_options,
                                session_options=session_options)
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
        image=ImageFacts.from_env(os.environ),
    )


#: The execution-path facts of one pipeline module, in the order reports show them.
PATH_FIELDS: Final = ("backend", "device", "dtype", "attention", "attention_impl",
                      "memory_format", "compiled")


class _Open(BaseModel):
    # Servers add keys over time: unknown ones are kept, never an error.
    model_config = ConfigDict(extra="allow", frozen=True)


class ModulePath(_Open):
    """The path one pipeline module runs on (the SD server's ``ModuleReport``)."""

    backend: str | None = None
    device: str | None = None
    dtype: str | None = None
    attention: str | None = None
    attention_impl: tuple[str, ...] | None = None
    memory_format: str | None = None
    compiled: bool | None = None


class OrtPath(_Open):
    """What ONNX Runtime bound for the UNet (requested and bound providers)."""

    requested: tuple[str, ...] | None = None
    bound: tuple[str, ...] | None = None


class PipelinePath(_Open):
    """The whole pipeline's actual path (the SD server's ``PathReport``)."""

    modules: dict[str, ModulePath] = Field(default_factory=dict)
    ort: OrtPath | None = None

    def facts(self) -> dict[str, Any]:
        """``{"<module>.<field>": value}`` for every :data:`PATH_FIELDS` field, plus
        ``ort.bound``: what the ``execution-path`` gate compares and the report shows."""
        out: dict[str, Any] = {f"{name}.{k}": getattr(m, k) for name, m in self.modules.items()
                               for k in PATH_FIELDS}
        if self.ort is not None:
            out["ort.bound"] = self.ort.bound
        return out


class CapabilitiesDocument(_Open):
    """The body of ``GET /capabilities``: the snapshot and what the serving process reports.

    The SD server writes it (:func:`capabilities_document`), the analyzer reads it (admission:
    readiness, self-reported degradation, the execution path, capability gates) and the report
    shows its execution path: one model, so they cannot drift apart.

    Attributes:
        snapshot: the capability snapshot, as JSON (validated by :meth:`capability_snapshot`,
            so a bad snapshot fails the capability gates, not the whole document).
        pipeline: the pipeline's actual path, once loaded.
        degraded: the server serves on a path its admission refused (``--allow-degraded``).
        violations: why (``Violation`` documents).
        fault_injection: the server's fault-injection settings (``active`` when on).
    """

    snapshot: dict[str, Any] | None = None
    pipeline: PipelinePath | None = None
    degraded: bool = False
    violations: tuple[dict[str, Any], ...] = ()
    fault_injection: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, body: Any, source: str) -> CapabilitiesDocument:
        """Validate a ``/capabilities`` body read from ``source``.

        Raises:
            SnapshotSourceError: not a JSON object of this shape.
        """
        if not isinstance(body, dict):
            raise SnapshotSourceError(f"{source}: not a JSON object")
        try:
            return cls.model_validate(body)
        except ValidationError as e:
            raise SnapshotSourceError(f"{source}: not a /capabilities document: {e}") from e

    def capability_snapshot(self, source: str) -> CapabilitySnapshot:
        """The snapshot in the document (``source`` names where it came from).

        Raises:
            SnapshotSourceError: no snapshot, or not a valid one.
        """
        return snapshot_from_document({"snapshot": self.snapshot} if self.snapshot is not None
                                      else {}, source)

    def execution_path(self) -> dict[str, Any]:
        """The execution-path facts (:meth:`PipelinePath.facts`); empty without a pipeline."""
        return self.pipeline.facts() if self.pipeline is not None else {}

    @property
    def fault_injection_active(self) -> bool:
        """Whether the server runs with fault injection switched on."""
        return bool(self.fault_injection.get("active"))


def execution_path(pipeline: Any) -> dict[str, Any]:
    """The execution-path facts of a recorded ``pipeline`` document (``{}`` if none or not
    a pipeline)."""
    if not isinstance(pipeline, dict):
        return {}
    try:
        return PipelinePath.model_validate(pipeline).facts()
    except ValidationError:
        return {}


def capabilities_document(snapshot: CapabilitySnapshot, **fields: Any) -> dict[str, Any]:
    """The body a server returns at ``GET /capabilities``: ``{"snapshot": {...}, **fields}``,
    validated against :class:`CapabilitiesDocument`.

    Raises:
        pydantic.ValidationError: a field of the wrong shape.
    """
    doc = CapabilitiesDocument(snapshot=snapshot.model_dump(mode="json"), **fields)
    return doc.model_dump(mode="json", exclude_unset=True)


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
    """A snapshot from an ``http(s)://`` server URL or a JSON file path (a snapshot, as
    ``rollout snapshot --output json`` writes it, or a saved ``GET /capabilities`` body).

    Raises:
        SnapshotSourceError: the source cannot be read or is not a valid snapshot.
    """
    if source.startswith(("http://", "https://")):
        return fetch_snapshot(source, timeout_s=timeout_s)
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SnapshotSourceError(f"{path}: {e}") from e
    try:
        return CapabilitySnapshot.model_validate_json(raw)
    except ValidationError as e:
        body = _json_object(raw)
        if body is not None and "snapshot" in body and "schema_version" not in body:
            return snapshot_from_document(body, str(path))  # a saved /capabilities body
        raise SnapshotSourceError(f"{path}: not a valid capability snapshot: {e}") from e


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
