"""Prompt sets: shipped sets validate, defaults fill gaps, errors carry file, line and path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gates.canary.prompts import PromptSetError, load_prompts, parse_prompts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "side", "steps"), [
    ("tiny-64", 64, 4), ("sd15-512", 512, 25), ("sdxl-1024", 1024, 30)])
def test_shipped_sets_validate(name: str, side: int, steps: int) -> None:
    s = load_prompts(ROOT / "policies" / "prompts" / f"{name}.yaml")
    assert s.name == name
    assert len(s.prompts) >= 8
    assert {(p.width, p.height, p.steps) for p in s.prompts} == {(side, side, steps)}
    assert len({p.seed for p in s.prompts}) == len(s.prompts)


def test_policy_examples_point_at_shipped_prompt_sets() -> None:
    from rollout.policy.loader import load_policy

    for f in sorted((ROOT / "policies" / "examples").glob("*.yaml")):
        load_prompts(load_policy(f).spec.canary.prompts)


def test_defaults_fill_missing_fields_and_prompts_override_them() -> None:
    s = parse_prompts("""
name: t
defaults: {steps: 4, width: 64, height: 64, negativePrompt: blurry}
prompts:
  - {id: a, prompt: x, seed: 1}
  - {id: b, prompt: y, seed: 2, steps: 8, negative_prompt: ""}
""")
    a, b = s.prompts
    assert (a.steps, a.width, a.negative_prompt) == (4, 64, "blurry")
    assert (b.steps, b.width, b.negative_prompt) == (8, 64, "")


def test_every_error_is_reported_with_its_line_and_path() -> None:
    text = """name: t
prompts:
  - id: a
    prompt: x
    seed: 1
    width: 100
  - id: a
    prompt: y
    seed: -3
    stepz: 4
"""
    with pytest.raises(PromptSetError) as e:
        parse_prompts(text, "p.yaml")
    issues = {(line, path) for line, path, _ in e.value.issues}
    assert (6, "prompts[0].width") in issues          # not a multiple of 8
    assert (9, "prompts[1].seed") in issues           # negative
    assert (10, "prompts[1].stepz") in issues         # unknown key
    assert "p.yaml:6: prompts[0].width" in str(e.value)


def test_duplicate_ids_and_empty_sets_are_rejected() -> None:
    with pytest.raises(PromptSetError, match="repeated: a"):
        parse_prompts("name: t\nprompts:\n  - {id: a, prompt: x, seed: 1}\n"
                      "  - {id: a, prompt: y, seed: 2}\n")
    with pytest.raises(PromptSetError, match="prompts"):
        parse_prompts("name: t\nprompts: []\n")


def test_invalid_yaml_and_missing_file() -> None:
    with pytest.raises(PromptSetError) as e:
        parse_prompts("name: t\nprompts: [\n", "bad.yaml")
    assert e.value.issues[0][0] >= 2 and "invalid YAML" in str(e.value)
    with pytest.raises(PromptSetError, match="cannot read"):
        load_prompts("/nonexistent/prompts.yaml")
