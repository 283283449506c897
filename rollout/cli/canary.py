"""``rollout canary``: seeded canary requests to blue and green, judged as they finish.

Each colour may be a fleet: ``--blue``/``--green`` are repeatable (or the policy's
``targets.<colour>.urls``); the slices are spread over every instance and each green instance
is judged against blue's pool too (:mod:`gates.stats.fleet`). ``--output json`` has
``instances: [{arm, url, pod, node, n, p50, p95, errors, verdict}]``."""

from __future__ import annotations

import math
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from rollout.cli._common import OutputFormat, bad_input, print_json

if TYPE_CHECKING:
    from gates.canary.runner import CanaryConfig, CanaryProgress, CanaryResult

__all__ = ["register"]


class ApiChoice(StrEnum):
    """``--api`` choices."""

    openai = "openai"
    a1111 = "a1111"


class ImageCheckChoice(StrEnum):
    """``--image-check`` choices (see :mod:`gates.canary.output_check`)."""

    valid = "valid"
    report = "report"
    equal = "equal"
    distance = "distance"


# Long by its option declarations (typer reads them from the signature); the body is short.
def canary_command(
    blue: Annotated[list[str] | None, typer.Option(help=(
        "Blue (current) base URL, repeatable for every instance of a fleet; default: the "
        "policy's blue target."))] = None,
    green: Annotated[list[str] | None, typer.Option(help=(
        "Green (new) base URL, repeatable for every instance of a fleet (each is judged "
        "against blue's pool); default: the policy's green target."))] = None,
    prompts: Annotated[Path | None, typer.Option(help=(
        "Prompt-set YAML or a shipped set's name; default: the policy's, else the shipped "
        "sd15-512 (from any working directory)."))] = None,
    policy: Annotated[Path | None, typer.Option(help=(
        "RolloutPolicy: canary settings, targets and gates (flags override it)."))] = None,
    api: Annotated[ApiChoice | None, typer.Option(help="Image API of both arms.")] = None,
    model: Annotated[str | None, typer.Option(help="OpenAI API: the model field.")] = None,
    blue_per_green: Annotated[int | None, typer.Option(
        min=1, help="K blue requests per green one in each slice.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help=("Requests in flight per arm (blue: K x N), each arm its own closed "
                      "loop; default 8."))] = None,
    rate: Annotated[float | None, typer.Option(
        help="Mean slices per second, Poisson arrivals (open loop), instead of --concurrency.")
    ] = None,
    max_requests: Annotated[int | None, typer.Option(
        min=1, help="Budget of green requests (= slices).")] = None,
    warmup: Annotated[int | None, typer.Option(
        min=0, help="Unjudged warm-up requests per arm.")] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Per-request timeout in seconds.")] = None,
    deadline: Annotated[float | None, typer.Option(
        help="Hard limit on the whole run in seconds; default: the policy's, else 1800.")
    ] = None,
    quantile: Annotated[float | None, typer.Option(help="Latency gate: quantile judged.")] = None,
    max_ratio: Annotated[float | None, typer.Option(
        help="Latency gate: allowed green/blue slowdown factor.")] = None,
    alpha: Annotated[float | None, typer.Option(
        help="Latency gate: false-rollback bound.")] = None,
    max_error_rate: Annotated[float | None, typer.Option(
        help="Error-rate gate: largest acceptable fraction of failed green requests.")] = None,
    image_check: Annotated[ImageCheckChoice | None, typer.Option(help=(
        "valid: fail on broken green images (undecodable, wrong size or count, blank); "
        "equal: valid and identical pixels; distance: valid and block-luminance distance at "
        "most --max-image-distance; report: never gate; default: the policy's outputCheck, "
        "else valid."))] = None,
    max_image_distance: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Bound for --image-check distance; default: the policy's, "
        "else 0.02.")] = None,
    header: Annotated[list[str] | None, typer.Option(
        help="Extra request header 'Name: value' (repeatable).")] = None,
    token_file: Annotated[Path | None, typer.Option(
        help="File holding a bearer token sent as 'Authorization: Bearer ...'.")] = None,
    ca_bundle: Annotated[Path | None, typer.Option(
        help="CA certificates to verify HTTPS servers with.")] = None,
    insecure: Annotated[bool, typer.Option(
        help="Do not verify TLS certificates (verification is on by default).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the arm-order shuffle.")] = 0,
    records: Annotated[Path | None, typer.Option(help=(
        "Directory for requests.jsonl, blue.jsonl and green.jsonl (the last two feed "
        "`rollout compare --blue DIR/blue.jsonl --green DIR/green.jsonl`)."))] = None,
    progress: Annotated[bool | None, typer.Option(
        help="Live progress line on stderr; default: when stderr is a terminal.")] = None,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="text or json.")] = (
        OutputFormat.text),
) -> None:
    """Send seeded SD requests to blue and green in shared time slices until the gates decide.
    Exit 0 pass, 1 fail, 2 bad input, 3 inconclusive, 4 no data."""
    options = dict(locals())  # every flag, by name, for _build_config
    import asyncio

    from gates.canary.runner import run_canary
    from gates.verdict import EXIT_CODES

    try:
        config = _build_config(options)
    except (ValueError, OSError) as e:
        bad_input(str(e), output=output)
    show = sys.stderr.isatty() if progress is None else progress
    line = _ProgressLine(sys.stderr) if show else None
    try:
        result = asyncio.run(run_canary(config, records_dir=records,
                                        on_progress=line.update if line else None))
    except OSError as e:
        bad_input(f"cannot write records: {e}", output=output)
    finally:
        if line is not None:
            line.close()
    if output is OutputFormat.json:
        print_json(_json_document(result))
    else:
        _print_text(result, config)
    raise typer.Exit(EXIT_CODES[result.verdict])


