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

Every relative path in a policy is the policy file's, never the working directory's
(``parse_policy``'s ``base_dir``; the working directory only for text without a file):
``spec.canary.prompts`` (a file is read and validated then: a missing or invalid prompt set is
a load error naming the resolved path; a shipped name, an inline set and a ``configMapRef``
need no path), ``spec.admission.engineManifest`` (read then), ``spec.matrix.file`` (below),
``spec.router.socket`` of HAProxy, a process target's program (``command[0]`` with a ``/``) and
``spec.image``'s archive and key files; the policy keeps their absolute paths, so the
controller runs from any working directory. ``spec.matrix.file``
names a ``kind: VersionMatrix`` document (:class:`gates.matrix.VersionMatrixDocument`), read
through the same bounded composer and line walk (its errors name *its* file and lines) and put
inline, so the saved copy of the policy carries the pins; :func:`load_matrix` reads one alone.

After the schema, the validated policy is checked again for non-finite numbers (pydantic reads
strings such as ``"inf"`` into float fields) and its saved JSON copy must read back equal.
Every refusal is a :class:`PolicyError` (the CLI maps it to exit 2) whose issues carry the file,
the line, the field and what to write instead.

The pieces: the issue types and limits (:mod:`rollout.policy.issues`), the bounded composer and
the line walk (:mod:`rollout.policy.yaml_bounds`); this module reads, validates and maps
pydantic's errors onto the document.
"""


from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import Node

from gates.matrix import MatrixMetadata, VersionMatrixDocument
from rollout.policy.issues import (
    DEFAULT_LIMITS,
    LoaderLimits,
    PolicyError,
    PolicyIssue,
    dotted,
    non_finite_message,
)
from rollout.policy.models import API_VERSION, POLICY_DIR, RolloutPolicy
from rollout.policy.yaml_bounds import BoundedLoader, Refused, Walker, line_of

# LoaderLimits, PolicyError and PolicyIssue are defined in rollout.policy.issues (the bounded
# YAML reader raises them too) and imported from here by every caller.
__all__ = ["DEFAULT_LIMITS", "LoaderLimits", "PolicyError", "PolicyIssue", "load_matrix",
           "load_policy", "parse_matrix", "parse_policy"]

M = TypeVar("M", bound=BaseModel)


def load_policy(path: str | Path, *, limits: LoaderLimits = DEFAULT_LIMITS) -> RolloutPolicy:
    """Read and validate a policy file.

    Raises:
        PolicyError: unreadable, too large or not UTF-8, invalid or hostile YAML (duplicate
            keys, alias bombs, too deep, non-finite numbers), or schema violations (all of them).
    """
    p = Path(path)
    return parse_policy(_read(p, limits), str(p), limits=limits, base_dir=p.absolute().parent)


def load_matrix(path: str | Path, *, limits: LoaderLimits = DEFAULT_LIMITS
                ) -> VersionMatrixDocument:
    """Read and validate a ``kind: VersionMatrix`` file, within the same bounds and with the
    same line-numbered errors as a policy. A ``kind: RolloutPolicy`` file gives its
    ``spec.matrix`` (its ``file`` reference resolved), named after the policy.

    Raises:
        PolicyError: as :func:`load_policy`; or a policy without ``spec.matrix``.
    """
    p = Path(path)
    text = _read(p, limits)
    data, walker = _compose(text, str(p), limits, "a VersionMatrix")
    if data.get("kind") == "RolloutPolicy":
        policy = parse_policy(text, str(p), limits=limits, base_dir=p.absolute().parent)
        if policy.spec.matrix is None:
            raise PolicyError([PolicyIssue(str(p), "spec.matrix", walker.lines.get(("spec",), 0),
                                           "this policy has no spec.matrix")])
        return VersionMatrixDocument(api_version=API_VERSION, kind="VersionMatrix",
                                     metadata=MatrixMetadata(name=policy.metadata.name),
                                     spec=policy.spec.matrix.model_copy(update={"file": None}))
    return _validate(VersionMatrixDocument, data, walker, str(p), {})


def parse_matrix(text: str, file: str = "<matrix>", *,
                 limits: LoaderLimits = DEFAULT_LIMITS) -> VersionMatrixDocument:
    """Validate ``kind: VersionMatrix`` YAML ``text``; ``file`` labels the messages."""
    data, walker = _compose(text, file, limits, "a VersionMatrix")
    return _validate(VersionMatrixDocument, data, walker, file, {})


def parse_policy(text: str, file: str = "<policy>", *,
                 limits: LoaderLimits = DEFAULT_LIMITS,
                 base_dir: str | Path | None = None) -> RolloutPolicy:
    """Validate policy YAML ``text``; ``file`` labels the messages.

    Relative file references are resolved against ``base_dir`` (default: the working
    directory), and the files they name are read and validated (``spec.matrix.file``: its
    pins are put inline, its errors name the matrix file and its lines).
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    data, walker = _compose(text, file, limits, "a policy")
    _inline_matrix(data, walker, file, base, limits)
    policy = _validate(RolloutPolicy, data, walker, file, {POLICY_DIR: base})
    _check_round_trip(policy, file, walker.lines)
    return policy


def _read(p: Path, limits: LoaderLimits) -> str:
    """The file's text: at most ``limits.max_bytes``, UTF-8."""
    try:
        with p.open("rb") as f:
            raw = f.read(limits.max_bytes + 1)  # never more, whatever the file claims to be
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise PolicyError([PolicyIssue(str(p), "", 0, e.strerror or str(e))]) from e
    if len(raw) > limits.max_bytes:
        raise PolicyError([_too_large(str(p), max(size, len(raw)), limits, exact=size > 0)])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise PolicyError([PolicyIssue(str(p), "", line, (
            f"not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line}, column {column} cannot "
            "be decoded; save the file as UTF-8"))]) from e


def _compose(text: str, file: str, limits: LoaderLimits,
             what: str) -> tuple[dict[str, Any], Walker]:
    """The bounded YAML document (a mapping) and its walk (lines, duplicates, non-finite)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise PolicyError([_too_large(file, size, limits)])
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text, limits, file)
        node = loader.get_single_node()
        walker = Walker(loader, file)
        if node is not None:
            walker.walk(node, ())
        data = loader.construct_document(node) if node is not None else None
    except Refused as e:
        raise PolicyError([PolicyIssue(file, dotted(e.path), e.line, e.message)]) from None
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
        raise PolicyError([PolicyIssue(file, "", 1 if node is None else line_of(node),
                                       _not_a_mapping(node, data, what))])
    return data, walker


def _validate(model: type[M], data: dict[str, Any], walker: Walker, file: str,
              context: dict[str, Any]) -> M:
    """``data`` as ``model``, every schema error mapped onto the document's lines."""
    issues = walker.issues
    reported = {i.path for i in issues}
    try:
        result = model.model_validate(data, context=context)
    except ValidationError as e:
        for err in e.errors():
            keys = _real_path(data, err["loc"])
            if dotted(keys) not in reported:
                issues.append(PolicyIssue(file, dotted(keys), _nearest_line(walker.lines, keys),
                                          _message(err)))
        raise PolicyError(issues) from e
    if issues:
        raise PolicyError(issues)
    issues = [PolicyIssue(file, dotted(keys), _nearest_line(walker.lines, keys),
                          non_finite_message(walker.scalars.get(keys, repr(value)), value))
              for keys, value in _non_finite(result.model_dump(by_alias=True), ())]
    if issues:
        raise PolicyError(issues)
    return result


def _inline_matrix(data: dict[str, Any], walker: Walker, file: str, base: Path,
                   limits: LoaderLimits) -> None:
    """Replace ``spec.matrix: {file: F}`` by F's pins (F relative to the policy's directory),
    keeping F's absolute path in ``file``. F's own errors name F and its lines."""
    spec = data.get("spec")
    if not isinstance(spec, dict):
        return
    matrix = spec.get("matrix")
    if not isinstance(matrix, dict) or "file" not in matrix:
        return
    keys = ("spec", "matrix", "file")
    line = _nearest_line(walker.lines, keys)
    ref = matrix["file"]
    others = sorted(str(k) for k in matrix if k != "file")
    if not isinstance(ref, str) or not ref or others:
        raise PolicyError([PolicyIssue(file, dotted(keys), line, (
            "spec.matrix is either file: PATH (a kind: VersionMatrix file) or inline pins, "
            f"not both ({', '.join(others)} given too)" if others else
            "file must be the path of a kind: VersionMatrix file, relative to this policy"))])
    path = (base / ref).resolve()
    if not path.is_file():
        raise PolicyError([PolicyIssue(file, dotted(keys), line, (
            f"matrix file {ref!r} not found (looked for {path}; relative paths are resolved "
            "against the policy file's directory)"))])
    text = _read(path, limits)
    doc = _validate(VersionMatrixDocument, *_compose(text, str(path), limits, "a VersionMatrix"),
                    str(path), {})
    spec["matrix"] = {**doc.spec.model_dump(by_alias=True, exclude_none=True),
                      "file": str(path)}


def _too_large(file: str, size: int, limits: LoaderLimits, *, exact: bool = True) -> PolicyIssue:
    what = f"{size} bytes" if exact else f"more than {limits.max_bytes} bytes"
    return PolicyIssue(file, "", 0, (
        f"file is {what}, over the {limits.max_bytes}-byte limit for a policy; a policy is a few "
        "KiB: is this the right file?"))


def _not_a_mapping(node: Node | None, data: Any, what: str = "a policy") -> str:
    base = f"{what} must be a YAML mapping with apiVersion, kind, metadata and spec"
    if node is None:
        return f"the document is empty; {base} (see policies/examples/)"
    if isinstance(data, list):
        return f"{base}, not a list"
    if data is None:
        return f"{base}, not null"
    return f"{base}, not a single value ({type(data).__name__})"




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
        raise PolicyError([PolicyIssue(file, dotted(keys), _nearest_line(lines, keys), (
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
    location; it is skipped once per block (every block with a ``type`` is a union member).
    A location part missing from the document (a missing or unknown key) is kept, so the
    message can name it.
    """
    keys: list[Any] = []
    cur: Any = data
    tag_pending = True
    for part in loc:
        # pydantic always inserts the tag of a discriminated union's member, even when the tag
        # is also a key of the block (``{type: url, url: ...}``: loc ``(..., "url", "url")``)
        if isinstance(cur, dict) and tag_pending and part == cur.get("type"):
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
            return non_finite_message(str(err["input"]), value)
    if err["type"] == "union_tag_invalid":
        return f"{msg}"
    return msg
