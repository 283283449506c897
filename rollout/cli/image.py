"""``rollout image audit|diff`` and ``rollout audit-image``: what an image costs and ships.

    rollout image audit IMAGE [--max-pull-size 2GB] [--gpu] [--pin cuda=12.4]...
                              [--allow-weights GLOB]... [--allow CHECK=GLOB]... [--skip CHECK]...
                              [--largest N] [--output json]
    rollout image diff A B [--limit N] [--output json]
    rollout audit-image IMAGE [options as above]     (the issue's spelling of ``image audit``)
    rollout audit-image diff A B [--output json]     (the issue's spelling of ``image diff``)
    rollout image sign IMAGE --key FPR [--gpg-home DIR] --identity REF (-o SIG | --sigstore DIR)
    rollout image verify IMAGE --identity REF --keyring FILE... (--signature SIG | --sigstore DIR)

IMAGE is ``oci-archive:PATH``, ``docker-archive:PATH``, ``oci:DIR`` (each with an optional
``:REF``) or a bare path whose form is recognised. Exit codes: audit 0 clean, 1 violations;
diff 0 identical, 1 different; sign 0 signed; verify 0 a signature holds, 1 none does
(unsigned, another image's digest, another identity, an untrusted key); 2 bad input (missing
file, not an image, no manifest digest, gpg/skopeo missing, bad option). Signatures are
containers' simple signing (``skopeo standalone-sign``/``standalone-verify``). A progress
line goes to stderr while a large image streams, when stderr is a terminal.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from rollout.cli._common import OutputFormat, bad_input, print_json
from rollout.cli.snapshot import format_table

if TYPE_CHECKING:
    from gates.image.audit import AuditReport
    from gates.image.diff import ImageDiff
    from gates.image.layers import Progress
    from gates.image.policy import AuditPolicy

__all__ = ["build_policy", "format_audit", "format_diff", "register", "run_audit", "run_diff",
           "sign_command", "verify_command"]

_OPTIONS = {"maxPullSize": "--max-pull-size", "pins": "--pin", "allow": "--allow",
            "skip": "--skip", "allowWeights": "--allow-weights"}
#: Below this many blob bytes an audit is quick: no progress line.
_PROGRESS_MIN = 100_000_000

image_app = typer.Typer(help="Audit, diff, sign and verify container images (no daemon needed).",
                        no_args_is_help=True)

OutputOption = Annotated[
    OutputFormat, typer.Option("--output", "-o", help="text (tables) or json (one object).")]
MaxPullOption = Annotated[str | None, typer.Option(
    "--max-pull-size", metavar="SIZE", help="Pull-size budget (compressed layers): 2GB, 1.5GiB.")]
GpuOption = Annotated[bool, typer.Option(
    "--gpu", help="The image serves a GPU: require NVIDIA_VISIBLE_DEVICES and "
    "NVIDIA_DRIVER_CAPABILITIES with compute,utility.")]
PinOption = Annotated[list[str] | None, typer.Option(
    "--pin", metavar="LIB=VERSION", help="cuda|cudnn|tensorrt|onnxruntime=VERSION every copy "
    "inside must match (repeatable).")]
AllowWeightsOption = Annotated[list[str] | None, typer.Option(
    "--allow-weights", metavar="GLOB", help="Where model weights may live (repeatable).")]
AllowOption = Annotated[list[str] | None, typer.Option(
    "--allow", metavar="CHECK=GLOB", help="Accept these paths for one check (repeatable).")]
SkipOption = Annotated[list[str] | None, typer.Option(
    "--skip", metavar="CHECK", help="Do not run this check (repeatable).")]
LargestOption = Annotated[int, typer.Option("--largest", min=1, max=1000,
                                            help="How many of the largest files to list.")]
LimitOption = Annotated[int, typer.Option("--limit", min=1, help=(
    "List at most this many files per category (counts stay exact)."))]


def _progress(label: str) -> Progress | None:
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if total < _PROGRESS_MIN or (now - last[0] < 0.5 and done < total):
            return
        last[0] = now
        sys.stderr.write(f"\r{label}: {done / 1e6:,.0f} / {total / 1e6:,.0f} MB read"
                         + ("\n" if done >= total else ""))
        sys.stderr.flush()

    return show


def _pairs(values: list[str] | None, option: str, output: OutputFormat) -> list[tuple[str, str]]:
    out = []
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip() or not rest.strip():
            bad_input(f"{option} {value!r}: want NAME=VALUE", output=output)
        out.append((key.strip(), rest.strip()))
    return out


def build_policy(*, max_pull_size: str | None = None, gpu: bool = False,
                 pins: list[str] | None = None, allow_weights: list[str] | None = None,
                 allow: list[str] | None = None, skip: list[str] | None = None,
                 output: OutputFormat = OutputFormat.text) -> AuditPolicy:
    """The :class:`AuditPolicy` the options describe; exits 2 on a bad option."""
    from pydantic import ValidationError

    from gates.image.policy import AuditPolicy

    allowed: dict[str, list[str]] = {}
    for check, glob in _pairs(allow, "--allow", output):
        allowed.setdefault(check, []).append(glob)
    try:
        return AuditPolicy.model_validate({
            "maxPullSize": max_pull_size, "gpu": gpu,
            "pins": dict(_pairs(pins, "--pin", output)),
            "allowWeights": allow_weights or [], "allow": allowed, "skip": skip or []})
    except ValidationError as e:
        error = e.errors()[0]
        loc = [str(p) for p in error["loc"]]
        option = _OPTIONS.get(loc[0], loc[0]) if loc else "option"
        bad_input(f"{' '.join([option, *loc[1:]])}: {error['msg']}", output=output)


def run_audit(image: str, policy: AuditPolicy, *, largest: int, output: OutputFormat) -> NoReturn:
    """Audit, print, exit 0 (clean), 1 (violations) or 2 (not an image)."""
    from gates.image.audit import audit
    from gates.image.reader import ImageError

    try:
        report = audit(image, policy, largest=largest, progress=_progress("audit"))
    except ImageError as e:
        bad_input(str(e), output=output)
    if output is OutputFormat.json:
        print_json(report.model_dump(mode="json"))
    else:
        typer.echo(format_audit(report))
    raise typer.Exit(1 if report.violations else 0)


def run_diff(a: str, b: str, *, limit: int, output: OutputFormat) -> NoReturn:
    """Diff, print, exit 0 (identical), 1 (different) or 2 (not an image)."""
    from gates.image.diff import diff
    from gates.image.reader import ImageError

    try:
        result = diff(a, b, limit=limit, progress=_progress("diff"))
    except ImageError as e:
        bad_input(str(e), output=output)
    if output is OutputFormat.json:
        print_json(result.model_dump(mode="json"))
    else:
        typer.echo(format_diff(result))
    raise typer.Exit(0 if result.identical else 1)


def _mb(n: int | None) -> str:
    from gates.image.checks import human_bytes

    return "-" if n is None else human_bytes(n)


def format_audit(report: AuditReport) -> str:
    """The audit as plain text: summary, layers, largest files, libraries, violations."""
    how = "compressed" if report.pull_size_compressed else "as stored, uncompressed"
    lines = [
        f"image        {report.image}",
        f"digest       {report.digest or '- (a docker save archive has no manifest digest)'}",
        f"image id     {report.image_id}",
        f"pull size    {_mb(report.pull_size)} ({how}); unpacked {_mb(report.unpacked_size)}; "
        f"final {_mb(report.final_size)} in {report.files} files",
        f"wasted       {_mb(report.wasted_bytes)} (dive's count); removable by squashing "
        f"{_mb(report.removable_bytes)}",
        f"runs as      {report.config.user or 'root (no USER)'}",
        f"packages     {report.debian_packages} Debian, {report.python_distributions} Python",
        "", "layers",
        format_table(("#", "size", "unpacked", "files", "created by"), [
            (ly.index, _mb(ly.size), _mb(ly.unpacked_size), ly.files, ly.created_by or "-")
            for ly in report.layers]),
        "", "largest files",
        format_table(("size", "layer", "path"), [
            (_mb(p.size), p.layer, p.path) for p in report.largest_paths]),
    ]
    if report.libraries:
        lines += ["", "GPU libraries", format_table(("library", "version", "where"), [
            (lib.name, lib.version, lib.path) for lib in report.libraries])]
    lines += ["", f"verdict      {report.verdict.upper()}: {len(report.violations)} violation(s)"]
    for v in report.violations:
        lines.append(f"  {v.check}: {v.message}")
        lines.extend(f"      {p}" for p in v.paths[:10])
        if len(v.paths) > 10:
            lines.append(f"      ... {len(v.paths) - 10} more (--output json lists them)")
    return "\n".join(lines)


def format_diff(d: ImageDiff) -> str:
    """The diff as plain text."""
    lines = [f"A  {d.a}  {d.digest_a or d.image_id_a}", f"B  {d.b}  {d.digest_b or d.image_id_b}",
             f"{'IDENTICAL' if d.identical else 'DIFFERENT'}; {d.shared_layers} shared layer(s)"]
    for sign, layers in (("-", d.layers_removed), ("+", d.layers_added)):
        lines.extend(f"  {sign} layer {_mb(ly.unpacked_size)}  {ly.created_by or ly.diff_id}"
                     for ly in layers)
    f = d.files
    lines.append(f"files: +{f.counts.get('added', 0)} -{f.counts.get('removed', 0)} "
                 f"~{f.counts.get('changed', 0)} ({f.bytes_delta / 1e6:+,.1f} MB)")
    for sign, changes in (("+", f.added), ("-", f.removed), ("~", f.changed)):
        lines.extend(f"  {sign} {c.path}  {_mb(c.size_a)} -> {_mb(c.size_b)}"
                     for c in changes[:20])
    for title, versions in (("Debian packages", d.debian_packages),
                            ("Python distributions", d.python_distributions)):
        rows = [("+", k, "", v) for k, v in versions.added.items()]
        rows += [("-", k, v, "") for k, v in versions.removed.items()]
        rows += [("~", k, a, b) for k, (a, b) in versions.changed.items()]
        if rows:
            lines += [title, format_table(("", "name", "A", "B"), rows)]
    if d.config:
        lines += ["config", format_table(("field", "A", "B"), [
            (k, a, b) for k, (a, b) in d.config.items()])]
    return "\n".join(lines)


@image_app.command("audit")
def audit_command(
    image: Annotated[str, typer.Argument(help="oci-archive:PATH, docker-archive:PATH, oci:DIR "
                                         "or a path.")],
    max_pull_size: MaxPullOption = None, gpu: GpuOption = False, pin: PinOption = None,
    allow_weights: AllowWeightsOption = None, allow: AllowOption = None,
    skip: SkipOption = None, largest: LargestOption = 10,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Audit an image: sizes, layers, waste, findings; exit 1 on any violation."""
    policy = build_policy(max_pull_size=max_pull_size, gpu=gpu, pins=pin,
                          allow_weights=allow_weights, allow=allow, skip=skip, output=output)
    run_audit(image, policy, largest=largest, output=output)


