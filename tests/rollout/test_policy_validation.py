"""Issue 13, one policy language fully validated at load: what failed only at run time is now a
load error with its path, line and fix (selector, URLs, durations, prompt files), ``maxRatio``
means one thing under every method, and ``metadata.labels`` reaches the notifications."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import url_policy
from typer.testing import CliRunner

from gates.canary.prompts import load_prompts, resolve_prompts, shipped_prompt_sets
from gates.compare import METHODS, compare
from gates.latency import LatencyGateSpec
from gates.utilization.floor import UtilizationRequirements
from gates.utilization.prometheus import dcgm_query
from gates.verdict import Verdict
from rollout.cli import app
from rollout.notify import NotifyEvent, payload
from rollout.policy.loader import PolicyError, load_policy, parse_policy
from rollout.policy.models import CanarySpec, PrometheusSourceSpec, RolloutPolicy

ROOT = Path(__file__).resolve().parents[2]
SD15 = ROOT / "policies" / "examples" / "sd15-512.yaml"
runner = CliRunner()


def policy(spec_extra: str = "", gates: str = "[{type: latency}]", *, canary: str = "",
           metadata: str = "") -> str:
    return f"""\
apiVersion: rollout-gates.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: t{metadata}
spec:
  targets:
    blue: {{type: url, url: "http://127.0.0.1:8001"}}
    green: {{type: url, url: "http://127.0.0.1:8002"}}
  steps: [{{weight: 0}}]
  metrics: {{prometheus: {{url: "http://prom:9090"}}}}
  gates: {gates}
{canary}{spec_extra}"""


def issues(text: str, base_dir: Path | None = None) -> list[tuple[str, int, str]]:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml", base_dir=base_dir)
    return [(i.path, i.line, i.message) for i in e.value.issues]


# --- the utilization selector (crashed the shipped sd15-512 rollout in Analyzing) -----------


def test_shipped_sd15_policy_builds_its_dcgm_query() -> None:
    """Failed before: the example's selector 'color="green"' validated, then dcgm_query raised
    ValueError at run time and the rollout crashed."""
    pol = load_policy(SD15)
    (gate,) = [g for g in pol.spec.gates if isinstance(g, UtilizationRequirements)]
    assert dcgm_query(gate.metric, gate.selector) == 'DCGM_FI_DEV_GPU_UTIL{color="green"}'


def test_bare_matcher_list_is_normalised_to_the_form_dcgm_query_takes() -> None:
    pol = parse_policy(policy(gates="""
    - {type: latency}
    - {type: utilization, floorPercent: 50, selector: 'color="green", namespace=~"sd.*"'}"""))
    gate = pol.spec.gates[1]
    assert isinstance(gate, UtilizationRequirements)
    assert gate.selector == '{color="green", namespace=~"sd.*"}'
    assert dcgm_query(gate.metric, gate.selector).endswith(gate.selector)


@pytest.mark.parametrize("selector", ["color=green", "{color=\"green\"", "up or vector(1)",
                                      "{color=\"green\"} offset 1h"])
def test_bad_selector_is_a_load_error_with_line_and_fix(selector: str) -> None:
    text = policy(gates=f"""
    - {{type: latency}}
    - type: utilization
      floorPercent: 50
      selector: '{selector.replace("'", "''")}'""")
    ((path, line, msg),) = issues(text)
    assert path == "spec.gates[1].selector" and line == 15
    assert "PromQL label selector" in msg and 'name="value"' in msg


def test_selector_with_nvml_source_is_refused() -> None:
    ((path, _, msg),) = issues(policy(gates="""
    - {type: latency}
    - {type: utilization, floorPercent: 50, source: nvml, selector: '{a="b"}'}"""))
    assert path == "spec.gates[1]" and "source: prometheus only" in msg


# --- URLs, durations, quantiles, rates ------------------------------------------------------


@pytest.mark.parametrize(("url", "needle"), [
    ("http://", "no host"), ("http://:8000", "no host"), ("ftp://h", "http"),
    ("http://h:99999", "malformed"), ("http://h:port", "malformed"), ("http://h/ x", "whitespace"),
    ("http://h:8000/?x=1", "query"), ("http://h:0", "port 0")])
