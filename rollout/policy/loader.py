"""Loading policies with errors that carry the YAML path *and* the line.

Why: a pipeline that rejects a policy must tell the author where to look. pydantic reports
locations as tuples (including union tags such as ``'latency'`` that are not in the file);
we compose the YAML once to remember each node's line, then walk pydantic's location against
the real document, skipping tags that are not keys.

Validation refuses what cannot run. Before the schema sees a document, the loader refuses:

* a file larger than ``LoaderLimits.max_bytes`` (1 MiB; a policy is a few KiB), checked before
  anything is parsed; bytes that are not UTF-8; an empty document, a list or a scalar at the top;
* nesting deeper than ``max_depth`` (64 levels; a policy needs about 8): also keeps PyYAML's
  recursive composer far from Python's recursion limit;
* alias expansion ("billion laughs"): PyYAML shares an aliased node instead of copying it, but
  everything after it (this line index, pydantic, the saved JSON copy) walks the *expanded*
  tree. While composing we count every node as often as it will be seen (an alias counts the
  whole subtree it names) and stop at ``max_nodes`` (10,000; the shipped policies have a
  few hundred) before the bomb is built, so refusing one takes milliseconds. At most
  ``max_aliases`` (100) alias references are allowed, and an alias to a node that contains it
  (a recursive document) is refused;
* duplicate mapping keys (PyYAML silently keeps the last), naming the key and both lines;
* any non-finite number (``.inf``, ``-.inf``, ``.nan``, ``1e400``...): the controller cannot run
  with it and the JSON copy it saves of the policy stores it as ``null``, which then does not load.

After the schema, the validated policy is checked again for non-finite numbers (pydantic reads
strings such as ``"inf"`` into float fields) and its saved JSON copy must read back equal.
Every refusal is a :class:`PolicyError` (the CLI maps it to exit 2) whose issues carry the file,
the line, the field and what to write instead.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rollout.policy.models import RolloutPolicy

__all__ = ["DEFAULT_LIMITS", "LoaderLimits", "PolicyError", "PolicyIssue", "load_policy",
           "parse_policy"]

_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# A plain scalar that YAML 1.1 reads as a string but pydantic reads as a number (``1e400``).
_NUMBER_LIKE = re.compile(r"[-+]?[0-9_.]*[0-9][0-9_.]*(?:[eE][-+]?[0-9]+)?")


@dataclass(frozen=True)
class LoaderLimits:
    """Bounds on a policy document (see the module docstring for why these values)."""

    max_bytes: int = 1 << 20
    max_depth: int = 64
    max_nodes: int = 10_000
    max_aliases: int = 100


DEFAULT_LIMITS = LoaderLimits()


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a policy file."""

    file: str
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '<document>'}: {self.message}"


