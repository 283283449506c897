"""The audit's checks: pure functions of the walked filesystem, the image config and the policy.

Path checks look at the filesystem the container sees (what a later layer deleted is counted as
wasted bytes instead), except ``private-keys``, which looks at every layer: a key deleted by a
later layer still ships in the earlier layer's blob. Why each check exists: docs/images.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gates.image.contents import FoundLibrary, passwd_uid, version_matches
from gates.image.layers import Entry, Walk
from gates.image.policy import AuditPolicy, CheckName, Violation

__all__ = [
    "MAX_PATHS", "config_checks", "env_dict", "human_bytes", "path_checks", "pull_size_check",
]

MAX_PATHS = 50

_COMPILER = re.compile(
    r"(?:[\w.+]+-)*(?:gcc|g\+\+|c\+\+|cc|cc1|cc1plus|cc1obj|collect2|lto1|clang|clang\+\+|"
    r"clang-cpp|ld|ld\.bfd|ld\.gold|ld\.lld|lld|as|gfortran|nvcc|cpp|rustc|tcc)(?:-\d+(?:\.\d+)*)?$"
)
_COMPILER_DIRS = re.compile(r"(?:^|/)s?bin/[^/]+$|(?:^|/)lib(?:exec)?/gcc(?:-cross)?/")
_HEADERS = re.compile(
    r"(usr/(?:local/)?include|usr/local/cuda[^/]*/(?:targets/[^/]+/)?include|opt/conda/include)/")
_CACHES = re.compile(
    r"(var/lib/apt/lists|var/cache/apt|var/cache/(?:yum|dnf|apk)|(?:.*/)?\.cache/(?:pip|uv)"
    r"|(?:.*/)?(?:\.?conda|miniconda3|anaconda3|miniforge3|mambaforge)/pkgs)/")
_VCS = frozenset({".git", ".hg", ".svn"})
_TESTS = frozenset({"tests", "test"})
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".onnx", ".plan", ".engine", ".trt", ".pt", ".pth",
                   ".gguf")

Classifier = Callable[[str, Entry], str | None]


def _compiler(path: str, entry: Entry) -> str | None:
    base = path.rpartition("/")[2]
    return path if _COMPILER.fullmatch(base) and _COMPILER_DIRS.search(path) else None


def _headers(path: str, entry: Entry) -> str | None:
    match = _HEADERS.match(path)
    return match.group(1) if match else None


def _caches(path: str, entry: Entry) -> str | None:
    match = _CACHES.match(path)
    if match is None or path.rpartition("/")[2] == "lock":
        return None
    return match.group(1)


def _segment_root(path: str, names: frozenset[str], dirs_only: bool) -> str | None:
    parts = path.split("/")
    for i, part in enumerate(parts[: -1] if dirs_only else parts):
        if part in names:
            return "/".join(parts[: i + 1])
    return None


def _vcs(path: str, entry: Entry) -> str | None:
    return _segment_root(path, _VCS, False)


def _notebooks(path: str, entry: Entry) -> str | None:
    if path.endswith(".ipynb"):
        return path
    return _segment_root(path, frozenset({".ipynb_checkpoints"}), False)


def _tests(path: str, entry: Entry) -> str | None:
    return _segment_root(path, _TESTS, True)


def _weights(path: str, entry: Entry) -> str | None:
    lower = path.lower()  # a .pth directly in site-packages is a path file, not a checkpoint
    if lower.endswith(".pth") and lower.rpartition("/")[0].endswith(
            ("site-packages", "dist-packages")):
        return None
    return path if entry.kind in "fh" and lower.endswith(WEIGHT_SUFFIXES) else None


def _setuid(path: str, entry: Entry) -> str | None:
    return path if entry.kind in "fh" and entry.mode & 0o6000 else None


_PATH_CHECKS: dict[CheckName, tuple[Classifier, str]] = {
    "compilers": (_compiler, "compilers or linkers in the runtime image: build in a builder "
                  "stage and copy only the artifacts"),
    "headers": (_headers, "C/C++/CUDA headers: development files a runtime never reads"),
    "package-caches": (_caches, "package-manager caches or indexes left behind (apt lists and "
                       "archives, pip, conda pkgs)"),
    "vcs": (_vcs, "version-control directories: history (and often secrets) shipped to every "
            "node; add them to .dockerignore"),
    "notebooks": (_notebooks, "Jupyter notebooks (often with outputs and credentials)"),
    "tests": (_tests, "test directories outside the allowed paths"),
    "weights": (_weights, "model weights outside the allowed paths (--allow-weights)"),
    "setuid": (_setuid, "setuid/setgid executables: privilege escalation paths"),
}


def path_checks(walk: Walk, policy: AuditPolicy) -> list[Violation]:
    """One pass over the final filesystem for every path check; keys over every layer."""
    checks = [(name, fn) for name, (fn, _) in _PATH_CHECKS.items() if name not in policy.skip]
    found: dict[CheckName, dict[str, list[int]]] = {name: {} for name, _ in checks}
    allowed: dict[tuple[CheckName, str], bool] = {}
    for path, entry in walk.entries.items():
        if entry.kind == "d":
            continue
        for name, classify in checks:
            root = classify(path, entry)
            if root is None:
                continue
            key = (name, root)
            if key not in allowed:
                allowed[key] = policy.allowed(name, root)
            if not allowed[key]:
                tally = found[name].setdefault(root, [0, 0])
                tally[0] += 1
                tally[1] += entry.size
    out = [_violation(name, _PATH_CHECKS[name][1], roots) for name, roots in found.items()
           if roots]
    if "private-keys" not in policy.skip:
        out.extend(_keys(walk, policy))
    return out


def _violation(check: CheckName, why: str, roots: Mapping[str, list[int]]) -> Violation:
    files = sum(t[0] for t in roots.values())
    size = sum(t[1] for t in roots.values())
    ordered = sorted(roots, key=lambda r: (-roots[r][1], r))
    message = f"{files} file(s), {human_bytes(size)}: {why}"
    return Violation(check=check, message=message, paths=ordered[:MAX_PATHS], count=files,
                     bytes=size)


def _keys(walk: Walk, policy: AuditPolicy) -> list[Violation]:
    hits = [k for k in walk.keys if not policy.allowed("private-keys", k.path)]
    if not hits:
        return []
    gone = sorted({k.path for k in hits if k.path not in walk.entries})
    message = (f"{len(hits)} private key(s) ({hits[0].reason} in layer {hits[0].layer}"
               + (f"; {len(gone)} deleted by a later layer but still in the blobs"
                  if gone else "") + "): rotate them and pass secrets at run time")
    paths = sorted({k.path for k in hits})
    return [Violation(check="private-keys", message=message, paths=paths[:MAX_PATHS],
                      count=len(hits))]


def pull_size_check(pull_size: int, compressed: bool, policy: AuditPolicy) -> list[Violation]:
    """``pull-size``: the layers' blob sizes against ``maxPullSize``."""
    budget = policy.max_pull_size
    if budget is None or "pull-size" in policy.skip or pull_size <= budget:
        return []
    how = "compressed" if compressed else "as stored (uncompressed layers: an upper bound)"
    return [Violation(check="pull-size", message=(
        f"pull size {human_bytes(pull_size)} ({how}) exceeds the budget "
        f"{human_bytes(int(budget))}"),
        bytes=pull_size)]


