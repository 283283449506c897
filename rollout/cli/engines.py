"""``rollout engines``: TensorRT engines as artifacts (verify against a runtime, build).

    rollout engines verify MANIFEST --snapshot SNAPSHOT [--output json]
    rollout engines build ONNX --output-engine FILE --manifest MANIFEST --model M
                          --component C --resolution WxH [--precision fp16]
                          [--shape NAME=MIN:OPT:MAX]... [--workspace-gib N] [--device N]

``verify`` exit codes: 0 every engine present, unchanged (SHA-256), built by the runtime's
TensorRT for its GPUs' compute capability; 1 a mismatch (each named, with both versions or
capabilities, and that it would be rebuilt at load); 2 bad input (manifest or snapshot).
``build`` exit codes: 0 built and recorded in the manifest; 2 bad input, or no TensorRT/GPU
here; 5 TensorRT failed to build. SNAPSHOT is a ``rollout snapshot --output json`` file, a
saved ``GET /capabilities`` body, or a server URL.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from rollout.cli._common import EXIT_INTERNAL, OutputFormat, bad_input, print_json
from rollout.cli.snapshot import OutputOption, format_table

if TYPE_CHECKING:
    from gates.engine_build import BuildRequest, BuiltEngine
    from gates.engines import EngineReport, Precision

__all__ = ["engines_app", "register"]

engines_app = typer.Typer(
    help="TensorRT engines as artifacts: verify a manifest against a runtime, build engines.",
    no_args_is_help=True,
)


def _print_report(report: EngineReport) -> None:
    rt = report.runtime
    ccs = ", ".join(rt.compute_capabilities) or "-"
    typer.echo(f"runtime: TensorRT {rt.tensorrt or '-'}, compute capability {ccs}")
    rows = [(r.engine.label, r.engine.tensorrt, r.engine.compute_capability,
             "ok" if r.ok else "; ".join(v.message for v in r.violations))
            for r in report.engines]
    typer.echo(format_table(("engine", "tensorrt", "cc", "verdict"), rows))
    bad = sum(not r.ok for r in report.engines)
    typer.echo(f"{report.verdict.value}: {bad} of {len(report.engines)} engine(s) do not match")


@engines_app.command("verify")
def verify(
    manifest: Annotated[Path, typer.Argument(help="Engine manifest (JSON or YAML).")],
    snapshot: Annotated[str, typer.Option(
        "--snapshot", help="Snapshot JSON, a saved /capabilities body, or a server URL.")],
    output: OutputOption = OutputFormat.text,
) -> None:
    """Check every engine of MANIFEST against the runtime in SNAPSHOT; exit 1 on a mismatch."""
    from gates.capability.collect import SnapshotSourceError, load_snapshot
    from gates.engines import ManifestError, verify_manifest

    try:
        snap = load_snapshot(snapshot)
        report = verify_manifest(manifest, snap)
    except (SnapshotSourceError, ManifestError) as e:
        bad_input(str(e), output=output)
    if output is OutputFormat.json:
        print_json(report.to_json())
    else:
        _print_report(report)
    raise typer.Exit(0 if not report.violations else 1)


@engines_app.command("build")
def build(
    onnx: Annotated[Path, typer.Argument(help="ONNX file to build the engine from.")],
    engine: Annotated[Path, typer.Option("--output-engine", help="Engine file to write.")],
    manifest: Annotated[Path, typer.Option(
        "--manifest", help="Manifest to add the engine to (created if absent; JSON or YAML).")],
    model: Annotated[str, typer.Option("--model", help="Model name in the manifest.")],
    component: Annotated[str, typer.Option("--component", help="unet, vae_decoder...")],
    resolution: Annotated[str, typer.Option("--resolution", help="WxH, e.g. 512x512.")],
    precision: Annotated[str, typer.Option("--precision", help="fp16, fp32, bf16, int8...")]
    = "fp16",
    shape: Annotated[list[str] | None, typer.Option(
        "--shape", help="NAME=MIN:OPT:MAX (dims like 2x4x64x64), per dynamic input.")] = None,
    workspace_gib: Annotated[float | None, typer.Option("--workspace-gib", min=0.1)] = None,
    device: Annotated[int, typer.Option("--device", min=0, help="GPU index.")] = 0,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Build one engine on this GPU with TensorRT and record it in the manifest."""
    from gates.engine_build import BuildError, build_engine, tensorrt_unavailable

    request = _request(onnx, engine, manifest, precision, shape or [], output)
    request = replace(request, device=device,
                      workspace_bytes=int(workspace_gib * 2**30) if workspace_gib else None)
    _check_entry(manifest, model, component, resolution, output)
    if (why := tensorrt_unavailable()) is not None:
        bad_input(f"cannot build engines here: {why}", output=output)
    try:
        built = build_engine(request)
    except BuildError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_INTERNAL) from e
    _record(manifest, built, model=model, component=component, resolution=resolution,
            precision=request.precision, output=output)


