"""Admission's reads and checks: what the analyzer judges before green gets any traffic.

Each green instance's ``/readyz`` and ``/capabilities`` are read once (:func:`read_endpoint`,
bounded by ``spec.limits``: one deadline per exchange and a cap on the body, so a green that
trickles or floods its ``/capabilities`` is an ``error`` verdict, never a hang), blue's
``/capabilities`` when a check needs it, and every check judges those reads:

* ``green-ready`` (:func:`self_report`): every instance ready and not reporting a degraded
  execution path (the reference server's own path checks);
* ``execution-path`` (:func:`same_path`): green runs blue's kernels, precision and providers;
* each ``capability`` gate (:func:`capability_gate`) against every instance's snapshot (one pod
  on a bad node is caught) and blue's for ``same-as-blue`` pins;
* with ``spec.matrix`` (:func:`matrix_gates`): ``version-matrix``, every instance's snapshot
  against the matrix, and on a platform that knows its pods' nodes (Kubernetes)
  ``version-matrix-nodes``, every green pod's node by its GPU Feature Discovery labels;
* with ``spec.image`` (:func:`image_gate`): ``image``, the image green declares it runs (its
  snapshot's ``image`` block) audited (``spec.image.archive``, whose digest must be green's) and,
  with ``requireSignature``, signed for its identity by a trusted key.

Every admission also records :func:`release_evidence` (green's image, snapshot and path, blue's
image) under ``evidence["release"]``: what :mod:`rollout.baselines` keeps per digest.

:func:`admission_gates` composes them; :meth:`rollout.analysis.PolicyAnalyzer.admit` does the
reads (between which it may be interrupted) and calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from gates.bounded import BoundedReadError, read_bounded
from gates.capability import (
    CAPABILITIES_PATH,
    BaselineRequiredError,
    CapabilityRequirements,
    CapabilitySnapshot,
    SnapshotSourceError,
    check_capability,
)
from gates.capability.collect import CapabilitiesDocument
from gates.capability.spec import Violation
from gates.gate import GateResult
from gates.image.policy import ImageSpec
from gates.matrix import (
    MATRIX_GATE,
    MATRIX_NODES_GATE,
    MatrixSpec,
    NodePlacement,
    judge_placements,
    judge_snapshots,
)
from gates.verdict import Verdict
from rollout.errors import RolloutError
from rollout.policy.models import LimitsSpec

__all__ = ["IMAGE_GATE", "InstanceRead", "PlacementSource", "admission_gates", "capability_gate",
           "image_gate", "matrix_gates", "read_endpoint", "release_evidence", "same_path",
           "self_report"]

IMAGE_GATE = "image"


@runtime_checkable
class PlacementSource(Protocol):
    """A platform that knows on which node each pod of a colour runs (Kubernetes)."""

    def placements(self, color: str) -> list[NodePlacement]:
        """Each pod of ``color``, its node and the node's labels."""
        ...


def admission_gates(ready: Mapping[str, InstanceRead], docs: Mapping[str, InstanceRead],
                    blue: InstanceRead | None, caps: Sequence[CapabilityRequirements], *,
                    same_path_as_blue: bool, evidence: dict[str, Any],
                    matrix: MatrixSpec | None = None,
                    platform: object | None = None,
                    engine_manifest: str | None = None,
                    image: ImageSpec | None = None) -> dict[str, GateResult]:
    """Every admission gate's verdict from the reads of green's instances (``ready`` and
    ``docs``, by URL) and of blue's ``/capabilities`` (``None`` when nothing needs it); with
    a ``matrix``, its checks (:func:`matrix_gates`; ``platform`` for the node check); with an
    ``engine_manifest``, the ``engines`` gate (:func:`engines_gate`); with ``image``
    (``spec.image``), the ``image`` gate (:func:`image_gate`)."""
    gates: dict[str, GateResult] = {"green-ready": self_report(ready, docs, evidence)}
    evidence["release"] = release_evidence(docs, blue)
    if image is not None and (verdict := image_gate(image, docs, evidence)) is not None:
        gates[IMAGE_GATE] = verdict
    if same_path_as_blue and blue is not None:
        gates["execution-path"] = same_path(blue, docs, evidence)
    if matrix is not None:
        gates.update(matrix_gates(matrix, docs, platform, evidence))
    if engine_manifest is not None:
        gates["engines"] = engines_gate(Path(engine_manifest), docs, evidence)
    if not caps:
        return gates
    blue_snapshot = None
    if blue is not None and any(c.needs_blue() for c in caps):
        try:
            blue_snapshot = blue.snapshot()
        except SnapshotSourceError as e:
            for c in caps:
                gates[c.name] = GateResult(Verdict.ERROR, f"blue snapshot: {e}", 1)
            return gates
    for cap in caps:
        gates[cap.name] = capability_gate(cap, docs, blue_snapshot, evidence)
    return gates


