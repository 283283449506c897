"""Loading policies with errors that carry the YAML path *and* the line.

Why: a pipeline that rejects a policy must tell the author where to look. pydantic reports
locations as tuples (including union tags such as ``'latency'`` that are not in the file);
we compose the YAML once to remember each node's line, then walk pydantic's location against
the real document, skipping tags that are not keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rollout.policy.models import RolloutPolicy

__all__ = ["PolicyError", "PolicyIssue", "load_policy", "parse_policy"]


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


def load_policy(path: str | Path) -> RolloutPolicy:
    """Read and validate a policy file.

    Raises:
        PolicyError: unreadable file, invalid YAML, or schema violations (all of them).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError([PolicyIssue(str(p), "", 0, e.strerror or str(e))]) from e
    return parse_policy(text, str(p))


def parse_policy(text: str, file: str = "<policy>") -> RolloutPolicy:
    """Validate policy YAML ``text``; ``file`` labels the messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise PolicyError([PolicyIssue(file, "", line, f"invalid YAML: {e}")]) from e
    if not isinstance(data, dict):
        raise PolicyError([PolicyIssue(file, "", 1, "a policy must be a YAML mapping with "
                                       "apiVersion, kind, metadata and spec")])
    lines = _line_index(node)
    try:
        return RolloutPolicy.model_validate(data)
    except ValidationError as e:
        issues = []
        for err in e.errors():
            keys = _real_path(data, err["loc"])
            issues.append(PolicyIssue(file, _dotted(keys), _nearest_line(lines, keys),
                                      _message(err)))
        raise PolicyError(issues) from e


def _line_index(node: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """Map each path (tuple of keys/indices) in the YAML document to its 1-based line."""
    out: dict[tuple[Any, ...], int] = {}

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        out[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value
                out[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
                out[(*path, key)] = k.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, i))

    if node is not None:
        walk(node, ())
    return out


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


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; keys are camelCase, see `rollout policy schema`)"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "union_tag_invalid":
        return f"{msg}"
    return msg