def _request(onnx: Path, engine: Path, manifest: Path, precision: str, shapes: list[str],
             output: OutputFormat) -> BuildRequest:
    """The build request from the arguments, checked before anything needs TensorRT; exits 2
    on bad input."""
    from gates.engine_build import BuildRequest, buildable, parse_shape, relative_engine_path

    if not onnx.is_file():
        bad_input(f"{onnx}: no such ONNX file", output=output)
    if not buildable(precision):
        bad_input(f"--precision {precision!r}: one of fp32, tf32, fp16, bf16, int8, fp8",
                  output=output)
    try:
        relative_engine_path(manifest, engine)
        parsed = dict(parse_shape(s) for s in shapes)
    except ValueError as e:
        bad_input(str(e), output=output)
    return BuildRequest(onnx=onnx, output=engine, precision=cast("Precision", precision),
                        shapes=parsed)


def _check_entry(manifest: Path, model: str, component: str, resolution: str,
                 output: OutputFormat) -> None:
    """The manifest fields valid and an existing manifest readable, before a long build."""
    from pydantic import ValidationError

    from gates.engines import EngineEntry, ManifestError, load_manifest

    try:
        EngineEntry(model=model, component=component, resolution=resolution, path="x",
                    sha256="0" * 64, tensorrt="0.0", compute_capability="0.0",
                    precision="fp16")
        if manifest.exists():
            load_manifest(manifest)
    except ValidationError as e:
        bad_input("; ".join(f"--{x['loc'][0]}: {x['msg']}" for x in e.errors()), output=output)
    except ManifestError as e:
        bad_input(str(e), output=output)


def _record(manifest: Path, built: BuiltEngine, *, model: str, component: str,
            resolution: str, precision: Precision, output: OutputFormat) -> None:
    """Add the built engine to the manifest (replacing a previous build of the same entry)."""
    from pydantic import ValidationError

    from gates.engine_build import manifest_entry, merge_entry, write_manifest
    from gates.engines import ManifestError, load_manifest

    try:
        existing = load_manifest(manifest) if manifest.exists() else None
        entry = manifest_entry(manifest, built, model=model, component=component,
                               resolution=resolution, precision=precision)
        doc = merge_entry(existing, entry)
        write_manifest(manifest, doc)
    except (ManifestError, ValidationError, ValueError, OSError) as e:
        bad_input(str(e), output=output)
    if output is OutputFormat.json:
        print_json({"verdict": "pass", "engine": entry.model_dump(mode="json", by_alias=True),
                    "manifest": str(manifest)})
    else:
        typer.echo(f"built {entry.label}: {built.path} (TensorRT {built.tensorrt}, compute "
                   f"capability {built.compute_capability}); recorded in {manifest}")


def register(app: typer.Typer) -> None:
    """Add ``rollout engines`` (``verify``, ``build``) to the CLI."""
    app.add_typer(engines_app, name="engines")