class PolicyError(ValueError):
    """A policy file is invalid; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def load_policy(path: str | Path, *, limits: LoaderLimits = DEFAULT_LIMITS) -> RolloutPolicy:
    """Read and validate a policy file.

    Raises:
        PolicyError: unreadable, too large or not UTF-8, invalid or hostile YAML (duplicate
            keys, alias bombs, too deep, non-finite numbers), or schema violations (all of them).
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(limits.max_bytes + 1)  # never more, whatever the file claims to be
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise PolicyError([PolicyIssue(str(p), "", 0, e.strerror or str(e))]) from e
    if len(raw) > limits.max_bytes:
        raise PolicyError([_too_large(str(p), max(size, len(raw)), limits, exact=size > 0)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise PolicyError([PolicyIssue(str(p), "", line, (
            f"not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line}, column {column} cannot "
            "be decoded; save the file as UTF-8"))]) from e
    return parse_policy(text, str(p), limits=limits)


def parse_policy(text: str, file: str = "<policy>", *,
                 limits: LoaderLimits = DEFAULT_LIMITS) -> RolloutPolicy:
    """Validate policy YAML ``text``; ``file`` labels the messages."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise PolicyError([_too_large(file, size, limits)])
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text, limits, file)
        node = loader.get_single_node()
        walker = _Walker(loader, file)
        if node is not None:
            walker.walk(node, ())
        data = loader.construct_document(node) if node is not None else None
    except _Refused as e:
        raise PolicyError([PolicyIssue(file, _dotted(e.path), e.line, e.message)]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise PolicyError([PolicyIssue(file, "", line, f"invalid YAML: {e}")]) from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise PolicyError([PolicyIssue(file, "", line, (
            f"invalid YAML: character #x{e.character:04x} at line {line} is not allowed in YAML "
            "(a control character?); remove it"))]) from e
    except yaml.YAMLError as e:
        raise PolicyError([PolicyIssue(file, "", 0, f"invalid YAML: {e}")]) from e
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise PolicyError([PolicyIssue(file, "", 1 if node is None else _line(node),
                                       _not_a_mapping(node, data))])
    issues = walker.issues
    reported = {i.path for i in issues}
    try:
        policy = RolloutPolicy.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            keys = _real_path(data, err["loc"])
            if _dotted(keys) not in reported:
                issues.append(PolicyIssue(file, _dotted(keys), _nearest_line(walker.lines, keys),
                                          _message(err)))
        raise PolicyError(issues) from e
    if issues:
        raise PolicyError(issues)
    issues = [PolicyIssue(file, _dotted(keys), _nearest_line(walker.lines, keys),
                          _non_finite_message(walker.scalars.get(keys, repr(value)), value))
              for keys, value in _non_finite(policy.model_dump(by_alias=True), ())]
    if issues:
        raise PolicyError(issues)
    _check_round_trip(policy, file, walker.lines)
    return policy


class _Refused(Exception):  # noqa: N818 - internal: becomes a PolicyIssue
    def __init__(self, line: int, path: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.line, self.path, self.message = line, path, message


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts what it composes and refuses past ``limits``."""

    def __init__(self, text: str, limits: LoaderLimits, file: str) -> None:
        super().__init__(text)
        self.name = file  # PyYAML's marks name the file, not "<unicode string>"
        self.limits = limits
        self._path: list[Any] = []
        self._sizes: dict[int, int] = {}  # id(node) -> nodes in its expanded subtree
        self._nodes = 0
        self._aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        # where this node sits: a mapping value's key, a sequence index, a key, or the root
        self._path.append(index.value if isinstance(index, ScalarNode)
                          else index if isinstance(index, int)
                          else "<key>" if parent is not None else None)
        if self.check_event(AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's error
                self._alias(event.anchor, target, line)
            self._path.pop()
            return super().compose_node(parent, index)
        self._count(1, line)
        if len(self._path) - 1 > self.limits.max_depth:
            raise _Refused(line, (*self._where()[:8], "..."), (
                f"nested deeper than {self.limits.max_depth} levels; a policy needs about 8: "
                "flatten this structure"))
        node = super().compose_node(parent, index)
        self._path.pop()
        if node is None:  # not reached: PyYAML composes a node for every non-alias event
            return None
        children: list[Node] = (
            [n for pair in node.value for n in pair] if isinstance(node, MappingNode)
            else list(node.value) if isinstance(node, SequenceNode) else [])
        self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """PyYAML's, with a mark on the ValueErrors its constructors raise (``!!float abc``)."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.value!r} as {node.tag} ({e})",
                node.start_mark) from e

    def _alias(self, anchor: str, target: Node, line: int) -> None:
        size = self._sizes.get(id(target))
        if size is None:
            raise _Refused(line, self._where(), (
                f"alias *{anchor} refers to a node that contains it (a recursive structure "
                "cannot be a policy); write the value out instead"))
        self._aliases += 1
        if self._aliases > self.limits.max_aliases:
            raise _Refused(line, self._where(), (
                f"more than {self.limits.max_aliases} alias references (*name); a policy needs "
                "a handful at most: write the values out"))
        self._count(size, line)

    def _count(self, n: int, line: int) -> None:
        self._nodes += n
        if self._nodes > self.limits.max_nodes:
            raise _Refused(line, self._where(), (
                f"the document has more than {self.limits.max_nodes} nodes, counting each alias "
                "as the nodes it stands for (a YAML 'billion laughs' bomb?); a policy has a few "
                "hundred: write the values out, use fewer aliases, or split the file"))

    def _where(self) -> tuple[Any, ...]:
        return tuple(p for p in self._path if p is not None)


class _Walker:
    """Walks the composed (bounded) document: each path's line, duplicate keys, non-finite numbers.

    Runs before construction: PyYAML's constructor rewrites merge keys (``<<``) in place.
    """

    def __init__(self, loader: _BoundedLoader, file: str) -> None:
        self.loader, self.file = loader, file
        self.lines: dict[tuple[Any, ...], int] = {}
        self.scalars: dict[tuple[Any, ...], str] = {}  # path -> the scalar as written
        self.issues: list[PolicyIssue] = []
        self._dupes_checked: set[int] = set()

    def walk(self, n: Node, path: tuple[Any, ...]) -> None:
        self.lines[path] = _line(n)
        if isinstance(n, MappingNode):
            self._mapping(n, path, set())
        elif isinstance(n, SequenceNode):
            for i, v in enumerate(n.value):
                self.walk(v, (*path, i))
        elif isinstance(n, ScalarNode):
            self.scalars[path] = n.value
            self._scalar(n, path)

    def _mapping(self, n: MappingNode, path: tuple[Any, ...], taken: set[Any]) -> None:
        """Keys of ``n`` not ``taken`` (by the mapping that merges ``n``), then ``n``'s merges."""
        first: dict[Any, int] = {}
        for k, v in n.value:
            if k.tag == _MERGE_TAG:
                continue
            key, seg = self._key(k), k.value if isinstance(k, ScalarNode) else "<key>"
            if key in first and id(n) not in self._dupes_checked:
                self.issues.append(PolicyIssue(self.file, _dotted((*path, seg)), _line(k), (
                    f"duplicate key {seg!r}: first at line {first[key]}, again at line "
                    f"{_line(k)}; YAML keeps only the last one, so delete one of them")))
            first.setdefault(key, _line(k))
            if key in taken:
                continue
            self.lines[(*path, seg)] = _line(k)
            self.walk(v, (*path, seg))
            self.lines[(*path, seg)] = _line(k)
        self._dupes_checked.add(id(n))
        taken = taken | set(first)
        for k, v in n.value:
            if k.tag != _MERGE_TAG:
                continue
            for m in [v] if isinstance(v, MappingNode) else list(v.value) \
                    if isinstance(v, SequenceNode) else []:
                if isinstance(m, MappingNode):  # anything else is the constructor's error
                    self._mapping(m, path, taken)
                    taken = taken | {self._key(mk) for mk, _ in m.value}

    def _key(self, k: Node) -> Any:
        """The key as the constructed dict will see it (``yes`` and ``true`` are one key)."""
        if isinstance(k, ScalarNode):
            try:
                key = self.loader.construct_object(k)
                hash(key)
                return key
            except Exception:  # the constructor reports it later
                return (k.tag, k.value)
        return id(k)

    def _scalar(self, n: ScalarNode, path: tuple[Any, ...]) -> None:
        value: float | None = None
        if n.tag == _FLOAT_TAG:
            try:
                value = float(self.loader.construct_yaml_float(n))
            except (ValueError, OverflowError):
                return  # the constructor reports it
        elif n.tag == _STR_TAG and n.style is None and _NUMBER_LIKE.fullmatch(n.value):
            try:
                value = float(n.value.replace("_", ""))
            except ValueError:
                return
        if value is not None and not math.isfinite(value):
            self.issues.append(PolicyIssue(self.file, _dotted(path), _line(n),
                                           _non_finite_message(n.value, value)))


def _line(n: Node) -> int:
    return int(n.start_mark.line) + 1


def _too_large(file: str, size: int, limits: LoaderLimits, *, exact: bool = True) -> PolicyIssue:
    what = f"{size} bytes" if exact else f"more than {limits.max_bytes} bytes"
    return PolicyIssue(file, "", 0, (
        f"file is {what}, over the {limits.max_bytes}-byte limit for a policy; a policy is a few "
        "KiB: is this the right file?"))


def _not_a_mapping(node: Node | None, data: Any) -> str:
    base = "a policy must be a YAML mapping with apiVersion, kind, metadata and spec"
    if node is None:
        return f"the document is empty; {base} (see policies/examples/)"
    if isinstance(data, list):
        return f"{base}, not a list"
    if data is None:
        return f"{base}, not null"
    return f"{base}, not a single value ({type(data).__name__})"


def _non_finite_message(written: str, value: float) -> str:
    what = "not a number (NaN)" if math.isnan(value) else "infinite"
    return (f"{written} is {what}: the controller cannot run with it and the saved JSON copy of "
            "the policy cannot store it; write a finite number (e.g. 1.5 for a ratio, 3600 for "
            "seconds), or leave the field out for its default")


def _non_finite(data: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], float]]:
    """Every non-finite float in dumped ``data`` with its path."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [(path, data)]
    if isinstance(data, dict):
        return [hit for k, v in data.items() for hit in _non_finite(v, (*path, k))]
    if isinstance(data, list | tuple):
        return [hit for i, v in enumerate(data) for hit in _non_finite(v, (*path, i))]
    return []


def _check_round_trip(policy: RolloutPolicy, file: str,
                      lines: dict[tuple[Any, ...], int]) -> None:
    """The JSON copy the controller saves must read back as the same policy."""
    try:
        again = RolloutPolicy.model_validate_json(policy.model_dump_json(by_alias=True))
    except ValueError as e:  # pydantic's serialization and validation errors are ValueErrors
        raise PolicyError([PolicyIssue(file, "", 0, (
            f"the saved JSON copy of this policy would not load back ({e}); this is a bug in "
            "rollout-gates, please report it with the policy"))]) from e
    if again != policy:
        keys = _first_difference(policy.model_dump(by_alias=True), again.model_dump(by_alias=True),
                                 ())
        raise PolicyError([PolicyIssue(file, _dotted(keys), _nearest_line(lines, keys), (
            "the saved JSON copy of this policy reads back different here; write the value "
            "plainly (a finite number, a string or a list)"))])


def _first_difference(a: Any, b: Any, path: tuple[Any, ...]) -> tuple[Any, ...]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k not in b or a[k] != b[k]:
                return _first_difference(a[k], b.get(k), (*path, k))
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, (*path, i))
    return path
def _real_path(data: Any, loc: tuple[int | str, ...]) -> tuple[Any, ...]:
    """Map pydantic's location onto the document's keys.

    For a discriminated union pydantic inserts the tag (the block's ``type`` value) into the
    location; it is skipped once per block. A location part missing from the document (a
    missing or unknown key) is kept, so the message can name it.
    """
    keys: list[Any] = []
    cur: Any = data
    tag_pending = True
    for part in loc:
        if isinstance(cur, dict) and tag_pending and part not in cur and part == cur.get("type"):
            tag_pending = False
            continue
        keys.append(part)
        cur = _child(cur, part)
        tag_pending = True
    return tuple(keys)


def _child(cur: Any, part: int | str) -> Any:
    """The document node under ``part``, or None when the key or index is not there."""
    if isinstance(cur, dict):
        return cur.get(part)
    if isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
        return cur[part]
    return None


def _nearest_line(lines: dict[tuple[Any, ...], int], keys: tuple[Any, ...]) -> int:
    for n in range(len(keys), -1, -1):
        if keys[:n] in lines:
            return lines[keys[:n]]
    return 0


def _dotted(keys: tuple[Any, ...]) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


_NUMBER_ERRORS = frozenset({"finite_number", "greater_than", "greater_than_equal", "less_than",
                            "less_than_equal", "multiple_of"})


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; keys are camelCase, see `rollout policy schema`)"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] in _NUMBER_ERRORS:  # "nan" fails gt=0 before anything says it is NaN
        value = _as_float(err.get("input"))
        if value is not None and not math.isfinite(value):
            return _non_finite_message(str(err["input"]), value)
    if err["type"] == "union_tag_invalid":
        return f"{msg}"
    return msg