@dataclass(frozen=True)
class InstanceRead:
    """One GET of an instance's endpoint: the status and JSON body (a ``/capabilities`` one
    as its typed document), or why it failed."""

    url: str = ""
    status: int = 0
    body: dict[str, Any] | None = None
    error: str | None = None
    doc: CapabilitiesDocument | None = None

    def snapshot(self) -> CapabilitySnapshot:
        """The capability snapshot in a ``/capabilities`` body.

        Raises:
            SnapshotSourceError: the read failed, or the body holds no valid snapshot.
        """
        if self.error is not None or self.doc is None:
            raise SnapshotSourceError(f"{self.url}: {self.error}")
        return self.doc.capability_snapshot(self.url)


def read_endpoint(client: httpx.Client, base: str, path: str, limits: LimitsSpec) -> InstanceRead:
    """``GET base+path`` within ``limits.exchangeSeconds`` and ``limits.capabilitiesMaxBytes``;
    any failure (a broken bound, a ``/capabilities`` body that is not the document) is the
    read's ``error``, with its reason."""
    url = base.rstrip("/") + path
    try:
        response = read_bounded(client, client.build_request("GET", url),
                                deadline_s=limits.exchange_seconds,
                                max_bytes=limits.capabilities_max_bytes)
    except BoundedReadError as e:  # says which bound (the URL prefixes every InstanceRead error)
        return InstanceRead(url, e.status_code or 0, error=str(e).removeprefix(f"{e.url}: "))
    except httpx.HTTPError as e:
        return InstanceRead(url, error=f"{type(e).__name__}: {e}")
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else None
    if path != CAPABILITIES_PATH:
        return InstanceRead(url, response.status_code, body)
    if response.status_code != 200 or body is None:
        return InstanceRead(url, response.status_code, error=f"HTTP {response.status_code}, "
                     f"{'not a JSON object' if body is None else 'an error'}")
    try:
        doc = CapabilitiesDocument.parse(body, url)
    except SnapshotSourceError as e:
        return InstanceRead(url, response.status_code, error=str(e).removeprefix(f"{url}: "))
    return InstanceRead(url, response.status_code, body, doc=doc)


def self_report(ready: Mapping[str, InstanceRead], docs: Mapping[str, InstanceRead],
                 evidence: dict[str, Any]) -> GateResult:
    """Every green instance is ready and does not report a degraded execution path."""
    problems: list[str] = []
    pipelines: dict[str, Any] = {}
    for url, read in docs.items():
        failed = ready[url] if ready[url].error else read
        if failed.error or read.doc is None or read.body is None:
            problems.append(f"{failed.url or url}: unreachable: {failed.error}")
            continue
        doc = read.doc
        pipelines[url] = read.body.get("pipeline")
        if ready[url].status != 200:
            problems.append(f"{url}: not ready (HTTP {ready[url].status})")
        if doc.degraded:
            found = "; ".join(f"[{v.get('check')}] {v.get('message')}"
                              for v in doc.violations) or "no reason given"
            problems.append(f"{url}: serving on a degraded path: {found}")
        if doc.fault_injection_active:
            evidence.setdefault("fault_injection", {})[url] = doc.fault_injection
    evidence["green_pipeline"] = pipelines
    if problems:
        return GateResult(Verdict.FAIL, " | ".join(problems))
    return GateResult(Verdict.PASS, f"{len(docs)} green instance(s) ready on a verified path")