def test_bad_urls_are_refused_with_the_reason(url: str, needle: str) -> None:
    found = issues(policy().replace("http://127.0.0.1:8002", url))
    ((path, line, msg),) = found
    assert path == "spec.targets.green.url" and line == 8
    assert needle in msg


def test_prometheus_url_is_checked_too() -> None:
    ((path, _, msg),) = issues(policy().replace("http://prom:9090", "http://"))
    assert path == "spec.metrics.prometheus.url" and "no host" in msg


@pytest.mark.parametrize(("block", "path"), [
    ("  canary: {timeoutSeconds: 100000}\n", "spec.canary.timeoutSeconds"),
    ("  canary: {deadlineSeconds: 1.0e+7}\n", "spec.canary.deadlineSeconds"),
    ("  canary: {rate: 0}\n", "spec.canary.rate"),
    ("  promotion: {verifySeconds: 1.0e+9}\n", "spec.promotion.verifySeconds"),
    ("  limits: {exchangeSeconds: 0}\n", "spec.limits.exchangeSeconds"),
])
def test_durations_and_rates_are_bounded(block: str, path: str) -> None:
    assert [p for p, _, _ in issues(policy(block))] == [path]


def test_deadline_shorter_than_one_request_is_refused() -> None:
    ((path, _, msg),) = issues(policy("  canary: {timeoutSeconds: 120, deadlineSeconds: 60}\n"))
    assert path == "spec.canary" and "deadlineSeconds" in msg


@pytest.mark.parametrize(("gate", "path"), [
    ("{type: latency, quantile: 1.0}", "spec.gates[0].quantile"),
    ("{type: latency, quantile: 0}", "spec.gates[0].quantile"),
    ("{type: error-rate, maxRate: 1}", "spec.gates[0].maxRate"),
    ("{type: latency, maxRatio: 0}", "spec.gates[0].maxRatio"),
])
def test_quantiles_and_rates(gate: str, path: str) -> None:
    assert [p for p, _, _ in issues(policy(gates=f"[{gate}]"))] == [path]


# --- file references: relative to the policy file, shipped sets from anywhere ---------------


def test_shipped_policy_loads_and_builds_its_prompt_set_from_another_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed before: canary.prompts was read relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    for f in sorted((ROOT / "policies" / "examples").glob("*.yaml")):
        pol = load_policy(f)
        assert load_prompts(pol.spec.canary.prompts).prompts