def config_checks(config: Mapping[str, Any], captured: Mapping[str, bytes],
                  libraries: Sequence[FoundLibrary], policy: AuditPolicy) -> list[Violation]:
    """``root-user``, ``gpu-env`` (when the image serves a GPU) and ``pins``."""
    runtime = config.get("config") or {}
    out: list[Violation] = []
    if "root-user" not in policy.skip:
        out.extend(_user(str(runtime.get("User") or ""), captured))
    if policy.gpu and "gpu-env" not in policy.skip:
        out.extend(_gpu_env(runtime.get("Env") or []))
    if "pins" not in policy.skip:
        out.extend(_pins(libraries, policy))
    return out


def _user(user: str, captured: Mapping[str, bytes]) -> list[Violation]:
    name = user.partition(":")[0]
    if not name:
        return [Violation(check="root-user", message=(
            "no USER: the container runs as root; add a non-root user (USER 10001)"))]
    uid = 0 if name == "root" else passwd_uid(captured, name)
    if uid is None:
        return [Violation(check="root-user", message=(
            f"USER {name!r} is not in the image's /etc/passwd: the runtime cannot resolve it; "
            "create it or use a numeric uid"), paths=["etc/passwd"])]
    if uid == 0:
        return [Violation(check="root-user", message=f"USER {user!r} is uid 0 (root)")]
    return []


def _gpu_env(env: Sequence[str]) -> list[Violation]:
    values = env_dict(env)
    problems = []
    devices = values.get("NVIDIA_VISIBLE_DEVICES")
    if devices is None or devices.strip().lower() in ("", "void", "none"):
        shown = "unset" if devices is None else f"={devices!r}"
        problems.append(f"NVIDIA_VISIBLE_DEVICES {shown}: the NVIDIA container runtime "
                        "mounts no /dev/nvidia* (set it to all, or let the device plugin set it)")
    given = values.get("NVIDIA_DRIVER_CAPABILITIES")
    caps = {c.strip() for c in (given or "").split(",")}
    if "all" not in caps and not {"compute", "utility"} <= caps:
        shown = "unset" if given is None else f"={given!r}"
        problems.append(f"NVIDIA_DRIVER_CAPABILITIES {shown}: needs compute (libcuda) and "
                        "utility (nvidia-smi, NVML)")
    return [Violation(check="gpu-env", message="; ".join(problems))] if problems else []


def env_dict(env: Sequence[object]) -> dict[str, str]:
    """``["K=V", ...]`` -> ``{"K": "V"}`` (a later duplicate wins, as at run time)."""
    out = {}
    for item in env:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def _pins(libraries: Sequence[FoundLibrary], policy: AuditPolicy) -> list[Violation]:
    out = []
    for name, pin in sorted(policy.pins.items()):
        copies = [lib for lib in libraries if lib.name == name]
        wrong = [lib for lib in copies if not version_matches(lib.version, pin)]
        if not copies:
            out.append(Violation(check="pins", message=f"{name} pinned to {pin} but not found"))
        elif wrong:
            versions = ", ".join(sorted({lib.version for lib in wrong}))
            out.append(Violation(check="pins", message=(
                f"{name} pinned to {pin}, found {versions}"),
                paths=[lib.path for lib in wrong][:MAX_PATHS], count=len(wrong)))
    return out


def human_bytes(n: int) -> str:
    """Decimal units, as docker and registries print sizes: 1.2 GB, 340.0 kB."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