def same_path(blue: InstanceRead, green: Mapping[str, InstanceRead],
               evidence: dict[str, Any]) -> GateResult:
    """Green runs the same kernels, precision and providers as blue, module by module
    (:meth:`~gates.capability.CapabilitiesDocument.execution_path`).

    Why: drift of CUDA/cuDNN/TensorRT or a changed flag silently moves SD onto generic
    kernels (math attention, fp32) that pass every health probe.
    """
    failed = [f"{r.url}: {r.error}" for r in (blue, *green.values()) if r.doc is None]
    if failed or blue.doc is None:
        return GateResult(Verdict.ERROR, f"cannot read /capabilities: {'; '.join(failed)}",
                          len(failed))
    evidence["blue_pipeline"] = (blue.body or {}).get("pipeline")
    ref = blue.doc.execution_path()
    paths = {url: r.doc.execution_path() for url, r in green.items() if r.doc is not None}
    if not ref:
        return GateResult(Verdict.NODATA, "blue's /capabilities reports no pipeline")
    diffs = [f"{url}: {k} {ref.get(k)!r} on blue, {v!r} on green"
             for url, facts in paths.items() for k, v in sorted(facts.items())
             if ref.get(k) != v]
    if diffs:
        return GateResult(Verdict.FAIL, "execution path differs from blue: " + "; ".join(diffs))
    return GateResult(Verdict.PASS, f"same execution path as blue ({len(ref)} facts)")


def _violations_gate(docs: Mapping[str, InstanceRead], evidence: dict[str, Any], key: str,
                     judge: Callable[[CapabilitySnapshot], Sequence[Violation]],
                     refused: tuple[type[Exception], ...], passed: str) -> GateResult:
    """Judge each green instance's snapshot; every violation named with its instance, the
    first unreadable snapshot or ``refused`` error an ``error`` verdict (never a pass)."""
    problems: list[str] = []
    for url, doc in docs.items():
        try:
            violations = judge(doc.snapshot())
        except SnapshotSourceError as e:  # names the endpoint already
            return GateResult(Verdict.ERROR, str(e), 1)
        except refused as e:
            return GateResult(Verdict.ERROR, f"{url}: {e}", 1)
        evidence.setdefault(key, {})[url] = [v.model_dump(mode="json") for v in violations]
        problems += [f"{url}: [{v.check}] {v.message}" for v in violations]
    if problems:
        return GateResult(Verdict.FAIL, "; ".join(problems))
    return GateResult(Verdict.PASS, passed)


def capability_gate(cap: CapabilityRequirements, docs: Mapping[str, InstanceRead],
                    blue: CapabilitySnapshot | None, evidence: dict[str, Any]) -> GateResult:
    """A capability gate on every green instance (``blue`` for ``same-as-blue`` pins)."""
    return _violations_gate(
        docs, evidence, "capability",
        lambda snap: check_capability(cap, snap, blue=blue).violations, (BaselineRequiredError,),
        f"{len(docs)} green instance(s) meet the requirements")


def engines_gate(manifest: Path, docs: Mapping[str, InstanceRead],
                 evidence: dict[str, Any]) -> GateResult:
    """``engines``: every TensorRT engine of the manifest present with its hash and built for
    each green instance's TensorRT and compute capability (else it would be rebuilt at load)."""
    from gates.engines import ManifestError, verify_manifest

    return _violations_gate(
        docs, evidence, "engines", lambda snap: verify_manifest(manifest, snap).violations,
        (ManifestError,), f"every engine of {manifest.name} matches {len(docs)} green "
        f"instance(s)")


