"""Audit time and peak memory of ``gates.image.audit`` on synthesized images of growing size.

Usage: ``python bench/audit_image.py [--sizes 200MB,1GB] [--files 5000] [--workdir DIR]
[--out FILE.md]``

For each size, an OCI archive is synthesized layer by layer (tests/support/images.py): a base
layer of ``--files`` small files, then layers of incompressible 8 MB files adding up to the size,
one of them overwritten by a later layer (wasted bytes). Each audit runs in a fresh Python
process, which reports its wall time and its peak resident set (``ru_maxrss``); the first row
is that process importing ``gates.image`` and auditing nothing, the floor every audit pays.
Peak memory should stay flat as the image grows: the audit keeps per-path metadata, never
contents.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from images import Entry, ImageSpec, LayerSpec, write_forms  # noqa: E402
from pydantic import ByteSize, TypeAdapter  # noqa: E402

_BIG = 8_000_000
_CHILD = """
import json, resource, sys, time
from gates.image.audit import audit
t0 = time.perf_counter()
report = audit(sys.argv[1]) if sys.argv[1] != "-" else None
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "report": report.model_dump(mode="json") if report else None}))
"""


def synthesize(size: int, files: int, out: Path) -> str:
    """An OCI archive of about ``size`` bytes of layer data; its reference."""
    small = tuple(Entry(f"usr/lib/pkg{i % 50}/mod{i}.py", b"# module\n" * 20)
                  for i in range(files))
    big = [Entry(f"opt/data/blob{i}.bin", size=_BIG) for i in range(max(1, size // _BIG))]
    half = len(big) // 2
    layers = [LayerSpec(small, "ADD rootfs.tar /"),
              LayerSpec(tuple(big[:half]), "COPY data-a /opt/data"),
              LayerSpec(tuple(big[half:]), "COPY data-b /opt/data"),
              LayerSpec((Entry("opt/data/blob0.bin", b"rewritten"),), "RUN rewrite blob0")]
    return write_forms(ImageSpec(layers, user="10001"), out, f"bench{size}")["oci-archive"]


def measure(ref: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _CHILD, ref], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200MB,1GB")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(TypeAdapter(ByteSize).validate_python(s)) for s in args.sizes.split(",")]
    rows = ["| layer data | files | pull size | wasted | synthesized s | audit s | MB/s | "
            "peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    floor = measure("-")
    rows.append(f"| (imports only) | - | - | - | - | - | - | "
                f"{int(str(floor['peak_rss_kb'])) / 1024:.0f} |")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for size in sizes:
            t0 = time.perf_counter()
            ref = synthesize(size, args.files, Path(tmp) / str(size))
            made = time.perf_counter() - t0
            result = measure(ref)
            report = result["report"]
            assert isinstance(report, dict)
            seconds = float(str(result["seconds"]))
            rss = int(str(result["peak_rss_kb"])) / 1024
            rows.append(
                f"| {report['unpacked_size'] / 1e6:,.0f} MB | "
                f"{report['files']:,} | {report['pull_size'] / 1e6:,.0f} MB | "
                f"{report['wasted_bytes'] / 1e6:,.0f} MB | {made:.0f} | {seconds:.1f} | "
                f"{report['unpacked_size'] / 1e6 / seconds:,.0f} | {rss:.0f} |")
    text = (f"Audit of synthesized OCI archives ({platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, {args.files} small files + 8 MB files)\n\n"
            + "\n".join(rows) + "\n")
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
