"""The RolloutPolicy CRD: generated from the models, committed up to date, accepted by a strict
validator of the CRD object, structural by apiextensions' rules, and one language with the
policy loader: every shipped policy passes its schema, broken ones do not."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, Field

from rollout.k8s.crd import (
    CRD_NAME,
    OPEN_FIELDS,
    CrdSchemaError,
    crd,
    crd_yaml,
    openapi_schema,
    structural_problems,
)
from rollout.k8s.resource import ConditionStatus, RolloutPolicyStatus
from rollout.policy.loader import PolicyError, parse_policy

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "deploy" / "k8s" / "base" / "crd.yaml"
#: Oldest Kubernetes we support (kubernetes-validate ships its OpenAPI schemas offline).
KUBERNETES_VERSION = "1.31.0"
SHIPPED = sorted([*(ROOT / "policies" / "examples").glob("*.yaml"),
                  *(ROOT / "deploy" / "k8s").rglob("policy.yaml")])


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _draft4(node: Any) -> Any:
    """OpenAPI 3.0 -> JSON Schema draft 4 (what ``exclusiveMinimum: true`` means): only
    ``nullable`` differs; the x-kubernetes-* keys are unknown keywords jsonschema ignores."""
    if isinstance(node, list):
        return [_draft4(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft4(v) for k, v in node.items()}
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out["anyOf"] = [*out.get("anyOf", []), {"type": "null"}]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _unknown_fields(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Fields the API server would prune, i.e. refuse under strict field validation (what
    ``kubectl apply`` asks for): keys no ``properties`` of the schema names."""
    if isinstance(obj, list) and "items" in schema:
        return [u for i, item in enumerate(obj)
                for u in _unknown_fields(schema["items"], item, f"{path}[{i}]")]
    if (not isinstance(obj, dict) or path == ".metadata"
            or schema.get("x-kubernetes-preserve-unknown-fields")):
        return []
    if isinstance(schema.get("additionalProperties"), dict):
        return [u for k, v in obj.items()
                for u in _unknown_fields(schema["additionalProperties"], v, f"{path}.{k}")]
    props = schema.get("properties", {})
    return [u for k, v in obj.items()
            for u in ([f"{path}.{k}"] if k not in props
                      else _unknown_fields(props[k], v, f"{path}.{k}"))]


def _api_server_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(_draft4(_schema()))
    return ([f"unknown field {u}" for u in _unknown_fields(_schema(), doc)]
            + [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
               for e in validator.iter_errors(doc)])


def test_committed_crd_is_what_the_command_generates() -> None:
    result = subprocess.run([sys.executable, "-m", "rollout.cli", "policy", "crd"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == crd_yaml()
    assert COMMITTED.read_text(encoding="utf-8") == result.stdout, (
        "regenerate: rollout policy crd > deploy/k8s/base/crd.yaml")
    as_json = subprocess.run([sys.executable, "-m", "rollout.cli", "policy", "crd", "-o", "json"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert json.loads(as_json.stdout) == yaml.safe_load(result.stdout) == crd()


def test_crd_validates_strictly_as_a_kubernetes_object(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION,
         str(COMMITTED)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"passed for resource customresourcedefinition/{CRD_NAME}" in result.stdout
    # ...and is strict: a JSON Schema keyword CRDs do not have fails it.
    broken = crd()
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "const"] = 1
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION,
         str(path)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "const" in result.stdout + result.stderr


def test_crd_serves_status_printer_columns_and_names() -> None:
    version = crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"] if not c.get("priority")}
    assert list(columns) == ["Phase", "Step", "Green", "Verdict", "Age"]
    status = _schema()["properties"]["status"]["properties"]
    for c in columns.values():  # every column reads a field the status really has
        top, field = c["jsonPath"].split(".")[1:3]
        if top == "status":
            assert status[field]["type"] == c["type"], c
    names = crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "RolloutPolicy", "rolloutpolicies", ["rpol"])


def test_resource_constant_agrees_with_the_crd() -> None:
    from rollout.k8s.client import ROLLOUT_POLICIES

    spec = crd()["spec"]
    assert (ROLLOUT_POLICIES.group, ROLLOUT_POLICIES.version, ROLLOUT_POLICIES.plural,
            ROLLOUT_POLICIES.kind) == (spec["group"], spec["versions"][0]["name"],
                                       spec["names"]["plural"], spec["names"]["kind"])


def _open_paths(node: Any, path: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    found = [path] if node.get("x-kubernetes-preserve-unknown-fields") else []
    for name, sub in node.get("properties", {}).items():
        found += _open_paths(sub, f"{path}/{name}")
    return found + _open_paths(node.get("items"), f"{path}/items")


def test_generated_schema_is_structural_and_opens_only_what_it_must() -> None:
    schema = _schema()
    assert structural_problems(schema) == []
    assert _open_paths(schema) == [f"/spec{p}" for p in OPEN_FIELDS]
    for p in OPEN_FIELDS:  # the reason is where `kubectl explain` shows it
        node = schema["properties"]["spec"]
        for part in p.strip("/").split("/"):
            node = node["properties"][part]
        assert OPEN_FIELDS[p] in node["description"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize(("schema", "says"), [
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}, "/a: unsupported"),
    ({"type": "object", "properties": {"a": {"description": "no type"}}}, "/a: no type"),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "oneOf": [{"properties": {"b": {"enum": ["x"]}}}]}, "b: not specified outside"),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "anyOf": [{"properties": {"a": {"type": "string"}}}]}, "not allowed inside a junctor"),
    ({"type": "object", "properties": {"a": {"type": "object", "additionalProperties": False}}},
     "additionalProperties: false"),
    ({"type": "object", "properties": {"metadata": {
        "type": "object", "properties": {"labels": {"type": "object"}}}}},
     "only name and generateName"),
    ({"type": "array", "items": {"type": "string"}}, "root must be type: object"),
])
def test_structural_check_catches_what_the_api_server_refuses(
        schema: dict[str, Any], says: str) -> None:
    assert any(says in p for p in structural_problems(schema)), structural_problems(schema)