def matrix_gates(matrix: MatrixSpec, docs: Mapping[str, InstanceRead], platform: object | None,
                 evidence: dict[str, Any]) -> dict[str, GateResult]:
    """``version-matrix``: each green instance's snapshot against the matrix; and, when
    ``platform`` is a :class:`PlacementSource`, ``version-matrix-nodes``: each green pod's node
    labels (a read that fails is an ``error`` verdict, never a pass)."""
    snapshots: dict[str, CapabilitySnapshot | str] = {}
    for url, read in docs.items():
        try:
            snapshots[url] = read.snapshot()
        except SnapshotSourceError as e:
            snapshots[url] = str(e).removeprefix(f"{read.url}: ")
    out = {MATRIX_GATE: judge_snapshots(matrix, snapshots)}
    evidence["version_matrix"] = {"matrix": matrix.model_dump(mode="json", by_alias=True,
                                                              exclude_none=True),
                                  **out[MATRIX_GATE].evidence}
    if isinstance(platform, PlacementSource):
        try:
            placements = platform.placements("green")
        except RolloutError as e:
            out[MATRIX_NODES_GATE] = GateResult(Verdict.ERROR, (
                f"cannot read green's pods and their nodes: {e} (the controller needs list on "
                "pods and get on nodes)"), 1)
        else:
            out[MATRIX_NODES_GATE] = judge_placements(matrix, placements)
            evidence["version_matrix_nodes"] = dict(out[MATRIX_NODES_GATE].evidence)
    return out


def _image(read: InstanceRead) -> dict[str, Any] | None:
    """The ``image`` block of an instance's snapshot (``None``: not declared, or unreadable)."""
    try:
        facts = read.snapshot().image
    except SnapshotSourceError:
        return None
    return None if facts is None else facts.model_dump(mode="json", exclude_none=True)


def release_evidence(docs: Mapping[str, InstanceRead],
                     blue: InstanceRead | None) -> dict[str, Any]:
    """Which release green is and blue was: each colour's declared image and, when green
    declares a digest, its first instance's snapshot and execution path (what a baseline of
    that digest keeps; without a digest there is nothing to key it by)."""
    green: dict[str, Any] = {}
    first = next(iter(docs.values()), None)
    if first is not None and (image := _image(first)) is not None:
        green["image"] = image
        if image.get("digest") and first.doc is not None:
            green["snapshot"] = first.doc.snapshot
            green["pipeline"] = (first.body or {}).get("pipeline")
    out: dict[str, Any] = {"green": green}
    if blue is not None and (image := _image(blue)) is not None:
        out["blue"] = {"image": image}
    return out


