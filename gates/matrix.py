"""The version matrix document: what green must run on, checked on snapshots and node labels.

One document pins driver, CUDA, GPU, cuDNN, TensorRT, ORT and torch (``kind: VersionMatrix``, or
a policy's ``spec.matrix``). Admission compares each green snapshot with it
(:func:`compare_snapshot`), nodes are matched by their GPU Feature Discovery labels
(:func:`match_node`), and the same requirements render as green's nodeAffinity
(:func:`render_affinity_patch`): what is scheduled and what is admitted cannot disagree.
Not :class:`gates.capability.fingerprint.VersionMatrix` (what a snapshot *reports*);
:class:`MatrixSpec` is what a policy *pins*.

Pins are prefixes: ``"9.19"`` pins 9.19, 9.19.1, 9.19.1+cu13, never 9.190 (numeric parts compare
as numbers). Node labels are exact: each given part of a pin is one label equality
(``cuda.driver.major/minor/rev``, ``cuda.runtime.major/minor``, ``gpu.compute.major/minor``);
cuDNN, TensorRT, ORT and torch live in the image: checked on snapshots only. ``gpu.mig:
forbid`` (default) refuses nodes with a MIG strategy and GPUs in MIG mode (a slice is not the
GPU the matrix was measured on); ``allow`` lists accepted MIG products in ``gpu.products``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gates.capability.snapshot import CapabilitySnapshot
from gates.gate import GateResult
from gates.verdict import Verdict

__all__ = [
    "MATRIX_API_VERSION", "MATRIX_GATE", "MATRIX_NODES_GATE", "DriverPin", "GpuPin",
    "LabelMismatch", "LabelRequirement", "MatrixInputError", "MatrixMetadata", "MatrixSpec",
    "MatrixViolation", "NodeMatch", "NodePlacement", "OrtPin", "VersionMatrixDocument",
    "compare_snapshot", "judge_placements", "judge_snapshots", "label_requirements", "match_node",
    "nodes_from_json", "render_affinity_patch", "version_matches",
]

MATRIX_API_VERSION = "rollout-gates.dev/v1alpha1"
#: Admission verdict names: green's snapshots, and (Kubernetes) the nodes of green's pods.
MATRIX_GATE = "version-matrix"
MATRIX_NODES_GATE = "version-matrix-nodes"
GFD = "nvidia.com/"


def _quoted(value: Any) -> Any:
    """An unquoted ``13.0`` is a YAML number (``9.10`` would read as 9.1): refuse it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"write the version quoted, \"{value}\": unquoted it is a number "
                         "(9.10 would read as 9.1)")
    return value


_Q = BeforeValidator(_quoted)
#: A version prefix: 1 to 4 dot-separated numbers, quoted in YAML ("9.10" is not 9.1).
VersionPin = Annotated[str, _Q, StringConstraints(strip_whitespace=True,
                                                  pattern=r"^[0-9]+(\.[0-9]+){0,3}$")]
_Branch = Annotated[str, _Q, StringConstraints(strip_whitespace=True, pattern=r"^[0-9]+$")]
_Capability = Annotated[str, _Q, StringConstraints(strip_whitespace=True,
                                                   pattern=r"^[0-9]+(\.[0-9]+)?$")]


