"""Files in a policy: every relative path is the policy file's, never the working directory's;
prompt sets by name, by file, inline, or from a ConfigMap; and ``rollout canary`` without
``--prompts`` from any directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fakes import url_policy
from fleet import StaticPlatform
from typer.testing import CliRunner

from gates.canary.fleet import Instance
from gates.canary.loopback import LoopbackBehaviour, LoopbackServer
from gates.verdict import Verdict
from rollout.analysis import PolicyAnalyzer
from rollout.cli import app
from rollout.machine import Plan, RolloutStatus
from rollout.platforms.local import LocalPlatform
from rollout.policy.loader import PolicyError, load_policy, parse_policy
from rollout.policy.models import ConfigMapPrompts, PromptSet

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "policies" / "prompts" / "tiny-64.yaml"
INLINE = """
  canary:
    prompts:
      name: inline-two
      defaults: {steps: 2, width: 64, height: 64}
      prompts:
        - {id: owl, prompt: "an owl", seed: 11}
        - {id: fox, prompt: "a fox", negativePrompt: "blurry", seed: 12}
"""
CONFIG_MAP = """
  canary: {prompts: {configMapRef: {name: sd-prompts, key: prompts.yaml}}}
"""
STEPS = "  steps: [{weight: 0}]\n  gates: [{type: latency}]\n"
PLATFORM = StaticPlatform({"blue": [Instance("http://127.0.0.1:9")],
                           "green": [Instance("http://127.0.0.1:9", pod="g", node="n")]})


def test_rollout_canary_without_prompts_works_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no policies/ here: the shipped default set is used
    fast = LoopbackBehaviour(service_s=0.002, jitter_s=0.002)
    with LoopbackServer(fast) as blue, LoopbackServer(fast) as green:
        r = CliRunner().invoke(app, ["canary", "--blue", blue.url, "--green", green.url,
                                     "--max-requests", "10", "--warmup", "0",
                                     "--output", "json"])
    assert r.exit_code in (0, 3), r.output
    doc = json.loads(r.stdout)
    assert doc["slices"]["judged"] == 10 and len(doc["instances"]) == 2


def test_every_relative_path_resolves_against_the_policy_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "policies" / "team"
    home.mkdir(parents=True)
    (home / "sets").mkdir()
    shutil.copy(TINY, home / "sets" / "mine.yaml")
    shutil.copytree(ROOT / "tests" / "data" / "engines", home / "engines")
    (home / "bin").mkdir()
    policy = home / "p.yaml"
    policy.write_text("""\
apiVersion: rollout-gates.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: paths, namespace: team-a}
spec:
  targets:
    blue: {type: url, url: "http://127.0.0.1:1"}
    green: {type: process, command: [./bin/sd-server, --port, "2"], url: "http://127.0.0.1:2"}
  router: {type: haproxy, socket: run/admin.sock}
  steps: [{weight: 0}]
  canary: {prompts: sets/mine.yaml}
  admission: {engineManifest: engines/manifest.json}
  gates: [{type: latency}]
""")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = load_policy(Path("..") / "policies" / "team" / "p.yaml")
    assert p.metadata.namespace == "team-a"
    spec = p.spec
    assert spec.canary.prompts == str((home / "sets" / "mine.yaml").resolve())
    assert spec.admission.engine_manifest == str((home / "engines" / "manifest.json").resolve())
    assert spec.router.type == "haproxy" and spec.router.socket == str(home / "run/admin.sock")
    assert spec.targets.green.type == "process"
    assert spec.targets.green.command == [str(home / "bin" / "sd-server"), "--port", "2"]
    # the saved copy keeps them absolute: it loads the same from anywhere
    again = parse_policy(json.dumps(p.model_dump(mode="json", by_alias=True)), "copy",
                         base_dir=tmp_path)
    assert again == p


def test_a_bare_program_name_is_looked_up_on_path_not_resolved() -> None:
    p = parse_policy(url_policy("bare", "http://127.0.0.1:1", "http://127.0.0.1:2", STEPS)
                     .replace('green: {type: url, url: "http://127.0.0.1:2"}',
                              'green: {type: process, command: [sd-server], '
                              'url: "http://127.0.0.1:2"}'))
    assert p.spec.targets.green.type == "process" and p.spec.targets.green.command == ["sd-server"]


def test_an_inline_prompt_set_is_the_canarys(tmp_path: Path) -> None:
    p = parse_policy(url_policy("inline", "http://127.0.0.1:1", "http://127.0.0.1:2",
                                STEPS + INLINE))
    assert isinstance(p.spec.canary.prompts, PromptSet)
    config = PolicyAnalyzer(p, PLATFORM, records_dir=tmp_path).canary_config()
    assert [(x.id, x.steps, x.negative_prompt) for x in config.prompts] == [
        ("owl", 2, ""), ("fox", 2, "blurry")]
    assert config.green_instances == (Instance("http://127.0.0.1:9", pod="g", node="n"),)


def test_an_invalid_inline_prompt_set_is_a_load_error_with_its_line() -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(url_policy("inline", "http://127.0.0.1:1", "http://127.0.0.1:2",
                                STEPS + INLINE.replace("seed: 12", "seed: -1")))
    assert any(i.path.startswith("spec.canary.prompts") and i.line > 0 for i in e.value.issues)


def test_a_config_map_prompt_set_is_read_through_the_platform(tmp_path: Path) -> None:
    p = parse_policy(url_policy("cm", "http://127.0.0.1:1", "http://127.0.0.1:2",
                                STEPS + CONFIG_MAP))
    assert isinstance(p.spec.canary.prompts, ConfigMapPrompts)
    platform = StaticPlatform(PLATFORM.fleet, {"sd-prompts": {"prompts.yaml": TINY.read_text()}})
    config = PolicyAnalyzer(p, platform, records_dir=tmp_path).canary_config()
    assert config.prompts[0].id == "lighthouse" and len(config.prompts) == 8


def test_a_config_map_prompt_set_on_the_local_platform_is_a_gate_error_naming_it(
        tmp_path: Path) -> None:
    p = parse_policy(url_policy("cm", "http://127.0.0.1:1", "http://127.0.0.1:2",
                                STEPS + CONFIG_MAP))
    analyzer = PolicyAnalyzer(p, LocalPlatform(p, log_dir=tmp_path), records_dir=tmp_path)
    obs = analyzer.analyze(RolloutStatus(name="cm", plan=Plan(weights=(0,))), 0)
    gate = obs.gates["latency"]
    assert gate.verdict is Verdict.ERROR
    assert "ConfigMap sd-prompts" in gate.reason and "kubernetes" in gate.reason


def test_rollout_canary_refuses_a_config_map_prompt_set_without_prompts(tmp_path: Path) -> None:
    policy = tmp_path / "cm.yaml"
    policy.write_text(url_policy("cm", "http://127.0.0.1:1", "http://127.0.0.1:2",
                                 STEPS + CONFIG_MAP))
    r = CliRunner().invoke(app, ["canary", "--policy", str(policy), "--output", "json"])
    assert r.exit_code == 2 and "give --prompts" in r.output