def image_gate(spec: ImageSpec, docs: Mapping[str, InstanceRead],
               evidence: dict[str, Any]) -> GateResult | None:
    """``image``: green's declared image digest, the same on every instance, audited against
    ``spec`` (the local ``archive``, whose manifest digest must be green's: a re-tagged or
    rebuilt image is refused) and, with ``requireSignature``, signed for ``identity`` (default:
    green's declared reference) by one of ``keys``, the signature found under ``signatures``.

    ``None`` (no gate) when green declares no image and no signature is required: there is
    nothing to bind an audit to; ``nodata`` when green declares one but ``spec`` has neither
    an archive nor ``requireSignature``. A policy file that cannot be used (archive unreadable,
    gpg missing) is an ``error`` verdict; neither is ever a pass.
    """
    from gates.image.audit import AuditSummary, audit
    from gates.image.reader import ImageError
    from gates.image.signing import SignatureError, image_manifest

    declared: dict[str, dict[str, Any] | None] = {}
    for url, read in docs.items():
        try:
            facts = read.snapshot().image
        except SnapshotSourceError as e:
            return GateResult(Verdict.ERROR, str(e), 1)
        declared[url] = None if facts is None else facts.model_dump(mode="json")
    bad = [f"{url}: {d['error']}" for url, d in declared.items() if d and d.get("error")]
    missing = [url for url, d in declared.items() if not d or not d.get("digest")]
    digests = {url: d["digest"] for url, d in declared.items() if d and d.get("digest")}
    if bad:
        return GateResult(Verdict.FAIL, "green declares a malformed image digest: "
                          + "; ".join(bad))
    if not digests and not spec.require_signature:
        evidence["image"] = {"skipped": "green declares no image (ROLLOUT_IMAGE_DIGEST)"}
        return None
    if missing:
        return GateResult(Verdict.FAIL, (
            f"{', '.join(missing)}: green does not declare the image it runs "
            "(ROLLOUT_IMAGE_DIGEST unset), so its image cannot be audited or its signature "
            "checked"))
    if len(set(digests.values())) > 1:
        return GateResult(Verdict.FAIL, "green's instances run different images: " + "; ".join(
            f"{url} {d}" for url, d in digests.items()))
    digest = next(iter(digests.values()))
    ref = next((d.get("ref") for d in declared.values() if d and d.get("ref")), None)
    record: dict[str, Any] = {"digest": digest, "ref": ref}
    evidence["image"] = record
    problems: list[str] = []
    manifest: bytes | None = None
    try:
        if spec.archive is not None:
            archive_digest, manifest = image_manifest(spec.archive)
            if archive_digest != digest:
                manifest = None
                problems.append(f"green runs {digest}, but spec.image.archive is "
                                f"{archive_digest} (re-tagged, or another build)")
            else:
                report = audit(spec.archive, spec)
                record["audit"] = AuditSummary.of(report).model_dump(mode="json")
                problems += [f"[{v.check}] {v.message}" for v in report.violations]
        if spec.require_signature:
            problems += _signature_problems(spec, digest, ref, manifest, record)
    except (ImageError, SignatureError) as e:
        return GateResult(Verdict.ERROR, f"spec.image cannot be checked: {e}", 1)
    if problems:
        return GateResult(Verdict.FAIL, f"image {digest}: " + "; ".join(problems))
    done = [f"audited ({spec.archive})" if "audit" in record else "",
            f"signed for {record['identity']}" if spec.require_signature else ""]
    if not any(done):  # declared, but nothing to check it with: never a pass
        return GateResult(Verdict.NODATA, (
            f"image {digest} declared, but spec.image has neither an archive to audit nor "
            "requireSignature: nothing to check it with"))
    return GateResult(Verdict.PASS, f"image {digest} " + " and ".join(d for d in done if d))


def _signature_problems(spec: ImageSpec, digest: str, ref: str | None, manifest: bytes | None,
                        record: dict[str, Any]) -> list[str]:
    """Why ``digest`` is not signed as ``spec.identity`` (default: green's ``ref``) by one of
    ``spec.keys`` under ``spec.signatures`` (with ``manifest``: skopeo checks it too); each
    signature's check goes to ``record``.

    Raises:
        gates.image.signing.SignatureError: gpg/skopeo missing, a key file unreadable.
    """
    from gates.image.signing import check_signatures, find_signatures

    identity = spec.identity or ref
    if identity is None or spec.signatures is None:
        return ["no identity to check the signature for: set spec.image.identity or "
                "ROLLOUT_IMAGE_REF on green"]
    record["identity"] = identity
    found = find_signatures(Path(spec.signatures), identity, digest)
    if not found:
        return [f"unsigned: no signature for {digest} as {identity} under {spec.signatures}"]
    checks = check_signatures(found, digest=digest, identity=identity,
                              keys=[Path(k) for k in spec.keys], manifest=manifest)
    record["signatures"] = [c.model_dump(mode="json") for c in checks]
    if checks[-1].ok:
        return []
    return ["signature refused: " + "; ".join(c.reason for c in checks)]