class MatrixInputError(ValueError):
    """Nodes (or another input) that are not what the matrix commands read."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True)


class DriverPin(_Model):
    """The NVIDIA driver: its branch (major), or a version prefix (``580.159.04``)."""

    branch: _Branch | None = None
    version: VersionPin | None = Field(None, description="prefix of the full driver version")

    @model_validator(mode="after")
    def _consistent(self) -> DriverPin:
        if self.branch is None and self.version is None:
            raise ValueError("give branch (e.g. \"580\") or version (e.g. \"580.159.04\")")
        if self.branch and self.version and self.version.split(".")[0] != self.branch:
            raise ValueError(f"version {self.version} is not on branch {self.branch}")
        return self


class GpuPin(_Model):
    """The GPU: GFD ``gpu.product`` values (NVML's name, spaces as '-'), compute capability."""

    products: tuple[Annotated[str, StringConstraints(
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")], ...] = Field(
        (), description="accepted nvidia.com/gpu.product values, e.g. NVIDIA-H100-80GB-HBM3")
    compute_capability: _Capability | None = Field(
        None, description="e.g. \"9.0\" (major, or major.minor)")
    mig: Literal["forbid", "allow"] = Field("forbid", description=(
        "forbid: whole GPUs only (no node with MIG strategy single/mixed, no GPU in MIG mode); "
        "allow: list the MIG product values accepted in products"))


class OrtPin(_Model):
    """ONNX Runtime: a version prefix, and optionally a string its build info must contain."""

    version: VersionPin | None = None
    build: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None, description="text the ORT build info must contain (e.g. its git hash)")


class MatrixSpec(_Model):
    """What green must run on. Every pin is optional; versions are prefixes (module doc)."""

    file: str | None = Field(None, description=(
        "A VersionMatrix file, relative to the policy file, instead of inline pins; the loader "
        "reads it and keeps its absolute path here with its pins inline."))
    driver: DriverPin | None = None
    cuda: VersionPin | None = Field(None, description="CUDA version the driver provides")
    gpu: GpuPin | None = None
    cudnn: VersionPin | None = None
    tensorrt: VersionPin | None = None
    onnxruntime: OrtPin | None = None
    torch: VersionPin | None = None

    @field_validator("onnxruntime", mode="before")
    @classmethod
    def _ort_shorthand(cls, v: Any) -> Any:
        return {"version": v} if isinstance(v, str) else _quoted(v)


class MatrixMetadata(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class VersionMatrixDocument(_Model):
    """A ``kind: VersionMatrix`` file (read by :mod:`rollout.policy.loader`)."""

    api_version: Literal["rollout-gates.dev/v1alpha1"]
    kind: Literal["VersionMatrix"]
    metadata: MatrixMetadata
    spec: MatrixSpec

    @field_validator("spec")
    @classmethod
    def _no_file(cls, v: MatrixSpec) -> MatrixSpec:
        if v.file is not None:
            raise ValueError("file: only a policy's spec.matrix references a matrix file")
        return v


def version_matches(pin: str, observed: str | None) -> bool:
    """Whether ``observed`` starts with the dot-separated parts of ``pin`` (module doc)."""
    if not observed:
        return False
    want = pin.split(".")
    got = re.split(r"[.+-]", observed.strip())[:len(want)]
    if len(got) < len(want):
        return False
    return all(int(w) == int(g) if w.isdigit() and g.isdigit() else w == g
               for w, g in zip(want, got, strict=True))


@dataclass(frozen=True)
class MatrixViolation:
    """One tooth out of place: the matrix field, what it pins, what the snapshot says."""

    field: str
    pinned: str
    observed: str | None

    def __str__(self) -> str:
        return f"{self.field}: pinned {self.pinned}, observed {self.observed or 'nothing'}"


def _product(name: str) -> str:
    return "-".join(name.split())


def compare_snapshot(matrix: MatrixSpec, snapshot: CapabilitySnapshot) -> list[MatrixViolation]:
    """Every pin of ``matrix`` that ``snapshot`` does not meet (empty: it matches)."""
    host, v = snapshot.host, snapshot.versions
    out: list[MatrixViolation] = []

    def pin(field: str, pinned: str | None, observed: str | None) -> None:
        if pinned is not None and not version_matches(pinned, observed):
            out.append(MatrixViolation(field, pinned, observed))

    if matrix.driver is not None:
        pin("driver.branch", matrix.driver.branch, v.driver_branch)
        pin("driver.version", matrix.driver.version, host.driver_version if host else None)
    pin("cuda", matrix.cuda, host.cuda_driver_version if host else None)
    pin("cudnn", matrix.cudnn, v.cudnn)
    pin("tensorrt", matrix.tensorrt, v.tensorrt)
    pin("torch", matrix.torch, v.torch)
    if matrix.onnxruntime is not None:
        pin("onnxruntime.version", matrix.onnxruntime.version, v.onnxruntime)
        build = snapshot.provider_probe.build_info if snapshot.provider_probe else None
        if matrix.onnxruntime.build and matrix.onnxruntime.build not in (build or ""):
            out.append(MatrixViolation("onnxruntime.build", matrix.onnxruntime.build, build))
    if matrix.gpu is not None:
        out += _gpu_violations(matrix.gpu, snapshot)
    return out


def _gpu_violations(gpu: GpuPin, snapshot: CapabilitySnapshot) -> list[MatrixViolation]:
    devices = snapshot.host.gpus if snapshot.host else ()
    if not devices:
        return [MatrixViolation("gpu", "a GPU", "no GPU")]
    out: list[MatrixViolation] = []
    bases = {p.split("-MIG-")[0] for p in gpu.products}
    for d in devices:
        if gpu.products and _product(d.name) not in bases:
            out.append(MatrixViolation("gpu.products", ", ".join(gpu.products),
                                       f"GPU {d.index}: {_product(d.name)}"))
        if gpu.compute_capability and not version_matches(gpu.compute_capability,
                                                          d.compute_capability):
            out.append(MatrixViolation("gpu.computeCapability", gpu.compute_capability,
                                       f"GPU {d.index}: {d.compute_capability}"))
        if gpu.mig == "forbid" and d.mig_mode:
            out.append(MatrixViolation("gpu.mig", "forbid", f"GPU {d.index}: MIG mode on"))
    return out


@dataclass(frozen=True)
class LabelRequirement:
    """One node-label requirement: ``In`` (one of ``values``), ``NotIn``, or ``Exists``."""

    label: str
    operator: Literal["In", "NotIn", "Exists"]
    values: tuple[str, ...] = ()

    @property
    def expected(self) -> str:
        if self.operator == "Exists":
            return "a positive GPU count" if self.label == GFD + "gpu.count" else "present"
        if self.operator == "NotIn":
            return "unset or not " + "/".join(self.values)
        return " or ".join(self.values)

    def met_by(self, value: str | None) -> bool:
        if self.operator == "NotIn":
            return value not in self.values
        if self.operator == "Exists" and self.label == GFD + "gpu.count":
            return value is not None and value.isdigit() and int(value) > 0
        if self.operator == "Exists":
            return value is not None
        return value in self.values


def label_requirements(matrix: MatrixSpec) -> list[LabelRequirement]:
    """The GFD labels a node must carry to run green (always: a GPU count)."""
    reqs = [LabelRequirement(GFD + "gpu.count", "Exists")]

    def parts(prefix: str, version: str | None, names: Sequence[str]) -> None:
        for name, part in zip(names, (version or "").split(".") if version else (),
                              strict=False):
            reqs.append(LabelRequirement(f"{GFD}{prefix}.{name}", "In", (part,)))

    driver = matrix.driver
    if driver is not None:
        parts("cuda.driver", driver.version or driver.branch, ("major", "minor", "rev"))
    parts("cuda.runtime", matrix.cuda, ("major", "minor"))
    gpu = matrix.gpu
    if gpu is not None:
        if gpu.products:
            reqs.append(LabelRequirement(GFD + "gpu.product", "In", gpu.products))
        parts("gpu.compute", gpu.compute_capability, ("major", "minor"))
    if gpu is None or gpu.mig == "forbid":
        reqs.append(LabelRequirement(GFD + "mig.strategy", "NotIn", ("single", "mixed")))
    return reqs


@dataclass(frozen=True)
class LabelMismatch:
    label: str
    expected: str
    observed: str | None


@dataclass(frozen=True)
class NodeMatch:
    """Whether a node can run green, and every label out of place."""

    name: str
    mismatches: tuple[LabelMismatch, ...]

    @property
    def matches(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "matches": self.matches, "mismatches": [
            {"label": m.label, "expected": m.expected, "observed": m.observed}
            for m in self.mismatches]}


def match_node(matrix: MatrixSpec, name: str, labels: Mapping[str, str]) -> NodeMatch:
    """``name``'s labels against the matrix; a node without GPU labels never matches."""
    return NodeMatch(name, tuple(
        LabelMismatch(r.label, r.expected, labels.get(r.label))
        for r in label_requirements(matrix) if not r.met_by(labels.get(r.label))))


def nodes_from_json(doc: Any) -> list[tuple[str, dict[str, str]]]:
    """(name, labels) of each node of ``kubectl get nodes -o json`` output (a List or NodeList
    with ``items``) or of one Node; MatrixInputError if it is not that."""
    if isinstance(doc, dict) and doc.get("kind") == "Node":
        doc = {"items": [doc]}
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise MatrixInputError("expected `kubectl get nodes -o json` output: an object with "
                               "\"items\" (a List or NodeList), or one Node")
    out = []
    for i, item in enumerate(items):
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or (
                item.get("kind", "Node") != "Node"):
            raise MatrixInputError(f"items[{i}] is not a Node with metadata.name")
        labels = meta.get("labels") or {}
        if not isinstance(labels, dict):
            raise MatrixInputError(f"items[{i}] ({meta['name']}): metadata.labels is not a map")
        out.append((meta["name"], {str(k): str(v) for k, v in labels.items()}))
    return out


@dataclass(frozen=True)
class NodePlacement:
    """A pod of green, the node it is scheduled on, and that node's labels."""

    pod: str
    node: str | None
    labels: Mapping[str, str]


def render_affinity_patch(matrix: MatrixSpec, *, deployment: str = "sd-green",
                          namespace: str | None = None) -> dict[str, Any]:
    """A strategic-merge patch (kustomize ``patches:``) requiring the matrix's node labels."""
    expressions = [{"key": r.label, "operator": r.operator,
                    **({"values": list(r.values)} if r.values else {})}
                   for r in label_requirements(matrix)]
    meta: dict[str, str] = {"name": deployment}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": expressions}]}}}}}}}


def judge_snapshots(matrix: MatrixSpec,
                    snapshots: Mapping[str, CapabilitySnapshot | str]) -> GateResult:
    """:data:`MATRIX_GATE`: every green instance's snapshot (by URL; a string is why it could
    not be read: an ``error`` verdict) against the matrix."""
    unread = [f"{url}: {s}" for url, s in snapshots.items() if isinstance(s, str)]
    if unread:
        return GateResult(Verdict.ERROR, "cannot read a snapshot: " + "; ".join(unread),
                          len(unread))
    found = {url: compare_snapshot(matrix, s) for url, s in snapshots.items()
             if not isinstance(s, str)}
    evidence = {"violations": {url: [{**vars(v)} for v in vs] for url, vs in found.items() if vs}}
    wrong = [f"{url}: {v}" for url, vs in found.items() for v in vs]
    if wrong:
        return GateResult(Verdict.FAIL, "off the version matrix: " + "; ".join(wrong),
                          evidence=evidence)
    if not found:
        return GateResult(Verdict.NODATA, "no green snapshot to compare with the matrix")
    return GateResult(Verdict.PASS, f"{len(found)} green instance(s) on the version matrix",
                      evidence=evidence)


def judge_placements(matrix: MatrixSpec, placements: Sequence[NodePlacement]) -> GateResult:
    """:data:`MATRIX_NODES_GATE`: every green pod on a node whose GFD labels match (naming
    each pod, its node and the labels out of place)."""
    if not placements:
        return GateResult(Verdict.ERROR, "no green pod found to check its node", 1)
    wrong = []
    for p in placements:
        m = match_node(matrix, p.node or "", p.labels)
        if p.node is None:
            wrong.append(f"pod {p.pod}: not scheduled on any node")
        elif m.mismatches:
            wrong.append(f"pod {p.pod} on node {p.node}: " + ", ".join(
                f"{x.label}={x.observed or '<unset>'} (expected {x.expected})"
                for x in m.mismatches))
    evidence = {"pods": [{"pod": p.pod, "node": p.node} for p in placements]}
    if wrong:
        return GateResult(Verdict.FAIL, "green pod(s) on nodes off the version matrix: "
                          + "; ".join(wrong), evidence=evidence)
    return GateResult(Verdict.PASS, f"{len(placements)} green pod(s) on matching nodes",
                      evidence=evidence)