def _build_config(o: dict[str, Any]) -> CanaryConfig:
    """:meth:`CanaryConfig.from_spec` of the policy (or of the defaults), then flags on top.

    Raises:
        ValueError: inconsistent or invalid settings (a bad policy or prompt set included).
        OSError: an unreadable token file.
    """
    from dataclasses import replace

    from gates.canary.fleet import Instance
    from gates.canary.prompts import load_prompts
    from gates.canary.records import ARMS, Arm
    from gates.canary.runner import CanaryConfig
    from gates.error_rate import ErrorRateGateSpec
    from gates.latency import LatencyGateSpec
    from rollout.policy.models import CanarySpec, ConfigMapPrompts, GateSpec, LimitsSpec

    if o["concurrency"] is not None and o["rate"] is not None:
        raise ValueError("give --concurrency or --rate, not both")
    if o["insecure"] and o["ca_bundle"] is not None:
        raise ValueError("give --insecure or --ca-bundle, not both")
    canary, limits = CanarySpec(), LimitsSpec()
    urls: dict[Arm, list[str]] = {"blue": [], "green": []}
    gates: list[GateSpec] = [LatencyGateSpec(), ErrorRateGateSpec()]
    if o["policy"] is not None:
        from rollout.policy.loader import load_policy

        pol = load_policy(o["policy"]).spec
        canary, limits, gates = pol.canary, pol.limits, list(pol.gates)
        urls = {arm: _target_urls(getattr(pol.targets, arm)) for arm in ARMS}
    fleet = {arm: [Instance(u.rstrip("/")) for u in o[arm] or urls[arm]] for arm in ARMS}
    if not fleet["blue"] or not fleet["green"]:
        raise ValueError("give --blue and --green (or a policy whose targets have URLs)")
    prompts = load_prompts(o["prompts"]).prompts if o["prompts"] is not None else None
    if prompts is None and isinstance(canary.prompts, ConfigMapPrompts):
        raise ValueError(f"the policy's prompt set is in ConfigMap "
                         f"{canary.prompts.config_map_ref.name}, which only the kubernetes "
                         "platform reads: give --prompts")
    config = CanaryConfig.from_spec(canary, gates, fleet=fleet,
                                    max_body_bytes=limits.canary_max_bytes, prompts=prompts)
    return replace(config, **_flag_overrides(o, config))


def _target_urls(target: object) -> list[str]:
    """The base URLs of a policy target (url targets: every one; process targets: theirs)."""
    from rollout.policy.models import ProcessTarget, UrlTarget

    if isinstance(target, UrlTarget):
        return target.base_urls
    return [target.url] if isinstance(target, ProcessTarget) else []