@image_app.command("diff")
def diff_command(
    a: Annotated[str, typer.Argument(help="Image A (e.g. blue's).")],
    b: Annotated[str, typer.Argument(help="Image B (e.g. green's).")],
    limit: LimitOption = 200, output: OutputOption = OutputFormat.text,
) -> None:
    """What changed from A to B: layers, files, packages, config; exit 1 when they differ."""
    run_diff(a, b, limit=limit, output=output)


def audit_image_command(
    args: Annotated[list[str], typer.Argument(metavar="IMAGE | diff A B", help=(
        "An image to audit, or `diff A B`."))],
    max_pull_size: MaxPullOption = None, gpu: GpuOption = False, pin: PinOption = None,
    allow_weights: AllowWeightsOption = None, allow: AllowOption = None,
    skip: SkipOption = None, largest: LargestOption = 10, limit: LimitOption = 200,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Audit an image (exit 1 on violations), or `diff A B` (exit 1 when they differ)."""
    if args[0] == "diff":
        if len(args) != 3:
            bad_input("usage: rollout audit-image diff A B", output=output)
        if max_pull_size or gpu or pin or allow_weights or allow or skip:
            bad_input("audit options do not apply to diff", output=output)
        run_diff(args[1], args[2], limit=limit, output=output)
    if len(args) != 1:
        bad_input("usage: rollout audit-image IMAGE  (or: rollout audit-image diff A B)",
                  output=output)
    policy = build_policy(max_pull_size=max_pull_size, gpu=gpu, pins=pin,
                          allow_weights=allow_weights, allow=allow, skip=skip, output=output)
    run_audit(args[0], policy, largest=largest, output=output)


IdentityOption = Annotated[str, typer.Option(
    "--identity", metavar="REF", help="The docker reference the signature names, e.g. "
    "registry.example/sd/server:1.4 (a re-tagged image does not verify).")]
SigstoreOption = Annotated[Path | None, typer.Option(
    "--sigstore", metavar="DIR", help="Signature directory in containers' lookaside layout "
    "(DIR/<repository path>@sha256=<hex>/signature-N), as spec.image.signatures reads it.")]


@image_app.command("sign")
def sign_command(
    image: Annotated[str, typer.Argument(help="oci-archive:PATH, oci:DIR or a path (a docker "
                                         "save archive has no manifest digest to sign).")],
    key: Annotated[str, typer.Option("--key", metavar="FPR", help=(
        "Fingerprint (or key id) of the signing key in the GNUPGHOME."))],
    identity: IdentityOption,
    signature: Annotated[Path | None, typer.Option(
        "--signature", "-o", metavar="SIG", help="Write the signature to this file.")] = None,
    sigstore: SigstoreOption = None,
    gpg_home: Annotated[Path | None, typer.Option(
        "--gpg-home", metavar="DIR", help="GNUPGHOME holding the secret key (default: "
        "$GNUPGHOME, ~/.gnupg).")] = None,
    passphrase_file: Annotated[Path | None, typer.Option(
        "--passphrase-file", help="File holding the key's passphrase.")] = None,
    output: Annotated[OutputFormat, typer.Option("--output", help="text or json.")] =
        OutputFormat.text,
) -> None:
    """Sign the image's manifest digest for an identity (simple signing, skopeo)."""
    from gates.image.reader import ImageError
    from gates.image.signing import SignatureError, image_manifest, lookaside_path, sign

    if (signature is None) == (sigstore is None):
        bad_input("give -o SIG or --sigstore DIR (one of them)", output=output)
    try:
        if sigstore is not None:
            digest, _ = image_manifest(image)
            index = 1
            while lookaside_path(sigstore, identity, digest, index).exists():
                index += 1
            signature = lookaside_path(sigstore, identity, digest, index)
        assert signature is not None
        signed = sign(image, key=key, identity=identity, output=signature,
                      gnupg_home=gpg_home, passphrase_file=passphrase_file)
    except (ImageError, SignatureError) as e:
        bad_input(str(e), output=output)
    if output is OutputFormat.json:
        print_json({"verdict": "signed", **signed.model_dump(mode="json")})
    else:
        typer.echo(f"signed {signed.digest} as {signed.identity} with key {signed.key}\n"
                   f"signature {signed.signature}")


@image_app.command("verify")
def verify_command(
    image: Annotated[str, typer.Argument(help="oci-archive:PATH, oci:DIR or a path.")],
    identity: IdentityOption,
    keyring: Annotated[list[Path], typer.Option(
        "--keyring", metavar="FILE", help="Trusted public key file(s): gpg --export [--armor] "
        "(repeatable). Imported into a throwaway GNUPGHOME.")],
    signature: Annotated[Path | None, typer.Option(
        "--signature", metavar="SIG", help="The signature file.")] = None,
    sigstore: SigstoreOption = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Check a signature of the image's digest: exit 0 holds, 1 does not, 2 bad input."""
    from gates.image.reader import ImageError
    from gates.image.signing import (
        SignatureError,
        check_signatures,
        find_signatures,
        image_manifest,
    )

    if (signature is None) == (sigstore is None):
        bad_input("give --signature SIG or --sigstore DIR (one of them)", output=output)
    try:
        digest, manifest = image_manifest(image)
        found = [signature] if signature is not None else find_signatures(
            sigstore or Path(), identity, digest)
        checks = check_signatures(found, digest=digest, identity=identity, keys=keyring,
                                  manifest=manifest)
    except (ImageError, SignatureError) as e:
        bad_input(str(e), output=output)
    ok = bool(checks) and checks[-1].ok
    reason = checks[-1].reason if ok else "; ".join(c.reason for c in checks) or (
        f"unsigned: no signature for {digest} under {sigstore}")
    if output is OutputFormat.json:
        print_json({"verdict": "pass" if ok else "fail", "digest": digest,
                    "identity": identity, "reason": reason,
                    "signatures": [c.model_dump(mode="json") for c in checks]})
    else:
        typer.echo(f"{'VERIFIED' if ok else 'REFUSED'} {digest} as {identity}: {reason}")
    raise typer.Exit(0 if ok else 1)


def register(app: typer.Typer) -> None:
    """Add ``rollout image audit|diff|sign|verify`` and ``rollout audit-image`` to the CLI."""
    app.add_typer(image_app, name="image")
    app.command("audit-image", no_args_is_help=True)(audit_image_command)
