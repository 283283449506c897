"""Build the project's container images here, without a Docker daemon or a registry.

Why this exists: the Dockerfiles were never built, so nothing proved they produce the slim,
non-root images they promise. This script builds them the way the machines of this project
can (see ``shared/notes/machine-facts.md``, "Container images without a daemon"):

1. **Base**: ``mmdebstrap --variant=minbase`` makes a Debian bookworm root filesystem with
   ``python3`` from Debian's own packages (no registry to pull ``python:3.11-slim`` from). The
   tarball is cached under ``${XDG_CACHE_HOME:-~/.cache}/rollout-gates/`` and named by a hash of
   every input of its build, so a changed package list makes a new one and an unchanged one is
   reused (mmdebstrap takes ~40-80 s; the import ~5 s). It is imported with ``buildah`` (``from
   scratch`` + ``add`` + ``commit``), whose history entry is the mmdebstrap command line, so the
   audit's layer table says what made the base.
2. **Images**: ``buildah bud --isolation chroot --layers`` builds each Dockerfile from the
   repository root with the ignore file beside it. pip inside the build resolves packages the
   way pip on this machine does: the effective pip settings (``pip config list`` plus
   ``PIP_*``) are written to a pip.conf that is bind-mounted read-only into the build, and each
   local index, wheel directory, constraints file and CA bundle they name is bind-mounted too
   (at ``/run/rollout-pip/...``, the URLs rewritten). Only the builder stages run commands; the
   runtime stages only copy, so neither the mounts nor the config can land in a shipped layer.
3. **Archives**: ``buildah push IMAGE oci-archive:OUT/NAME.oci.tar``, the form
   ``rollout audit-image`` reads, plus ``OUT/images.json`` (tags, archives, image IDs, seconds).

Standard library only: it runs with any Python 3.11 before the project is installed.
Exit codes: 0 built, 2 bad input (unknown image, missing tool), 5 a build command failed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = [
    "BASE_REPO",
    "IMAGES",
    "BuildError",
    "ImageDef",
    "PipAccess",
    "base_recipe",
    "build_image",
    "cache_dir",
    "ensure_base",
    "main",
    "pip_access",
]

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
BASE_REPO = "localhost/rollout-gates/base"
# python3-venv: the builder stages make virtual environments (it brings pip's and setuptools'
# wheels, ~3 MB); ca-certificates: pip reaches HTTPS indexes, the controller HTTPS APIs.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_OPTIONS = (
    # Merged /usr without the usrmerge package, which pulls in perl (~40 MB unpacked).
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    # Documentation, man pages and translations are never read in a container; licences stay.
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    # su, passwd, mount, chage...: setuid/setgid binaries are escalation paths in a container
    # that never logs anyone in (the audit's `setuid` check); strip the bits once, in the base.
    '--customize-hook=find "$1" -xdev -perm /6000 -type f -exec chmod a-s {} +',
)
BASE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PIP_MOUNT_ROOT = "/run/rollout-pip"
# pip settings that decide where packages come from and how they are trusted, as pip's
# config file spells them; everything else (verbosity, caches) is the Dockerfile's business.
_PIP_KEYS = ("index-url", "extra-index-url", "find-links", "constraint", "cert", "client-cert",
             "trusted-host", "timeout", "retries", "no-index", "prefer-binary", "only-binary")
_PIP_LIST_KEYS = frozenset({"extra-index-url", "find-links", "trusted-host", "constraint"})
_PIP_PATH_KEYS = frozenset({"index-url", "extra-index-url", "find-links", "constraint", "cert",
                            "client-cert"})
_PIP_ALIASES = {"default-timeout": "timeout"}  # PIP_DEFAULT_TIMEOUT is --timeout
_EXIT_BAD_INPUT = 2
_EXIT_FAILED = 5


class BuildError(RuntimeError):
    """A build command failed (its command line and the tail of its output are the message)."""


@dataclass(frozen=True)
class ImageDef:
    """One image of the project: its Dockerfile (and ignore file beside it) and its tag."""

    name: str
    dockerfile: str

    @property
    def tag(self) -> str:
        return f"localhost/rollout-gates/{self.name}:dev"

    @property
    def ignorefile(self) -> str:
        return f"{self.dockerfile}.dockerignore"


IMAGES = {
    "controller": ImageDef("controller", "deploy/controller/Dockerfile"),
    "sd-server": ImageDef("sd-server", "deploy/sd-server/Dockerfile"),
}


@dataclass
class PipAccess:
    """What a build needs to resolve packages like the host: a pip.conf and the mounts it names."""

    settings: dict[str, list[str]] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)  # host path -> path inside the build

    def conf_text(self) -> str:
        lines = ["[global]"]
        lines += [f"{key} = {' '.join(values)}" for key, values in sorted(self.settings.items())]
        return "\n".join(lines) + "\n"


def _run(cmd: Sequence[str]) -> str:
    """Run a command; its stdout, or BuildError with the command and the last output lines."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise BuildError(f"{shlex.join(cmd)} exited {proc.returncode}\n{tail}")
    return proc.stdout


