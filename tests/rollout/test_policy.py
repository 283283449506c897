"""The policy language: shipped examples validate, errors carry path and line, schema is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.cli.policy import schema_document
from rollout.policy.loader import PolicyError, parse_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "policies" / "examples").glob("*.yaml"))
runner = CliRunner()

BAD = """\
apiVersion: rollout-gates.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: Bad_Name
spec:
  targets:
    blue: {type: url, url: "http://127.0.0.1:1"}
    green:
      type: url
  steps:
    - weight: 10
  gates:
    - type: latency
      maxRatoi: 1.2
      quantile: 1.5
    - type: bogus
"""


def test_examples_exist_and_validate() -> None:
    assert len(EXAMPLES) >= 3
    result = runner.invoke(app, ["policy", "validate", *map(str, EXAMPLES)])
    assert result.exit_code == 0, result.output
    for f in EXAMPLES:
        assert f"{f}: ok" in result.output


def test_every_error_reported_with_path_and_line() -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(BAD, "bad.yaml")
    got = {(i.path, i.line) for i in e.value.issues}
    assert ("metadata.name", 4) in got
    assert ("spec.targets.green.url", 8) in got
    assert ("spec.gates[0].maxRatoi", 14) in got
    assert ("spec.gates[0].quantile", 15) in got
    assert ("spec.gates[1]", 16) in got
    unknown = next(i for i in e.value.issues if i.path.endswith("maxRatoi"))
    assert "unknown field" in unknown.message


def test_validate_cli_exit_2_and_json(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(BAD)
    result = runner.invoke(app, ["policy", "validate", str(p), "--output", "json"])
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    assert {"path": "spec.gates[0].quantile", "line": 15,
            "message": "Input should be less than 1"} in doc["files"][0]["errors"]


@pytest.mark.parametrize(("text", "needle"), [
    ("a: [1, 2\n", "invalid YAML"),
    ("- 1\n- 2\n", "YAML mapping"),
])
def test_not_a_policy(text: str, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle):
        parse_policy(text)


def test_semantic_checks() -> None:
    doc = BAD.replace("Bad_Name", "ok").replace("      maxRatoi: 1.2\n      quantile: 1.5\n", "")
    doc = doc.replace("    - type: bogus\n", "    - type: latency\n")
    doc = doc.replace("      type: url\n", "      type: url\n      url: http://x\n")
    with pytest.raises(PolicyError, match="gate names must be unique"):
        parse_policy(doc)
    doc = doc.replace("    - type: latency\n", "    - {type: latency, name: other}\n", 1)
    assert parse_policy(doc).spec.steps[0].weight == 10
    blind = doc.replace("    - weight: 10\n",
                        "    - weight: 10\n    - {weight: 100, canary: false}\n")
    with pytest.raises(PolicyError, match=r"steps \[1\] set canary: false.*always ends nodata"):
        parse_policy(blind)


def test_committed_schema_is_current() -> None:
    committed = json.loads((ROOT / "policies" / "schema.json").read_text())
    assert committed == schema_document(), "run `make schema` and commit policies/schema.json"