def _flag_overrides(o: dict[str, Any], config: CanaryConfig) -> dict[str, Any]:
    """The config fields the command line sets (a flag not given keeps the policy's value).

    Raises:
        ValueError: an invalid gate override.
        OSError: an unreadable token file.
    """
    from gates.canary.output_check import OutputCheckSpec
    from gates.error_rate import ErrorRateGateSpec
    from gates.latency import LatencyGateSpec

    fields = {"blue_per_green": "blue_per_green", "concurrency": "concurrency", "rate": "rate",
              "max_requests": "max_requests", "warmup": "warmup_requests",
              "timeout": "timeout_s", "deadline": "deadline_s", "model": "model"}
    out: dict[str, Any] = {f: o[flag] for flag, f in fields.items() if o[flag] is not None}
    if o["concurrency"] is not None:
        out["rate"] = None  # a closed loop asked for: not the policy's open-loop rate
    if o["api"] is not None:
        out["api"] = o["api"].value
    gate = {k: o[k] for k in ("quantile", "max_ratio", "alpha") if o[k] is not None}
    if gate:
        out["latency_gates"] = tuple(LatencyGateSpec.model_validate({**g.model_dump(), **gate})
                                     for g in config.latency_gates)
    if o["max_error_rate"] is not None:
        out["error_gate"] = ErrorRateGateSpec.model_validate(
            {**config.error_gate.model_dump(), "max_rate": o["max_error_rate"]})
    if o["image_check"] is not None or o["max_image_distance"] is not None:
        check = config.output_check
        out["output_check"] = OutputCheckSpec(
            mode=o["image_check"].value if o["image_check"] is not None else check.mode,
            max_distance=o["max_image_distance"] if o["max_image_distance"] is not None
            else check.max_distance)
    headers = [_header(h) for h in o["header"] or []]
    if o["token_file"] is not None:
        token = Path(o["token_file"]).read_text(encoding="utf-8").strip()
        headers.append(("Authorization", f"Bearer {token}"))
    out.update(headers=tuple(headers), seed=o["seed"], verify=False if o["insecure"] else (
        str(o["ca_bundle"]) if o["ca_bundle"] is not None else True))
    return out


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--header must look like 'Name: value', got {text!r}")
    return name.strip(), value.strip()


class _ProgressLine:
    """One self-overwriting status line (the runner calls at most ten times a second)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.width = 0

    def update(self, p: CanaryProgress) -> None:
        filled = int(20 * p.slices / p.budget)
        arms = "  ".join(f"{a} {p.requests[a]} req P95 {_secs(p.p95[a])} err {p.errors[a]}"
                         for a in ("blue", "green"))
        text = (f"[{'#' * filled}{'.' * (20 - filled)}] {p.slices}/{p.budget} slices  {arms}  "
                f"{p.judge}  {p.elapsed_s:.0f}s")
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        if self.width:
            self.stream.write("\n")
            self.stream.flush()


def _secs(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.3f}s"


def _json_document(r: CanaryResult) -> dict[str, Any]:
    from gates.compare import summarize

    doc = r.to_dict()
    for arm in ("blue", "green"):
        doc[arm] = {**summarize(r.latencies[arm], arm=arm).to_dict(),
                    "errors": sum(r.errors[arm].values())}
    return doc


def _print_text(r: CanaryResult, config: CanaryConfig) -> None:
    import numpy as np

    typer.echo(f"verdict: {r.verdict.value.upper()}   (stopped by {r.stopped_by} after "
               f"{r.elapsed_s:.1f} s)")
    typer.echo(f"reason:  {r.reason}")
    s = r.slices
    typer.echo(f"slices:  {s['judged']} judged, {s['excluded']} left out (failed requests), "
               f"{s['cancelled']} cancelled, of {s['sent']} sent\n")
    typer.echo(f"{'arm':<6} {'requests':>8} {'judged':>7} {'P50':>9} {'P95':>9} {'P99':>9}  errors")
    for arm in ("blue", "green"):
        lat = r.latencies[arm]
        q = [float(np.quantile(lat, p)) if lat.size else None for p in (0.5, 0.95, 0.99)]
        errs = ", ".join(f"{k} {n}" for k, n in r.errors[arm].items() if n) or "none"
        typer.echo(f"{arm:<6} {r.requests[arm]:>8} {lat.size:>7} "
                   + " ".join(f"{_secs(v):>9}" for v in q) + f"  {errs}")
    if len(r.instances) > 2:  # a fleet: what each instance served
        typer.echo(f"\n{'arm':<6} {'instance':<40} {'judged':>7} {'P50':>9} {'P95':>9} "
                   f"{'errors':>6}  verdict")
        for i in r.instances:
            where = i.pod + (f"@{i.node}" if i.node else "") if i.pod else i.url
            typer.echo(f"{i.arm:<6} {where:<40} {i.n:>7} {_secs(i.p50):>9} {_secs(i.p95):>9} "
                       f"{i.errors:>6}  {i.verdict}")
    typer.echo("")
    for g in r.gates:
        typer.echo(f"gate {g.name} ({g.kind}): {g.verdict.value.upper()}: {g.reason}")
    if not r.output.gating:
        typer.echo(f"images: {r.output.reason}")
    if r.records:
        typer.echo(f"\nrecords: {r.records['requests']}")
        for spec in config.latency_gates:
            typer.echo(f"compare: rollout compare --blue {r.records['blue']} --green "
                       f"{r.records['green']} --method {spec.method} --quantile "
                       f"{spec.quantile:g} --max-ratio {spec.max_ratio:g} --alpha {spec.alpha:g} "
                       f"--blue-per-green {config.blue_per_green}")


def register(app: typer.Typer) -> None:
    """Add ``rollout canary`` to the CLI."""
    app.command("canary")(canary_command)