def _log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def base_recipe(mirror: str | None) -> list[str]:
    """The mmdebstrap arguments (before the output path); their hash names the cached base."""
    args = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            *BASE_OPTIONS, SUITE]
    return [*args, mirror] if mirror else args


def _base_key(recipe: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(recipe).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where the base tarball lives: per user, outside the tree, kept across clones and CI runs."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rollout-gates"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize base builds: two test sessions or `make images` runs share one cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _image_exists(tag: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True,
                          check=False).returncode == 0


def ensure_base(cache: Path, *, mirror: str | None = None,
                rebuild: bool = False) -> dict[str, Any]:
    """The base image's tag, made from the cached tarball (made first when absent)."""
    recipe = base_recipe(mirror)
    key = _base_key(recipe)
    tarball = cache / f"base-{SUITE}-{key}.tar"
    tag = f"{BASE_REPO}:{SUITE}-{key}"
    started = time.monotonic()
    made = imported = False
    with _locked(cache / "base.lock"):
        if rebuild or not tarball.exists():
            _log(f"mmdebstrap {SUITE} base -> {tarball}")
            partial = tarball.with_suffix(".partial.tar")
            _run([*recipe, str(partial)])
            partial.replace(tarball)
            made = True
        if made or not _image_exists(tag):
            _log(f"importing {tarball.name} as {tag}")
            ctr = _run(["buildah", "from", "--quiet", "scratch"]).strip()
            try:
                _run(["buildah", "add", "--quiet", ctr, str(tarball), "/"])
                _run(["buildah", "config", "--env", BASE_PATH, "--env", "LANG=C.UTF-8",
                      "--cmd", "/bin/sh", "--created-by", shlex.join(recipe), ctr])
                _run(["buildah", "commit", "--quiet", ctr, tag])
            finally:
                subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
            imported = True
        # A stable name too, so a hand-run `buildah bud` of a Dockerfile finds its default base.
        _run(["buildah", "tag", tag, f"{BASE_REPO}:{SUITE}"])
    return {"tag": tag, "tarball": str(tarball), "made": made, "imported": imported,
            "seconds": round(time.monotonic() - started, 1)}


def _pip_config(python: str) -> dict[str, list[str]]:
    """The effective pip settings: PIP_* environment over [install] over [global]."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          check=False)
    ranked: dict[str, tuple[int, str]] = {}
    rank = {"global": 0, "install": 1, ":env:": 2}
    lines = proc.stdout.splitlines() if proc.returncode == 0 else []
    # Without pip for this interpreter, the environment alone still says where to look.
    lines += [f":env:.{name[4:].lower().replace('_', '-')}={value!r}"
              for name, value in os.environ.items() if name.startswith("PIP_")] if not lines else []
    for line in lines:
        name, sep, raw = line.partition("=")
        section, _, key = name.rpartition(".")
        key = _PIP_ALIASES.get(key, key)
        if not sep or section not in rank or key not in _PIP_KEYS:
            continue
        value = raw.strip().strip("'\"")
        if key not in ranked or rank[section] >= ranked[key][0]:
            ranked[key] = (rank[section], value)
    return {key: value.split() if key in _PIP_LIST_KEYS else [value]
            for key, (_, value) in ranked.items()}


def _local_path(value: str) -> Path | None:
    if value.startswith("file:"):
        return Path(unquote(urlparse(value).path))
    return Path(value) if value.startswith("/") else None


def pip_access(python: str = sys.executable) -> PipAccess:
    """The host's pip settings, with every local path they name mounted into the build."""
    access = PipAccess()
    for key, values in _pip_config(python).items():
        rewritten = []
        for value in values:
            local = _local_path(value) if key in _PIP_PATH_KEYS else None
            if local is None or not local.exists():
                rewritten.append(value)
                continue
            # A local index (``file:///opt/pypi/simple``) links to its files relatively
            # (``../../files/x.whl``): mount the index's parent, so those links still resolve.
            mounted, below = (local.parent, f"/{local.name}") if key.endswith("index-url") \
                else (local, "")
            target = access.mounts.setdefault(
                str(mounted), f"{PIP_MOUNT_ROOT}/{len(access.mounts)}-{mounted.name}")
            rewritten.append(f"file://{target}{below}" if value.startswith("file:")
                             else f"{target}{below}")
        access.settings[key] = rewritten
    return access


def build_image(image: ImageDef, base_tag: str, out: Path, pip: PipAccess, *,
                no_cache: bool = False) -> dict[str, Any]:
    """Build one image with buildah (chroot isolation) and write it as an OCI archive."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rollout-pip-") as conf_dir:
        (Path(conf_dir) / "pip.conf").write_text(pip.conf_text())
        volumes = [f"{conf_dir}:{PIP_MOUNT_ROOT}/conf:ro"]
        volumes += [f"{host}:{target}:ro" for host, target in pip.mounts.items()]
        cmd = ["buildah", "bud", "--isolation", "chroot", "--layers", "--format", "oci",
               *(["--no-cache"] if no_cache else []),
               "-f", str(ROOT / image.dockerfile), "--ignorefile", str(ROOT / image.ignorefile),
               "--build-arg", f"BASE_IMAGE={base_tag}",
               "--build-arg", f"PIP_CONFIG_FILE={PIP_MOUNT_ROOT}/conf/pip.conf",
               *(arg for volume in volumes for arg in ("--volume", volume)),
               "-t", image.tag, str(ROOT)]
        _log(f"building {image.tag} from {image.dockerfile}")
        _run(cmd)
    built = time.monotonic()
    archive = out / f"{image.name}.oci.tar"
    partial = out / f".{image.name}.oci.tar.partial"
    partial.unlink(missing_ok=True)
    _run(["buildah", "push", "--quiet", image.tag, f"oci-archive:{partial}:{image.tag}"])
    partial.replace(archive)
    image_id = _run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}",
                     image.tag]).strip()
    return {"name": image.name, "tag": image.tag, "archive": str(archive),
            "image_id": f"sha256:{image_id}", "archive_bytes": archive.stat().st_size,
            "build_seconds": round(built - started, 1),
            "push_seconds": round(time.monotonic() - built, 1)}


def _record(path: Path, base: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Update OUT/images.json: images built now replace their entries, the others stay."""
    known: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        known = {entry["name"]: entry for entry in json.loads(path.read_text())["images"]}
    known.update((entry["name"], entry) for entry in results)
    path.write_text(json.dumps({"base": base, "images": sorted(known.values(),
                                                               key=lambda e: str(e["name"]))},
                               indent=2) + "\n")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy/images/build.py",
        description="Build the project's images with buildah from a cached mmdebstrap base.")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help=f"images to build: {', '.join(IMAGES)} (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "images",
                        help="directory for NAME.oci.tar and images.json (default build/images)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the base tarball is cached (default "
                             "${XDG_CACHE_HOME:-~/.cache}/rollout-gates)")
    parser.add_argument("--mirror", default=os.environ.get("DEBIAN_MIRROR"),
                        help="Debian mirror for mmdebstrap (default: mmdebstrap's choice)")
    parser.add_argument("--rebuild-base", action="store_true",
                        help="run mmdebstrap again even when the cached tarball exists")
    parser.add_argument("--no-cache", action="store_true",
                        help="rebuild every step (buildah's layer cache otherwise reuses "
                             "steps whose inputs did not change)")
    parser.add_argument("--prune", action="store_true",
                        help="afterwards, remove every dangling image from buildah's store: the "
                             "images and cached steps earlier builds left (the next build "
                             "reinstalls its dependencies)")
    parser.add_argument("--base-only", action="store_true",
                        help="only make (or reuse) and import the base; print its tag")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    unknown = [name for name in args.images if name not in IMAGES]
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if unknown or missing:
        problem = (f"unknown image(s) {', '.join(unknown)}; choose from {', '.join(IMAGES)}"
                   if unknown else
                   f"missing tool(s): {', '.join(missing)} (make system-deps installs them)")
        print(f"error: {problem}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    try:
        base = ensure_base(args.cache_dir or cache_dir(), mirror=args.mirror,
                           rebuild=args.rebuild_base)
        results: list[dict[str, Any]] = []
        if not args.base_only:
            args.out.mkdir(parents=True, exist_ok=True)
            pip = pip_access()
            results = [build_image(IMAGES[name], str(base["tag"]), args.out, pip,
                                   no_cache=args.no_cache) for name in args.images or IMAGES]
            _record(args.out / "images.json", base, results)
        if args.prune:
            _run(["buildah", "rmi", "--prune"])
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _EXIT_FAILED
    if args.output == "json":
        print(json.dumps({"base": base, "images": results}, indent=2))
    else:
        print(f"{'base':<12}{base['tag']}  ({base['tarball']})")
        for result in results:
            print(f"{result['name']:<12}{result['archive']}  "
                  f"{result['archive_bytes'] / 1e6:.1f} MB  built in {result['build_seconds']} s"
                  f"  {result['image_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
