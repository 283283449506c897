"""The policy loader refuses what cannot run: non-finite numbers, duplicate keys, YAML bombs,
oversized, deep, non-UTF-8 or non-mapping documents, each as a PolicyError with file, line,
field and fix; and the JSON copy the controller saves reads back equal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.policy.loader import (
    LoaderLimits,
    PolicyError,
    PolicyIssue,
    _message,
    load_policy,
    parse_policy,
)
from rollout.policy.models import Metadata, RolloutPolicy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*(ROOT / "policies" / "examples").glob("*.yaml"),
                  *(ROOT / "deploy").glob("**/policy.yaml")])
runner = CliRunner()

GOOD = """\
apiVersion: rollout-gates.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: hostile
spec:
  targets:
    blue: {type: url, url: "http://127.0.0.1:1"}
    green: {type: url, url: "http://127.0.0.1:2"}
  steps:
    - weight: 10
      pauseSeconds: PAUSE
  gates:
    - type: latency
      maxRatio: RATIO
"""


def _policy(ratio: str = "1.1", pause: str = "0") -> str:
    return GOOD.replace("RATIO", ratio).replace("PAUSE", pause)


def _issues(text: str, **limits: int) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml", limits=LoaderLimits(**limits))
    return e.value.issues


def _only(text: str, **limits: int) -> PolicyIssue:
    issues = _issues(text, **limits)
    assert len(issues) == 1, issues
    assert issues[0].file == "p.yaml"
    return issues[0]


def test_good_policy_loads() -> None:
    assert parse_policy(_policy()).spec.gates[0].max_ratio == 1.1  # type: ignore[union-attr]


# 1. no inf / NaN anywhere ------------------------------------------------------------------

@pytest.mark.parametrize("written", [
    ".inf", "-.inf", "+.inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN", "1e400", "-1E+400",
    "1.0e+400", "1_0.0e+400", "!!float 1e400", "!!float inf",
])
def test_non_finite_float_refused_with_path_line_and_fix(written: str) -> None:
    issue = _only(_policy(ratio=written))
    assert (issue.path, issue.line) == ("spec.gates[0].maxRatio", 14)
    assert "infinite" in issue.message or "NaN" in issue.message
    assert "write a finite number" in issue.message
    assert "p.yaml:14: spec.gates[0].maxRatio: " in str(issue)


def test_pause_seconds_inf_refused() -> None:
    issue = _only(_policy(pause=".inf"))
    assert (issue.path, issue.line) == ("spec.steps[0].pauseSeconds", 11)
    assert ".inf is infinite" in issue.message


@pytest.mark.parametrize("written", ['"inf"', "'1e400'", "inf", "Infinity", '"nan"'])
def test_strings_pydantic_reads_as_non_finite_refused(written: str) -> None:
    issue = _only(_policy(ratio=written))
    assert (issue.path, issue.line) == ("spec.gates[0].maxRatio", 14)
    assert "write a finite number" in issue.message


def test_non_finite_refused_anywhere_even_where_a_string_is_expected() -> None:
    text = _policy().replace("  name: hostile\n", "  name: hostile\n  labels: {x: .nan}\n")
    issues = _issues(text)
    assert [(i.path, i.line) for i in issues] == [("metadata.labels.x", 5)]
    assert "NaN" in issues[0].message


def test_non_finite_through_an_alias_names_where_it_is_used() -> None:
    text = _policy(ratio="*big").replace("      pauseSeconds: 0\n",
                                         "      pauseSeconds: &big .inf\n")
    got = {(i.path, i.line) for i in _issues(text)}
    assert got == {("spec.steps[0].pauseSeconds", 11), ("spec.gates[0].maxRatio", 11)}


def test_finite_number_error_of_the_schema_gets_the_fix() -> None:
    # models may set allow_inf_nan=False; its error then reads like ours (a str input too)
    msg = _message({"type": "finite_number", "msg": "Input should be a finite number",
                    "input": "inf"})
    assert "write a finite number" in msg


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_saved_copy_round_trips_exactly(path: Path) -> None:
    policy = load_policy(path)
    saved = policy.model_dump_json(by_alias=True)
    assert RolloutPolicy.model_validate_json(saved) == policy
    assert RolloutPolicy.model_validate_json(saved).model_dump_json(by_alias=True) == saved


def test_a_copy_that_reads_back_different_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = parse_policy(_policy())
    other = policy.model_copy(update={"metadata": Metadata(name="other")})
    monkeypatch.setattr(RolloutPolicy, "model_validate_json", classmethod(lambda cls, s: other))
    issue = _only(_policy())
    assert (issue.path, issue.line) == ("metadata.name", 4)
    assert "saved JSON copy" in issue.message


def test_shipped_policies_found() -> None:
    assert len([p for p in SHIPPED if "deploy" in p.parts]) >= 2
    assert len(SHIPPED) >= 5


# 2. duplicate keys ---------------------------------------------------------------------------

def test_duplicate_key_names_key_and_both_lines() -> None:
    issue = _only(_policy(ratio="1.1\n      maxRatio: 1.2"))
    assert (issue.path, issue.line) == ("spec.gates[0].maxRatio", 15)
    assert "duplicate key 'maxRatio'" in issue.message
    assert "line 14" in issue.message and "line 15" in issue.message


def test_duplicate_top_level_key() -> None:
    issue = _only(_policy() + "kind: RolloutPolicy\n")
    assert (issue.path, issue.line) == ("kind", 15)
    assert "first at line 2, again at line 15" in issue.message


def test_duplicate_keys_in_flow_mapping_and_equal_values() -> None:
    text = _policy().replace('blue: {type: url, url: "http://127.0.0.1:1"}',
                             'blue: {type: url, url: "http://127.0.0.1:1", type: url}')
    issue = _only(text)
    assert (issue.path, issue.line) == ("spec.targets.blue.type", 7)


def test_merge_keys_override_without_being_duplicates() -> None:
    gates = ("    - <<: &g {type: latency, maxRatio: 1.5, name: a}\n"
             "      maxRatio: 1.2\n"
             "    - <<: *g\n"
             "      name: b\n")
    text = _policy().replace("    - type: latency\n      maxRatio: 1.1\n", gates)
    spec = parse_policy(text).spec
    assert [(g.name, g.max_ratio) for g in spec.gates] == [  # type: ignore[union-attr]
        ("a", 1.2), ("b", 1.5)]


# 3. bounds -----------------------------------------------------------------------------------

def _bomb(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for i in range(1, levels):
        name = chr(ord("a") + i)
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text


def test_billion_laughs_refused_in_milliseconds() -> None:
    start = time.perf_counter()
    issue = _only(_bomb())
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed
    assert "more than 10000 nodes" in issue.message and "billion laughs" in issue.message
    assert issue.line == 5  # the first level whose expansion crosses the limit


def test_billion_laughs_as_a_policy_field() -> None:
    labels = "".join(f"    {line}\n" for line in _bomb(6).splitlines())
    start = time.perf_counter()
    issue = _only(_policy().replace("  name: hostile\n", "  name: hostile\n  labels:\n" + labels))
    assert time.perf_counter() - start < 0.5
    assert issue.path.startswith("metadata.labels.")


def test_alias_reference_count_limited() -> None:
    items = "\n".join(f"- *x{i % 3}" for i in range(101))
    issue = _only("- &x0 1\n- &x1 2\n- &x2 3\n" + items + "\n")
    assert "more than 100 alias references" in issue.message


def test_recursive_alias_refused() -> None:
    issue = _only("a: &a [1, *a]\n")
    assert (issue.path, issue.line) == ("a[1]", 1)
    assert "recursive" in issue.message


def test_a_few_aliases_are_fine() -> None:
    text = _policy().replace('blue: {type: url, url: "http://127.0.0.1:1"}',
                             'blue: &t {type: url, url: "http://127.0.0.1:1"}')
    text = text.replace('green: {type: url, url: "http://127.0.0.1:2"}', "green: *t")
    assert parse_policy(text).spec.targets.green.url == "http://127.0.0.1:1"  # type: ignore[union-attr]


def test_node_limit_counts_plain_nodes_too() -> None:
    issue = _only("a: [" + ", ".join(["1"] * 200) + "]\n", max_nodes=100)
    assert "more than 100 nodes" in issue.message


@pytest.mark.parametrize("text", [
    "a: " + "[" * 100 + "]" * 100 + "\n",
    "a: " + "[" * 200_000 + "\n",  # unterminated too: refused before the parser would complain
    "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 80)) + "  " * 80 + "v: 1\n",
])
def test_depth_limited(text: str) -> None:
    start = time.perf_counter()
    issue = _only(text)
    assert time.perf_counter() - start < 2
    assert "nested deeper than 64 levels" in issue.message
    assert issue.path.startswith("a")


def test_file_size_limit_before_parsing(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_bytes(b"a: [" * ((1 << 20) // 4 + 1))  # would be invalid YAML if parsed
    with pytest.raises(PolicyError) as e:
        load_policy(p)
    (issue,) = e.value.issues
    assert issue.file == str(p)
    assert f"file is {(1 << 20) + 4} bytes, over the 1048576-byte limit" in issue.message
    with pytest.raises(PolicyError, match="over the 100-byte limit"):
        parse_policy(_policy(), limits=LoaderLimits(max_bytes=100))


def test_non_utf8_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes(_policy().replace("hostile", "hostil\xe9").encode("latin-1"))
    with pytest.raises(PolicyError) as e:
        load_policy(p)
    (issue,) = e.value.issues
    assert (issue.file, issue.line) == (str(p), 4)
    assert "not UTF-8" in issue.message and "0xe9" in issue.message
    assert "save the file as UTF-8" in issue.message


def test_utf8_with_bom_loads(tmp_path: Path) -> None:
    p = tmp_path / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + _policy().encode())
    assert load_policy(p).metadata.name == "hostile"


@pytest.mark.parametrize(("text", "needle"), [
    ("", "the document is empty"),
    ("# only a comment\n", "the document is empty"),
    ("- 1\n- 2\n", "not a list"),
    ("hello\n", "not a single value (str)"),
    ("42\n", "not a single value (int)"),
    ("~\n", "not null"),
    ("a: b\x00\n", "character #x0000 at line 1"),
    ("a: !!float abc\n", "cannot read 'abc'"),
    ("a: !!python/object:os.system {}\n", "invalid YAML"),
    ("a: 1\n---\nb: 2\n", "expected a single document"),
    ("? [a]\n: b\n", "unhashable key"),
])
def test_not_a_policy_is_a_clear_error(text: str, needle: str) -> None:
    issue = _only(text)
    assert needle in issue.message
    assert issue.line >= 1


# 4. every refusal is a PolicyError: the CLI exits 2 with the message -------------------------

def test_cli_validate_inf_exits_2_with_message(tmp_path: Path) -> None:
    p = tmp_path / "inf.yaml"
    p.write_text(_policy(ratio=".inf"))
    result = runner.invoke(app, ["policy", "validate", str(p)])
    assert result.exit_code == 2, result.output
    assert f"{p}:14: spec.gates[0].maxRatio: .inf is infinite" in result.stderr
    assert "write a finite number" in result.stderr


@pytest.mark.parametrize("content", [_bomb().encode(), b"a: \xff\n", b"", b"a: 1\na: 2\n"])
def test_cli_validate_hostile_exits_2(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "hostile.yaml"
    p.write_bytes(content)
    result = runner.invoke(app, ["policy", "validate", str(p), "--output", "json"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
