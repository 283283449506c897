"""The snapshot document: schema committed and current, derived fields checked on input."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from gates.capability.collect import collect_local
from gates.capability.fingerprint import VersionMatrix, cuda_minor, driver_branch, fingerprint_of
from gates.capability.libraries import (
    decode_cublas,
    decode_cudart,
    decode_cudnn,
    decode_tensorrt,
)
from gates.capability.snapshot import (
    CapabilitySnapshot,
    effective_providers,
    snapshot_json_schema,
)
from gates.capability.torch_probe import decode_torch_cudnn

SCHEMA = Path(__file__).resolve().parents[2] / "policies" / "capability-snapshot.schema.json"


@pytest.fixture(scope="module")
def local() -> CapabilitySnapshot:
    return collect_local(deadline_s=30)


def test_committed_schema_is_current() -> None:
    committed = json.loads(SCHEMA.read_text())
    assert committed == snapshot_json_schema(), (
        "regenerate: rollout snapshot schema > policies/capability-snapshot.schema.json"
    )


def test_local_snapshot_validates_against_committed_schema(local: CapabilitySnapshot) -> None:
    doc = json.loads(local.model_dump_json())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)
    broken = {**doc, "surprise": 1}
    with pytest.raises(jsonschema.ValidationError, match="surprise"):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_round_trip_and_tampered_fingerprint(local: CapabilitySnapshot) -> None:
    text = local.model_dump_json()
    again = CapabilitySnapshot.model_validate_json(text)
    assert again == local and again.fingerprint == local.fingerprint
    doc = json.loads(text)
    doc["fingerprint"] = "0" * 16
    with pytest.raises(ValidationError, match="fingerprint: the document says"):
        CapabilitySnapshot.model_validate(doc)
    doc = json.loads(text)
    doc["provider_probe"]["cpu_fallback"] = not doc["provider_probe"]["cpu_fallback"]
    with pytest.raises(ValidationError, match="cpu_fallback"):
        CapabilitySnapshot.model_validate(doc)


def test_other_schema_versions_are_rejected(local: CapabilitySnapshot) -> None:
    doc = json.loads(local.model_dump_json())
    doc["schema_version"] = 2
    with pytest.raises(ValidationError, match="schema_version"):
        CapabilitySnapshot.model_validate(doc)


def test_fingerprint_follows_the_matrix() -> None:
    base = VersionMatrix(driver_branch="580", cuda_runtime="13.0", bound_providers=("A", "B"))
    assert fingerprint_of(base) == fingerprint_of(VersionMatrix(**base.model_dump()))
    for change in (
        {"driver_branch": "575"},
        {"cuda_runtime": "12.8"},
        {"bound_providers": ("B", "A")},
        {"tensorrt": "10.8.0"},
    ):
        assert fingerprint_of(base.model_copy(update=change)) != fingerprint_of(base), change
    assert len(fingerprint_of(base)) == 16


def test_version_normalisation() -> None:
    assert driver_branch("580.159.04") == "580" and driver_branch(None) is None
    assert cuda_minor("12.4.131") == "12.4" and cuda_minor("13.0") == "13.0"


@pytest.mark.parametrize(
    ("decode", "raw", "version"),
    [
        # Encodings as documented in each library's version header.
        (decode_cudart, 12040, "12.4"),  # CUDART_VERSION = 1000*major + 10*minor
        (decode_cudart, 13000, "13.0"),
        (decode_cudnn, 90100, "9.1.0"),  # cuDNN 9: CUDNN_VERSION = 10000*major + 100*minor
        (decode_cudnn, 91900, "9.19.0"),
        (decode_cudnn, 8902, "8.9.2"),  # cuDNN 8: 1000*major + 100*minor + patch
        (decode_torch_cudnn, 91002, "9.10.2"),
        (decode_cublas, 120402, "12.4.2"),  # CUBLAS_VERSION = 10000*major + 100*minor
        (decode_tensorrt, 100300, "10.3.0"),  # TensorRT 10: 10000*major + 100*minor
        (decode_tensorrt, 8601, "8.6.1"),  # TensorRT 8: 1000*major + 100*minor + patch
    ],
)
def test_library_version_decoding(decode: object, raw: int, version: str) -> None:
    assert decode(raw) == version  # type: ignore[operator]


def test_effective_providers() -> None:
    cpu, cuda, trt = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
    assert effective_providers((trt, cuda, cpu)) == (trt, cuda)
    assert effective_providers((cpu,)) == (cpu,)
    assert effective_providers(()) == ()
