"""The ``RolloutPolicy`` CustomResourceDefinition, generated from the pydantic models.

Why generated: the resource *is* the policy document, so the models that validate a policy file
(:class:`rollout.policy.models.RolloutPolicy`) and the status the controller writes
(:class:`rollout.k8s.resource.RolloutPolicyStatus`) are the single source; a hand-written CRD
would drift from them the first time a field is added. ``rollout policy crd`` prints the
result, committed as ``deploy/k8s/base/crd.yaml`` (a test keeps it up to date).

Kubernetes accepts only *structural* OpenAPI v3 schemas (apiextensions.k8s.io/v1), a subset of
the JSON Schema pydantic emits. The translation, node by node:

* ``$ref`` is inlined (the API server resolves no references); ``title``, ``$defs``,
  ``discriminator`` and ``default`` are dropped. Defaults are dropped on purpose: the API
  server would write them into every stored object (so ``kubectl get -o yaml`` and a GitOps
  diff would show fields nobody wrote, frozen at the value of the release that stored them),
  while the policy loader applies the same defaults whenever it reads the spec;
* ``X | None`` becomes ``X`` with ``nullable: true``; ``const`` becomes a one-value ``enum``;
  a numeric ``exclusiveMinimum``/``exclusiveMaximum`` (JSON Schema 2020-12) becomes OpenAPI
  3.0's ``minimum`` plus ``exclusiveMinimum: true``;
* ``int | str`` becomes ``x-kubernetes-int-or-string`` (the one scalar union Kubernetes has);
  the string's ``pattern`` and the integer's bounds stay on the node, where each applies to its
  own type only;
* a map whose keys are an enum (``propertyNames: {enum}``) becomes an object with one optional
  property per key: the same language, said structurally;
* a discriminated union of objects (targets, routers, gates: ``oneOf`` keyed by ``type``)
  becomes one object carrying every variant's properties, ``type`` required and limited to the
  variants' tags, and a ``oneOf`` whose branches say, per tag, which fields are required, which
  belong to the other variants and are refused, and any value validation a variant narrows
  (``source`` is ``canary|prometheus`` for latency, ``nvml|prometheus`` for utilization);
* ``additionalProperties: false`` is dropped: a structural schema *prunes* unknown fields, and
  ``kubectl apply`` (server-side field validation, Strict by default) refuses them with the
  field's name, which is what ``extra="forbid"`` does for a file.

One node is marked ``x-kubernetes-preserve-unknown-fields`` (:data:`OPEN_FIELDS`, with the
reason in its description): ``spec.canary.prompts`` is a string (a shipped set's name, a file)
*or* an object (the set inline, or a ``configMapRef``), and a structural schema has no "string
or object" (int-or-string is the only mixed type). The API server keeps that value as written;
the policy loader validates it, in ``rollout promote --policy`` before anything is applied and
in the controller. Any other construct that cannot be said structurally makes
:func:`openapi_schema` raise :class:`CrdSchemaError` rather than silently opening a hole.
:func:`structural_problems` re-checks the result against apiextensions' rules, so a model
change that breaks them fails at generation, not at ``kubectl apply``.

This module is pure (no ``kubernetes`` import): the CLI, the tests and the docs build it offline.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from rollout.errors import PermanentError

__all__ = [
    "CRD_NAME",
    "GROUP",
    "KIND",
    "OPEN_FIELDS",
    "PLURAL",
    "SHORT_NAMES",
    "VERSION",
    "CrdSchemaError",
    "crd",
    "crd_yaml",
    "openapi_schema",
    "structural_problems",
]

GROUP = "rollout-gates.dev"
VERSION = "v1alpha1"
KIND = "RolloutPolicy"
PLURAL = "rolloutpolicies"
SINGULAR = "rolloutpolicy"
SHORT_NAMES = ("rpol",)
CRD_NAME = f"{PLURAL}.{GROUP}"

Schema = dict[str, Any]

#: JSON Schema keywords copied as they are (apiextensions.k8s.io/v1 ``JSONSchemaProps``).
_VALUE_KEYWORDS = frozenset({
    "pattern", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "multipleOf", "required", "format"})
#: Numeric bounds pydantic emits -> (OpenAPI 3.0 bound, its exclusive flag). ``ge``/``gt``...
#: appear where pydantic could not turn a constraint into JSON Schema (an Annotated int
#: behind a BeforeValidator); they mean what they say.
_BOUNDS: dict[str, tuple[str, str | None]] = {
    "exclusiveMinimum": ("minimum", "exclusiveMinimum"),
    "exclusiveMaximum": ("maximum", "exclusiveMaximum"),
    "gt": ("minimum", "exclusiveMinimum"), "ge": ("minimum", None),
    "lt": ("maximum", "exclusiveMaximum"), "le": ("maximum", None)}
#: Keywords with no structural meaning: documentation of the JSON Schema only.
_DROPPED = frozenset({"title", "default", "$schema", "$id", "$defs", "discriminator",
                      "examples"})
#: Formats the API server knows (k8s.io/kube-openapi/pkg/validation/strfmt); others are dropped.
_FORMATS = frozenset({"uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid",
                      "byte", "password", "date", "date-time", "datetime", "duration"})
#: Not allowed inside allOf/anyOf/oneOf/not (apiextensions' structural rules).
_NOT_IN_JUNCTORS = frozenset({"type", "description", "default", "nullable",
                              "additionalProperties", "x-kubernetes-preserve-unknown-fields",
                              "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource",
                              "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                              "x-kubernetes-map-type", "x-kubernetes-validations"})
_JUNCTORS = ("allOf", "anyOf", "oneOf")
#: Every key a node of the generated schema may carry.
_ALLOWED = (_VALUE_KEYWORDS | _NOT_IN_JUNCTORS
            | {"properties", "items", "allOf", "anyOf", "oneOf", "not"})


#: Nodes (JSON paths under ``spec``) whose value is kept as written, and why the API server
#: cannot check them. Everything else must be said structurally.
OPEN_FIELDS: Mapping[str, str] = {
    "/canary/prompts": (
        "Not checked by the API server (x-kubernetes-preserve-unknown-fields): a structural "
        "schema cannot say 'a string or an object'. The policy loader checks it, in `rollout "
        "promote --policy` and `rollout policy validate` before anything is applied, and in "
        "the controller."),
}


class CrdSchemaError(PermanentError):
    """A model uses a construct a structural schema cannot say; regenerating cannot help."""


def openapi_schema(json_schema: Mapping[str, Any], *,
                   open_fields: Mapping[str, str] | None = None) -> Schema:
    """The structural OpenAPI v3 schema of one pydantic JSON Schema (with its ``$defs``).

    ``open_fields`` maps the JSON paths of union nodes no structural schema can say to the
    reason; they are kept as written (``x-kubernetes-preserve-unknown-fields``).

    Raises:
        CrdSchemaError: a construct with no structural equivalent (named by its JSON path).
    """
    return _Converter(json_schema.get("$defs", {}), open_fields or {}).convert(json_schema, "")


class _Converter:
    """One walk over a pydantic schema; ``defs`` are the ``$defs`` its ``$ref`` name."""

    def __init__(self, defs: Mapping[str, Any], open_fields: Mapping[str, str]) -> None:
        self._defs = defs
        self._open = open_fields
        self._expanding: list[str] = []

    def convert(self, node: Mapping[str, Any], path: str) -> Schema:
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            if name in self._expanding:  # inlining would never end
                raise CrdSchemaError(f"{path or '/'}: recursive model {name} cannot be inlined")
            self._expanding.append(name)
            try:
                siblings = {k: v for k, v in node.items() if k != "$ref"}
                return self.convert({**self._defs[name], **siblings}, path)
            finally:
                self._expanding.pop()
        for junctor in ("anyOf", "oneOf"):
            if junctor in node:
                return self._union(node, junctor, path)
        return self._plain(node, path)

    def _plain(self, node: Mapping[str, Any], path: str) -> Schema:
        out: Schema = {}
        for key, value in node.items():
            if key in _DROPPED:
                continue
            if key == "type":
                if not isinstance(value, str):
                    raise CrdSchemaError(f"{path}: a list of types {value} is not structural")
                out["type"] = value
            elif key == "description":
                out["description"] = value
            elif key == "const":
                out["enum"] = [value]
            elif key in _BOUNDS and not isinstance(value, bool):
                bound, exclusive = _BOUNDS[key]
                out[bound] = value
                if exclusive:
                    out[exclusive] = True
            elif key == "format":
                if value in _FORMATS:
                    out["format"] = value
            elif key in _VALUE_KEYWORDS:
                out[key] = copy.deepcopy(value)
            elif key == "properties":
                out["properties"] = {name: self.convert(sub, f"{path}/{name}")
                                     for name, sub in value.items()}
            elif key == "items":
                out["items"] = self.convert(value, f"{path}/items")
            elif key in ("additionalProperties", "propertyNames"):
                continue  # handled below, together
            else:
                raise CrdSchemaError(f"{path or '/'}: JSON Schema keyword {key!r} has no "
                                     "structural equivalent")
        self._map(node, out, path)
        return out

    def _map(self, node: Mapping[str, Any], out: Schema, path: str) -> None:
        """``additionalProperties`` (a map's values) and ``propertyNames`` (its keys)."""
        values = node.get("additionalProperties")
        keys = node.get("propertyNames")
        if values is True:  # dict[str, Any]: nothing structural could say more
            raise CrdSchemaError(f"{path}: a map of arbitrary values is not structural; "
                                 "give its values a type")
        if not isinstance(values, Mapping):
            if keys is not None:
                raise CrdSchemaError(f"{path}: propertyNames without a value schema")
            return  # False or absent: pruning and strict field validation refuse extras
        value_schema = self.convert(values, f"{path}/*")
        if keys is None:
            out["additionalProperties"] = value_schema
        elif set(keys) <= {"enum", "type", "title", "description"} and "enum" in keys:
            out["properties"] = {str(k): copy.deepcopy(value_schema) for k in keys["enum"]}
        else:
            raise CrdSchemaError(f"{path}: map keys limited by {sorted(keys)} cannot be said "
                                 "structurally (only an enum of keys can)")

    def _union(self, node: Mapping[str, Any], junctor: str, path: str) -> Schema:
        siblings = {k: v for k, v in node.items() if k != junctor and k not in _DROPPED}
        branches = [b for b in node[junctor] if b != {"type": "null"}]
        nullable = len(branches) < len(node[junctor])
        if len(branches) == 1:
            out = self.convert({**branches[0], **siblings}, path)
        else:
            variants = [self.convert(b, f"{path}/{junctor}[{i}]")
                        for i, b in enumerate(branches)]
            types = {v.get("type") for v in variants}
            tag = node.get("discriminator", {}).get("propertyName")
            if types == {"object"} and tag:
                out = _merge_variants(variants, tag, path)
            elif types == {"integer", "string"}:
                out = _int_or_string(variants, path)
            elif types == {"integer", "number"}:
                out = {"type": "number"}
            elif path in self._open:
                description = siblings.get("description", "")
                return {"description": f"{description} {self._open[path]}".strip(),
                        "x-kubernetes-preserve-unknown-fields": True}
            else:
                raise CrdSchemaError(f"{path}: a union of {sorted(map(str, types))} is not "
                                     "structural (only int-or-string and tagged objects are)")
            if "description" in siblings:
                out["description"] = siblings["description"]
        if nullable:
            out["nullable"] = True
        return out


#: The one junctor allowed to carry types: how Kubernetes spells int-or-string (controller-gen's
#: form for IntOrString); value validations stay on the node, each applying to its own type.
_INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


def _int_or_string(variants: list[Schema], path: str) -> Schema:
    out: Schema = {"x-kubernetes-int-or-string": True,
                   "anyOf": copy.deepcopy(_INT_OR_STRING_ANY_OF)}
    for v in variants:
        for key, value in v.items():
            if key in ("type", "description"):
                continue
            if key in out and out[key] != value:
                raise CrdSchemaError(f"{path}: both arms of int-or-string set {key}")
            out[key] = value
    return out


def _merge_variants(variants: list[Schema], tag: str, path: str) -> Schema:
    """One object for a tagged union; the ``oneOf`` says what each tag allows."""
    names: list[str] = []
    for v in variants:
        names += [n for n in v.get("properties", {}) if n not in names]
    props: Schema = {}
    for name in names:
        present = [v["properties"][name] for v in variants if name in v.get("properties", {})]
        props[name] = _common(present, f"{path}/{name}")
    tags = [_tag(v, tag, path) for v in variants]
    props[tag] = {"type": "string", "enum": tags,
                  "description": f"Which variant this is: {', '.join(tags)}."}
    branches: list[Schema] = []
    for v, value in zip(variants, tags, strict=True):
        own = v.get("properties", {})
        branch: Schema = {"properties": {tag: {"enum": [value]}}}
        for name, sub in own.items():
            if name != tag and sub != props[name]:
                narrowed = _validations(sub)
                if narrowed != _validations(props[name]):
                    branch["properties"][name] = narrowed
        required = [r for r in v.get("required", []) if r != tag]
        if required:
            branch["required"] = required
        foreign = [n for n in names if n not in own]
        if foreign:
            branch["not"] = {"anyOf": [{"required": [n]} for n in foreign]}
        branches.append(branch)
    return {"type": "object", "required": [tag], "properties": props, "oneOf": branches}


def _tag(variant: Schema, tag: str, path: str) -> str:
    enum = variant.get("properties", {}).get(tag, {}).get("enum", [])
    if len(enum) != 1:
        raise CrdSchemaError(f"{path}: a variant without a single {tag!r} value")
    return str(enum[0])


def _common(schemas: list[Schema], path: str) -> Schema:
    """What several variants' schemas of one property agree on (the rest goes to the
    branches). Enums are united, so ``kubectl explain`` lists every accepted value."""
    first = schemas[0]
    if all(s == first for s in schemas):
        return first
    types = {s.get("type") for s in schemas}
    if len(types) != 1:
        raise CrdSchemaError(f"{path}: variants give it different types {sorted(map(str, types))}")
    out: Schema = {"type": first["type"]}
    for key in sorted({k for s in schemas for k in s} - {"type"}):
        values: list[Any] = [s.get(key) for s in schemas]
        if key == "enum" and all(values):
            out["enum"] = list(dict.fromkeys(v for vs in values for v in vs))
        elif key == "properties" and all(values):
            subs: dict[str, list[Schema]] = {}
            for vs in values:
                for n, sub in vs.items():
                    subs.setdefault(n, []).append(sub)
            out["properties"] = {n: _common(s, f"{path}/{n}") for n, s in subs.items()}
        elif key == "items" and all(values):
            out["items"] = _common(values, f"{path}/items")
        elif key == "nullable":
            if any(values):
                out["nullable"] = True
        elif all(v == values[0] for v in values):
            out[key] = values[0]
        elif key == "description":
            out[key] = " / ".join(dict.fromkeys(str(v) for v in values if v))
    return out


def _validations(schema: Schema) -> Schema:
    """``schema`` without the keys a junctor may not carry (they stay on the outer node)."""
    out: Schema = {}
    for key, value in schema.items():
        if key in _NOT_IN_JUNCTORS:
            continue
        if key == "properties":
            out[key] = {n: _validations(s) for n, s in value.items()}
        elif key == "items":
            out[key] = _validations(value)
        else:
            out[key] = value
    return {k: v for k, v in out.items() if v != {}}


def structural_problems(schema: Mapping[str, Any]) -> list[str]:
    """Where ``schema`` breaks apiextensions.k8s.io/v1's rules for a CRD's
    ``openAPIV3Schema`` (empty when it is structural).

    Checked: every node outside junctors has a ``type`` (or int-or-string / preserve-unknown
    fields); no keyword outside ``JSONSchemaProps`` or unsupported there (``$ref``,
    ``const``, ``propertyNames``...); ``properties`` and ``additionalProperties`` never
    together, ``additionalProperties`` never false, ``uniqueItems`` never true; inside
    ``allOf/anyOf/oneOf/not`` no type, description, default, nullable, additionalProperties or
    extension, and every property or ``items`` named there also specified outside; the root
    is an object whose ``metadata`` restricts ``name``/``generateName`` at most.
    """
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append("/: the root must be type: object")
    meta = schema.get("properties", {}).get("metadata")
    if meta is not None:
        extra = set(meta.get("properties", {})) - {"name", "generateName"}
        if meta.get("type") != "object" or extra or set(meta) - {"type", "properties",
                                                                  "description"}:
            problems.append("/metadata: only name and generateName may be restricted")
    _check(schema, "", problems, in_junctor=False)
    return problems


def _check(node: Mapping[str, Any], path: str, problems: list[str], *,
           in_junctor: bool) -> None:
    where = path or "/"
    unknown = sorted(set(node) - _ALLOWED)
    if unknown:
        problems.append(f"{where}: unsupported keywords {unknown}")
    if in_junctor:
        banned = sorted(set(node) & _NOT_IN_JUNCTORS)
        if banned:
            problems.append(f"{where}: {banned} are not allowed inside a junctor")
    elif not node.get("type") and not (node.get("x-kubernetes-int-or-string")
                                       or node.get("x-kubernetes-preserve-unknown-fields")):
        problems.append(f"{where}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties together")
    if node.get("additionalProperties") is False:
        problems.append(f"{where}: additionalProperties: false (pruning does that)")
    if node.get("uniqueItems") is True:
        problems.append(f"{where}: uniqueItems: true")
    for name, sub in node.get("properties", {}).items():
        _check(sub, f"{path}/{name}", problems, in_junctor=in_junctor)
    if isinstance(node.get("items"), Mapping):
        _check(node["items"], f"{path}/items", problems, in_junctor=in_junctor)
    if isinstance(node.get("additionalProperties"), Mapping):
        _check(node["additionalProperties"], f"{path}/*", problems, in_junctor=in_junctor)
    keys = node.get("x-kubernetes-list-map-keys", [])
    if keys and not set(keys) <= set(node.get("items", {}).get("required", [])):
        problems.append(f"{where}: list-map keys {keys} must be required in items")
    for sub, sub_path in _junction_parts(node, path):
        if node.get("x-kubernetes-int-or-string") and node.get("anyOf") == _INT_OR_STRING_ANY_OF:
            continue
        _check(sub, sub_path, problems, in_junctor=True)
        _specified_outside(sub, node, sub_path, problems)


def _junction_parts(node: Mapping[str, Any], path: str) -> Iterable[tuple[Schema, str]]:
    for junctor in _JUNCTORS:
        for i, sub in enumerate(node.get(junctor, [])):
            yield sub, f"{path}/{junctor}[{i}]"
    if "not" in node:
        yield node["not"], f"{path}/not"


def _specified_outside(sub: Mapping[str, Any], outer: Mapping[str, Any], path: str,
                       problems: list[str]) -> None:
    """A junctor may only constrain what the surrounding node already specifies."""
    outer_props = outer.get("properties", {})
    for name, inner in sub.get("properties", {}).items():
        if name not in outer_props:
            problems.append(f"{path}/{name}: not specified outside the junctor")
        else:
            _specified_outside(inner, outer_props[name], f"{path}/{name}", problems)
    if "items" in sub:
        if "items" not in outer:
            problems.append(f"{path}/items: not specified outside the junctor")
        else:
            _specified_outside(sub["items"], outer["items"], f"{path}/items", problems)
    for nested, nested_path in _junction_parts(sub, path):
        _specified_outside(nested, outer, nested_path, problems)


def _root_schema() -> Schema:
    from rollout.k8s.resource import RolloutPolicyStatus
    from rollout.policy.models import RolloutPolicy

    policy = RolloutPolicy.model_json_schema(by_alias=True)
    spec = openapi_schema({**policy["properties"]["spec"], "$defs": policy["$defs"]},
                          open_fields=OPEN_FIELDS)
    spec["description"] = ("The rollout policy (the same spec a policy file has, "
                           "docs/policy.md); validated again by the controller's loader.")
    status = openapi_schema(RolloutPolicyStatus.model_json_schema(by_alias=True))
    status["description"] = "Written by the controller only (the status subresource)."
    # kstatus readers and server-side apply address a condition by its type.
    status["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    root: Schema = {
        "type": "object",
        "description": ("A blue-green rollout of a Stable Diffusion service: the policy "
                        "document as a resource, reconciled by `rollout controller`."),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # The name keys the history ConfigMap (rollout-NAME): a DNS-1123 label, as the
            # policy loader requires, refused at apply time rather than at reconcile.
            "metadata": {"type": "object", "properties": {"name": {
                "type": "string", "maxLength": 63,
                "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}},
            "spec": spec,
            "status": status,
        },
    }
    return _readable(root)


_FIRST = ("type", "description", "nullable")


def _readable(node: Schema) -> Schema:
    """``node`` with ``type`` and ``description`` first in every schema node, for people
    reading the committed YAML (``properties`` keep declaration order, as pydantic has it)."""
    out: Schema = _reordered(node)
    return out


def _reordered(node: Any) -> Any:
    if isinstance(node, list):
        return [_reordered(n) for n in node]
    if not isinstance(node, dict):
        return node
    keys = [k for k in _FIRST if k in node] + [k for k in node if k not in _FIRST]
    if "type" in node and not isinstance(node["type"], str):  # a property named "type"
        keys = list(node)
    return {k: _reordered(node[k]) for k in keys}


_PRINTER_COLUMNS: tuple[tuple[str, str, str, str, int], ...] = (
    ("Phase", "string", ".status.phase", "Where the rollout stands.", 0),
    ("Step", "integer", ".status.step", "The current traffic step.", 0),
    ("Green", "integer", ".status.greenWeight",
     "Percent of traffic on green, read back from the router.", 0),
    ("Verdict", "string", ".status.verdict", "The last combined verdict of the gates.", 0),
    ("Age", "date", ".metadata.creationTimestamp", "", 0),
    ("Reason", "string", ".status.reason", "Why the rollout is where it is.", 1),
)


def crd() -> Schema:
    """The CustomResourceDefinition object (apiextensions.k8s.io/v1).

    Raises:
        CrdSchemaError: the models cannot be said structurally, or the result breaks a rule
            :func:`structural_problems` checks.
    """
    schema = _root_schema()
    problems = structural_problems(schema)
    if problems:
        raise CrdSchemaError("the generated schema is not structural: " + "; ".join(problems))
    columns = [{"name": n, "type": t, "jsonPath": p, **({"description": d} if d else {}),
                **({"priority": prio} if prio else {})}
               for n, t, p, d, prio in _PRINTER_COLUMNS]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME,
                     "labels": {"app.kubernetes.io/name": "rollout-gates"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": SINGULAR, "kind": KIND,
                      "listKind": f"{KIND}List", "shortNames": list(SHORT_NAMES),
                      "categories": ["rollout-gates"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


_HEADER = """\
# GENERATED by `rollout policy crd` from rollout/policy/models.py (spec) and
# rollout/k8s/resource.py (status): do not edit; regenerate with
#   rollout policy crd > deploy/k8s/base/crd.yaml
# Cluster-scoped: install it once per cluster (cluster-admin), before any RolloutPolicy.
"""


def crd_yaml() -> str:
    """:func:`crd` as the committed YAML file (stable key order, a header saying how to
    regenerate it)."""
    import yaml

    # Round-trip through JSON: plain dicts and lists only, so safe_dump needs no tags.
    body = yaml.safe_dump(json.loads(json.dumps(crd())), sort_keys=False, width=100,
                          default_flow_style=None,
                          allow_unicode=True)
    return _HEADER + body