class _Cat(BaseModel):
    type: Literal["cat"] = "cat"
    lives: int = Field(9, ge=1, le=9)


class _Dog(BaseModel):
    type: Literal["dog"] = "dog"
    bark: str


class _Pets(BaseModel):
    pet: _Cat | _Dog = Field(discriminator="type")
    size: int | str | None = None
    ratio: float = Field(1.0, gt=0)
    counts: dict[Literal["a", "b"], int] = {}


def test_translation_of_each_pydantic_construct() -> None:
    out = openapi_schema(_Pets.model_json_schema())
    assert structural_problems(out) == []
    pet = out["properties"]["pet"]
    assert pet["required"] == ["type"] and pet["properties"]["type"]["enum"] == ["cat", "dog"]
    assert pet["oneOf"] == [
        {"properties": {"type": {"enum": ["cat"]}}, "not": {"anyOf": [{"required": ["bark"]}]}},
        {"properties": {"type": {"enum": ["dog"]}}, "required": ["bark"],
         "not": {"anyOf": [{"required": ["lives"]}]}}]
    assert out["properties"]["size"] == {"x-kubernetes-int-or-string": True, "nullable": True,
                                         "anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert out["properties"]["ratio"] == {"type": "number", "minimum": 0,
                                          "exclusiveMinimum": True}
    assert out["properties"]["counts"] == {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}}


class _Loose(BaseModel):
    anything: dict[str, Any]


class _Mixed(BaseModel):
    either: str | _Cat


@pytest.mark.parametrize(("model", "says"), [
    (_Loose, "/anything: a map of arbitrary values"),
    (_Mixed, "/either: a union of ['object', 'string']")])
def test_what_a_structural_schema_cannot_say_is_refused_not_opened(
        model: type[BaseModel], says: str) -> None:
    with pytest.raises(CrdSchemaError, match="^" + says.replace("[", r"\[")):
        openapi_schema(model.model_json_schema())


def test_a_union_is_opened_only_where_asked_and_says_why() -> None:
    out = openapi_schema(_Mixed.model_json_schema(), open_fields={"/either": "Loader checks."})
    assert out["properties"]["either"] == {"description": "Loader checks.",
                                           "x-kubernetes-preserve-unknown-fields": True}
    assert structural_problems(out) == []


def test_shipped_policies_exist() -> None:
    assert len(SHIPPED) >= 5, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_policy_is_a_valid_resource(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert _api_server_errors(doc) == []


def _overlay_policy() -> dict[str, Any]:
    path = ROOT / "deploy" / "k8s" / "overlays" / "gateway-api" / "policy.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    cur: Any = doc
    for p in parents:
        cur = cur[int(p)] if p.isdigit() else cur[p]
    if value is _DELETE:
        del cur[last]
    elif last.isdigit():
        cur[int(last)] = value
    else:
        cur[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(("dotted", "value", "says"), [
    ("spec.steps.1.weight", 150, "150 is greater than the maximum"),
    ("spec.targets.green.url", "http://x:1", "green"),          # a url-target field here
    ("spec.router.type", "nginx", "'nginx' is not one of"),
    ("spec.targets", _DELETE, "'targets' is a required property"),
    ("spec.gates.0.source", "nvml", "gates"),                    # utilization's, not latency's
    ("spec.gates.0.maxRatoi", 1.1, "unknown field .spec.gates[0].maxRatoi"),
    ("metadata.name", "Bad_Name", "does not match"),
    ("spec.steps", [], "should be non-empty"),
])
def test_a_broken_policy_is_refused_by_both_readers(dotted: str, value: Any, says: str) -> None:
    """The API server's schema refuses it (kubectl apply fails with the field), and so does
    the loader the controller reads it with: the CRD never admits what cannot run."""
    doc = _set(_overlay_policy(), dotted, value)
    errors = _api_server_errors(doc)
    assert any(says in e for e in errors), errors
    with pytest.raises(PolicyError):
        parse_policy(yaml.safe_dump(doc), "broken.yaml")


def test_status_the_controller_writes_fits_the_schema() -> None:
    status = RolloutPolicyStatus(
        observed_generation=3, phase="Analyzing", step=1, steps=3, blue_weight=90,
        green_weight=10, conditions=[ConditionStatus(
            type="Reconciling", status="True", reason="Analyzing",
            last_transition_time="2026-01-01T00:00:00Z", observed_generation=3)],
    ).model_dump(by_alias=True)
    doc = {**_overlay_policy(), "status": status}
    assert _api_server_errors(doc) == []
    assert _api_server_errors(_set(doc, "status.greenWeight", 101))
    assert _api_server_errors(_set(doc, "status.blueWeight", None)) == []  # not read back yet