def test_default_prompt_set_loads_from_any_cwd(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pol = parse_policy(policy())
    assert pol.spec.canary.prompts == "sd15-512"
    assert load_prompts(pol.spec.canary.prompts).name == "sd15-512"
    assert load_prompts(CanarySpec().prompts).name == "sd15-512"
    # the form earlier releases documented still names the shipped set
    assert load_prompts("policies/prompts/tiny-64.yaml").name == "tiny-64"


def test_relative_prompts_resolve_against_the_policy_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg" / "sets").mkdir(parents=True)
    (tmp_path / "cfg" / "sets" / "mine.yaml").write_text(
        "name: mine\nprompts:\n  - {id: a, prompt: a cat, seed: 1}\n")
    f = tmp_path / "cfg" / "policy.yaml"
    f.write_text(policy(canary="  canary: {prompts: sets/mine.yaml}\n"))
    monkeypatch.chdir(tmp_path)  # not the policy's directory
    pol = load_policy(Path("cfg/policy.yaml"))
    assert pol.spec.canary.prompts == str((tmp_path / "cfg" / "sets" / "mine.yaml").resolve())
    monkeypatch.chdir("/")
    assert load_prompts(pol.spec.canary.prompts).name == "mine"
    # the saved JSON copy reads back as the same policy, wherever it is read
    again = RolloutPolicy.model_validate_json(pol.model_dump_json(by_alias=True))
    assert again == pol


def test_missing_or_invalid_prompt_file_is_a_load_error_naming_the_resolved_path(
        tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(policy(canary="  canary:\n    prompts: nope/missing.yaml\n"))
    with pytest.raises(PolicyError) as e:
        load_policy(f)
    ((issue),) = e.value.issues
    assert (issue.path, issue.line) == ("spec.canary.prompts", 13)
    assert str(tmp_path / "nope" / "missing.yaml") in issue.message
    (tmp_path / "bad.yaml").write_text("name: bad\nprompts: []\n")
    f.write_text(policy(canary="  canary: {prompts: bad.yaml}\n"))
    with pytest.raises(PolicyError, match=r"bad\.yaml.*prompts"):
        load_policy(f)


def test_unknown_shipped_name_lists_the_shipped_ones() -> None:
    ((path, _, msg),) = issues(policy(canary="  canary: {prompts: sd99}\n"))
    assert path == "spec.canary.prompts"
    assert all(name in msg for name in ("sd15-512", "sdxl-1024", "tiny-64"))


def test_prompt_sets_are_package_data_and_the_checkout_links_to_them() -> None:
    assert set(shipped_prompt_sets()) >= {"sd15-512", "sdxl-1024", "tiny-64"}
    for name in shipped_prompt_sets():
        checkout = ROOT / "policies" / "prompts" / f"{name}.yaml"
        assert checkout.samefile(resolve_prompts(name))
        assert "gates" in resolve_prompts(name).parts


# --- maxRatio: one meaning under every method ----------------------------------------------


def test_threshold_and_bootstrap_have_no_hidden_tolerance() -> None:
    """Failed before: a hidden tolerance=0.1 made maxRatio 1.0 mean x1.1 for these methods."""
    blue = np.linspace(1.0, 2.0, 400)
    green = blue * 1.06  # 6% slower at every quantile
    for method in ("threshold", "bootstrap"):
        assert compare(blue, green, method=method).verdict is Verdict.FAIL  # type: ignore[arg-type]
        assert compare(blue, green, method=method,  # type: ignore[arg-type]
                       max_ratio=1.1).verdict is Verdict.PASS


@pytest.mark.parametrize("method", [m for m in METHODS if m != "kayenta"])
def test_tolerance_is_the_same_factor_under_every_method(method: str) -> None:
    rng = np.random.default_rng(3)
    blue = rng.lognormal(0.9, 0.1, 400)
    green = rng.lognormal(0.9, 0.1, 400) * 1.3
    a = compare(blue, green, method=method, max_ratio=1.5)  # type: ignore[arg-type]
    b = compare(blue, green, method=method, max_ratio=1.25, tolerance=0.2)  # type: ignore[arg-type]
    assert a.verdict is b.verdict and a.parameters["limit"] == pytest.approx(1.5)
    assert b.parameters["limit"] == pytest.approx(1.5)


def test_kayenta_refuses_a_ratio_it_cannot_honour() -> None:
    """Failed before: kayenta ignored maxRatio silently."""
    blue = np.linspace(1.0, 2.0, 100)
    with pytest.raises(ValueError, match="kayenta cannot honour"):
        compare(blue, blue * 1.2, method="kayenta", max_ratio=1.5)
    ((path, _, msg),) = issues(policy(gates="[{type: latency, method: kayenta, maxRatio: 1.1}]"))
    assert path == "spec.gates[0]" and "kayenta cannot honour maxRatio 1.1" in msg
    assert parse_policy(policy(gates="[{type: latency, method: kayenta}]")).spec.gates


def test_kayenta_alpha_sets_its_confidence_and_a_faster_green_is_no_failure() -> None:
    blue = np.linspace(1.0, 2.0, 200)
    r = compare(blue, blue, method="kayenta", alpha=0.05)
    assert r.parameters["confidence"] == pytest.approx(0.9)
    assert r.parameters["direction"] == "increase"
    assert compare(blue, blue * 0.5, method="kayenta").verdict is Verdict.PASS


def test_cli_compare_kayenta_with_a_ratio_is_bad_input(tmp_path: Path) -> None:
    for arm in ("b", "g"):
        (tmp_path / f"{arm}.json").write_text(json.dumps(list(np.linspace(1, 2, 50))))
    res = runner.invoke(app, ["compare", "--blue", str(tmp_path / "b.json"), "--green",
                              str(tmp_path / "g.json"), "--method", "kayenta",
                              "--max-ratio", "1.1"])
    assert res.exit_code == 2 and "kayenta cannot honour" in res.stderr


def test_live_gate_margin_is_explicit() -> None:
    """Failed before: metrics.prometheus.tolerance (0.15) widened live maxRatio silently."""
    gate = LatencyGateSpec(source="prometheus", max_ratio=1.2, tolerance=0.1)
    assert gate.limit == pytest.approx(1.32)
    assert LatencyGateSpec(source="prometheus").limit == 1.0
    # The source has no tolerance at all any more (not even a read-only 0): the gate has it.
    assert not hasattr(PrometheusSourceSpec(url="http://prom:9090"), "tolerance")
    text = policy().replace('{url: "http://prom:9090"}',
                            '{url: "http://prom:9090", tolerance: 0.15}')
    ((path, _, msg),) = issues(text)
    assert path == "spec.metrics.prometheus" and "tolerance on the latency gate" in msg
    ((path, _, msg),) = issues(policy(gates="[{type: latency, source: prometheus, "
                                            "method: bootstrap}]"))
    assert path == "spec.gates[0]" and "does not apply to source: prometheus" in msg


# --- metadata.labels ------------------------------------------------------------------------


def test_labels_are_validated_and_copied_into_payloads() -> None:
    pol = load_policy(SD15)
    assert pol.metadata.labels == {"model": "sd15"}
    ((path, _, msg),) = issues(policy(metadata="\n  labels: {'bad key!': x}"))
    assert path == "metadata.labels" and "label key" in msg
    ((path, _, msg),) = issues(policy(metadata="\n  labels: {team: '-ml'}"))
    assert "label value" in msg
    from rollout.machine import Phase, Plan, RolloutStatus

    prev = RolloutStatus(name="t", plan=Plan(weights=(0, 100)), phase=Phase.PROMOTING)
    nxt = prev.model_copy(update={"phase": Phase.PROMOTED})
    body = payload(NotifyEvent.promoted, prev, nxt, fmt="json", labels=pol.metadata.labels)
    assert body["labels"] == {"model": "sd15"}
    assert payload(NotifyEvent.promoted, prev, nxt, fmt="json")["labels"] == {}
    slack = payload(NotifyEvent.promoted, prev, nxt, fmt="slack", labels={"model": "sd15"})
    assert "model=sd15" in json.dumps(slack)


# --- --policy spelled the same ---------------------------------------------------------------


def test_validate_takes_policy_option_and_positional_files() -> None:
    res = runner.invoke(app, ["policy", "validate", "--policy", str(SD15)])
    assert res.exit_code == 0 and "ok (sd15-512)" in res.stdout
    res = runner.invoke(app, ["policy", "validate", str(SD15), "--policy", str(SD15)])
    assert res.exit_code == 0 and res.stdout.count("ok (sd15-512)") == 2
    res = runner.invoke(app, ["policy", "validate"])
    assert res.exit_code == 2 and "--policy" in res.stderr


def test_a_provider_both_required_and_forbidden_is_refused() -> None:
    ((path, _, msg),) = issues(policy(gates="""
    - type: capability
      requireProviders: [CUDAExecutionProvider]
      forbidProviders: [CUDAExecutionProvider, CPUExecutionProvider]"""))
    assert path == "spec.gates[0]" and "both required and forbidden" in msg


def test_int8_is_refused_at_load_without_the_canary_accuracy_gate(tmp_path: Path) -> None:
    """INT8 changes outputs: a policy may allow it only where the canary compares green's
    images with blue's FP16 reference (outputCheck mode distance)."""
    from rollout.policy.loader import PolicyError, load_policy

    def policy(mode: str) -> Path:
        path = tmp_path / f"int8-{mode}.yaml"
        path.write_text(url_policy("int8", "http://127.0.0.1:8001", "http://127.0.0.1:8002", f"""
  steps: [{{weight: 0}}]
  canary: {{outputCheck: {{mode: {mode}}}}}
  gates:
    - {{type: capability, name: ort, ort: {{allowInt8: true}}}}
"""))
        return path

    with pytest.raises(PolicyError, match="allowInt8"):
        load_policy(policy("report"))
    assert load_policy(policy("distance")).spec.gates[0].name == "ort"
