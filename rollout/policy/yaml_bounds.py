"""Composing policy YAML within bounds, and the walk that maps each path to its line.

:class:`BoundedLoader` is PyYAML's safe loader counting what it composes: it refuses nesting
deeper than ``max_depth``, more than ``max_nodes`` nodes counting each alias as the subtree it
stands for (a "billion laughs" bomb is refused before it is built), more than ``max_aliases``
alias references, and an alias to a node that contains it. :class:`Walker` then walks the
composed document once: each path's line, duplicate keys and non-finite numbers, as
:class:`~rollout.policy.issues.PolicyIssue` items (:mod:`rollout.policy.loader` says why).
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rollout.policy.issues import LoaderLimits, PolicyIssue, dotted, non_finite_message

__all__ = ["BoundedLoader", "Refused", "Walker", "line_of"]

_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# A plain scalar that YAML 1.1 reads as a string but pydantic reads as a number (``1e400``).
_NUMBER_LIKE = re.compile(r"[-+]?[0-9_.]*[0-9][0-9_.]*(?:[eE][-+]?[0-9]+)?")


class Refused(Exception):  # noqa: N818 - internal: becomes a PolicyIssue
    """A bound the document breaks: where (line, path) and why."""

    def __init__(self, line: int, path: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.line, self.path, self.message = line, path, message


class BoundedLoader(yaml.SafeLoader):
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
            raise Refused(line, (*self._where()[:8], "..."), (
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
            raise Refused(line, self._where(), (
                f"alias *{anchor} refers to a node that contains it (a recursive structure "
                "cannot be a policy); write the value out instead"))
        self._aliases += 1
        if self._aliases > self.limits.max_aliases:
            raise Refused(line, self._where(), (
                f"more than {self.limits.max_aliases} alias references (*name); a policy needs "
                "a handful at most: write the values out"))
        self._count(size, line)

    def _count(self, n: int, line: int) -> None:
        self._nodes += n
        if self._nodes > self.limits.max_nodes:
            raise Refused(line, self._where(), (
                f"the document has more than {self.limits.max_nodes} nodes, counting each alias "
                "as the nodes it stands for (a YAML 'billion laughs' bomb?); a policy has a few "
                "hundred: write the values out, use fewer aliases, or split the file"))

    def _where(self) -> tuple[Any, ...]:
        return tuple(p for p in self._path if p is not None)


class Walker:
    """Walks the composed (bounded) document: each path's line, duplicate keys, non-finite numbers.

    Runs before construction: PyYAML's constructor rewrites merge keys (``<<``) in place.
    """

    def __init__(self, loader: BoundedLoader, file: str) -> None:
        self.loader, self.file = loader, file
        self.lines: dict[tuple[Any, ...], int] = {}
        self.scalars: dict[tuple[Any, ...], str] = {}  # path -> the scalar as written
        self.issues: list[PolicyIssue] = []
        self._dupes_checked: set[int] = set()

    def walk(self, n: Node, path: tuple[Any, ...]) -> None:
        self.lines[path] = line_of(n)
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
                self.issues.append(PolicyIssue(self.file, dotted((*path, seg)), line_of(k), (
                    f"duplicate key {seg!r}: first at line {first[key]}, again at line "
                    f"{line_of(k)}; YAML keeps only the last one, so delete one of them")))
            first.setdefault(key, line_of(k))
            if key in taken:
                continue
            self.lines[(*path, seg)] = line_of(k)
            self.walk(v, (*path, seg))
            self.lines[(*path, seg)] = line_of(k)
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
            self.issues.append(PolicyIssue(self.file, dotted(path), line_of(n),
                                           non_finite_message(n.value, value)))


def line_of(n: Node) -> int:
    return int(n.start_mark.line) + 1
