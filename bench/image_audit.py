"""Audit time and peak memory of ``rollout audit-image`` on the project's real images.

Usage: ``python bench/image_audit.py [--image NAME=ARCHIVE ...] [--reps 3] [--out-dir DIR]``
(default: the controller and the SD server that ``make images`` writes to ``build/images/``).

Why: the synthesized benchmark (``bench/audit_image.py``) shows memory follows the number of
paths, not bytes; this one checks that on what the project ships. Each audit is the real
command a user or CI runs (``rollout audit-image ARCHIVE --output json``) in a fresh process,
``--reps`` times; the process's own peak resident set comes from ``wait4`` (``ru_maxrss`` of
that child alone), the time is wall time. The first row is the CLI starting and printing its
help: the floor every audit pays. The SD server is audited as a GPU image (``--gpu``, pull
budget 2 GB); its whole report goes to ``image_audit_sd_server.json`` and a readable summary
(side-by-side table, layers, findings, largest files) to ``image_audit_sd_server.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "build" / "images"
# How each image is judged: the SD server serves a GPU (the NVIDIA env must be set) and keeps
# under the talk's 2 GB pull budget; the controller under its CI budget (tests/image_build).
OPTIONS = {"sd-server": ["--gpu", "--max-pull-size", "2GB"],
           "controller": ["--max-pull-size", "200MB"]}
_CLI = [sys.executable, "-m", "rollout.cli"]


def measure(args: list[str]) -> tuple[int, float, float, str]:
    """Run the CLI with ARGS in a fresh process: exit code, seconds, peak RSS MB, stdout."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen([*_CLI, *args], stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, seconds, usage.ru_maxrss / 1024, out.read().decode()


def audit(name: str, archive: Path, reps: int) -> dict[str, Any]:
    runs = [measure(["audit-image", str(archive), *OPTIONS.get(name, []), "--output", "json"])
            for _ in range(reps)]
    code, _, _, stdout = runs[-1]
    return {"name": name, "archive": str(archive), "options": OPTIONS.get(name, []),
            "exit_code": code, "audit_seconds": [round(r[1], 2) for r in runs],
            "audit_seconds_median": round(statistics.median(r[1] for r in runs), 2),
            "peak_rss_mb": round(max(r[2] for r in runs), 1), "report": json.loads(stdout)}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def render(floor: dict[str, Any], results: list[dict[str, Any]], reps: int) -> str:
    lines = [
        "# `rollout audit-image` on the project's real images",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}. Each audit a fresh `rollout audit-image ... --output json`"
        f" process, {reps} runs (median time, highest peak RSS). Images built by `make images`"
        " (deploy/images/build.py). Written by `python bench/image_audit.py`.",
        "",
        "| image | pull size | unpacked | files | layers | audit s (median) | MB/s | "
        "peak RSS MB | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| (CLI start: `rollout --help`) | - | - | - | - | {floor['seconds']:.2f} | - | "
        f"{floor['peak_rss_mb']:.0f} | - |",
    ]
    for res in results:
        rep = res["report"]
        lines.append(
            f"| {res['name']} | {_mb(rep['pull_size'])} | {_mb(rep['unpacked_size'])} | "
            f"{rep['files']:,} | {len(rep['layers'])} | {res['audit_seconds_median']:.2f} | "
            f"{rep['unpacked_size'] / 1e6 / res['audit_seconds_median']:,.0f} | "
            f"{res['peak_rss_mb']:.0f} | {rep['verdict']} (exit {res['exit_code']}) |")
    for res in results:
        rep = res["report"]
        lines += ["", f"## {res['name']}: `rollout audit-image {Path(res['archive']).name} "
                  f"{' '.join(res['options'])}`", "",
                  f"- digest `{rep['digest']}`, image id `{rep['image_id']}`",
                  f"- pull size {_mb(rep['pull_size'])} (compressed), unpacked "
                  f"{_mb(rep['unpacked_size'])}, {rep['files']:,} files, wasted "
                  f"{rep['wasted_bytes']:,} B, removable by squashing {rep['removable_bytes']:,} B",
                  f"- user `{rep['config']['user']}`, entrypoint `{rep['config']['entrypoint']}`",
                  f"- {rep['debian_packages']} Debian packages, {rep['python_distributions']} "
                  "Python distributions",
                  f"- audit: {res['audit_seconds']} s, peak RSS {res['peak_rss_mb']} MB",
                  "", "| # | size | unpacked | files | created by |", "|---|---|---|---|---|"]
        lines += [f"| {layer['index']} | {_mb(layer['size'])} | {_mb(layer['unpacked_size'])} | "
                  f"{layer['files']:,} | `{layer['created_by'].strip()[:160]}` |"
                  for layer in rep["layers"]]
        found = rep["violations"]
        lines += ["", f"Findings ({len(found)}):" if found else "Findings: none."]
        lines += [""] * bool(found) + [f"- **{v['check']}**: {v['message']}: "
                                       f"{', '.join(v['paths'][:5])}" for v in found]
        lines += ["", "Largest files:", "", "| size | layer | path |", "|---|---|---|"]
        lines += [f"| {_mb(p['size'])} | {p['layer']} | {p['path']} |"
                  for p in rep["largest_paths"][:8]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", action="append", default=[], metavar="NAME=ARCHIVE",
                        help="an image to audit (default: controller and sd-server from "
                             "build/images)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    pairs = [spec.split("=", 1) for spec in args.image] or [
        ["controller", str(IMAGES / "controller.oci.tar")],
        ["sd-server", str(IMAGES / "sd-server.oci.tar")]]
    missing = [path for _, path in pairs if not Path(path).is_file()]
    if missing:
        print(f"missing image archive(s): {', '.join(missing)} (run `make images`)",
              file=sys.stderr)
        return 2
    _, floor_s, floor_mb, _ = measure(["--help"])
    floor = {"seconds": round(floor_s, 2), "peak_rss_mb": round(floor_mb, 1)}
    results = [audit(name, Path(path), args.reps) for name, path in pairs]
    results.sort(key=lambda res: res["report"]["unpacked_size"])
    text = render(floor, results, args.reps)
    sys.stdout.write(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "image_audit_sd_server.md").write_text(text)
    payload = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()},
               "reps": args.reps, "cli_start": floor, "audits": results}
    (args.out_dir / "image_audit_sd_server.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
