"""gates.compare and `rollout compare`: verdicts, JSON contract, exit codes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gates import METHODS, Verdict, compare
from rollout.cli import app

runner = CliRunner()
FIXED = [m for m in METHODS if m != "sequential"]


def _write(path: Path, values: np.ndarray, fmt: str = "jsonl") -> Path:
    if fmt == "json":
        path.write_text(json.dumps(values.tolist()))
    elif fmt == "csv":
        path.write_text("latency_s\n" + "\n".join(f"{v:.6f}" for v in values) + "\n")
    else:
        path.write_text("".join(json.dumps({"latency_s": float(v)}) + "\n" for v in values))
    return path


@pytest.fixture
def arms() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    blue = rng.lognormal(np.log(2.5), 0.08, 600)
    return {"blue": blue, "same": rng.lognormal(np.log(2.5), 0.08, 300),
            "slow": rng.lognormal(np.log(2.5), 0.08, 300) * 15}


@pytest.mark.parametrize("method", list(METHODS))
def test_cpu_fallback_fails_with_every_method(arms: dict[str, np.ndarray], method: str) -> None:
    r = compare(arms["blue"], arms["slow"], method=method)  # type: ignore[arg-type]
    assert r.verdict is Verdict.FAIL, r.reason
    assert r.blue.n == 600 and r.green.n == 300
    assert r.ratio is not None and r.ratio.ci_low > 10


@pytest.mark.parametrize("method", FIXED)
def test_same_distribution_passes_fixed_methods(arms: dict[str, np.ndarray], method: str) -> None:
    # threshold and bootstrap have no error control: they need a margin to pass an equal green
    # (maxRatio 1.1; before issue 13 a hidden tolerance of 0.1 gave it to them silently)
    ratio = 1.1 if method in ("threshold", "bootstrap") else 1.0
    r = compare(arms["blue"], arms["same"], method=method,  # type: ignore[arg-type]
                max_ratio=ratio)
    assert r.verdict is Verdict.PASS, r.reason


def test_sequential_reports_decided_at_and_pairs_in_file_order(arms: dict[str, np.ndarray]) -> None:
    r = compare(arms["blue"][:20], arms["slow"][:20], method="sequential", blue_per_green=1)
    assert r.verdict is Verdict.FAIL
    assert r.decided_at is not None and r.decided_at <= 10
    short = compare(arms["blue"][:5], arms["same"][:5], method="sequential")
    assert short.verdict is Verdict.INCONCLUSIVE and "ran out" in short.reason


def test_empty_arm_is_nodata_not_pass() -> None:
    r = compare([], [1.0, 2.0], method="threshold")
    assert r.verdict is Verdict.NODATA and "blue" in r.reason


def test_constant_arms_are_decided_not_crashing() -> None:
    assert compare([1.0] * 5, [1.0] * 5, method="mannwhitney").verdict is Verdict.PASS
    assert compare([1.0] * 5, [2.0] * 5, method="mannwhitney").verdict is Verdict.FAIL


SAMPLES = st.lists(st.floats(0.5, 30.0, allow_nan=False), min_size=8, max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SAMPLES, SAMPLES, st.sampled_from(FIXED), st.randoms(use_true_random=False))
def test_fixed_n_verdicts_ignore_order(b: list[float], g: list[float], method: str,
                                       rnd: object) -> None:
    base = compare(b, g, method=method)  # type: ignore[arg-type]
    gp, bp = list(g), list(b)
    rnd.shuffle(gp)  # type: ignore[attr-defined]
    rnd.shuffle(bp)  # type: ignore[attr-defined]
    assert compare(bp, gp, method=method).verdict is base.verdict  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(SAMPLES, SAMPLES, st.sampled_from(FIXED), st.sampled_from([0.25, 2.0, 8.0]))
def test_fixed_n_verdicts_are_scale_free(b: list[float], g: list[float], method: str,
                                         c: float) -> None:
    base = compare(b, g, method=method)  # type: ignore[arg-type]
    scaled = compare(np.asarray(b) * c, np.asarray(g) * c, method=method)  # type: ignore[arg-type]
    assert scaled.verdict is base.verdict


def test_cli_json_contract_for_kayenta(tmp_path: Path, arms: dict[str, np.ndarray]) -> None:
    b = _write(tmp_path / "b.jsonl", arms["blue"])
    g = _write(tmp_path / "g.csv", arms["slow"], "csv")
    res = runner.invoke(app, ["compare", "--blue", str(b), "--green", str(g), "--method",
                              "kayenta", "--output", "json"])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "fail"
    for arm in ("blue", "green"):
        assert {"n", "p50", "p95", "p99"} <= doc[arm].keys()
    assert doc["green"]["p95"] > 10 * doc["blue"]["p95"]
    assert {"p_value", "estimate", "ci_low", "ci_high", "conf_level", "statistic"} <= \
        doc["mann_whitney"].keys()
    assert doc["mann_whitney"]["statistic"] == 600 * 300  # every green is slower: W = n_x n_y


def test_cli_sequential_json_and_exit_codes(tmp_path: Path, arms: dict[str, np.ndarray]) -> None:
    b = _write(tmp_path / "b.json", arms["blue"], "json")
    slow = _write(tmp_path / "slow.jsonl", arms["slow"])
    few = _write(tmp_path / "few.jsonl", arms["same"][:3])
    res = runner.invoke(app, ["compare", "--blue", str(b), "--green", str(slow), "-o", "json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["decided_at"] <= 10
    res = runner.invoke(app, ["compare", "--blue", str(b), "--green", str(few)])
    assert res.exit_code == 3 and "INCONCLUSIVE" in res.stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"latency_s": null, "ok": false}\n')
    res = runner.invoke(app, ["compare", "--blue", str(b), "--green", str(empty)])
    assert res.exit_code == 4


@pytest.mark.parametrize(("content", "needle"), [
    (None, "file not found"),
    ("", "empty"),
    ("[1.0, \"slow\"]", "not a number"),
    ("{\"latency_s\": 1}\n2.0\n", ":2: "),
    ("[1.0, -3]", "negative"),
    ("latency_s\nNaN\n", "not finite"),
])
def test_cli_bad_input_exit_2_with_file_and_line(tmp_path: Path, content: str | None,
                                                 needle: str) -> None:
    good = _write(tmp_path / "good.jsonl", np.ones(5))
    bad = tmp_path / "bad.txt"
    if content is not None:
        bad.write_text(content)
    res = runner.invoke(app, ["compare", "--blue", str(good), "--green", str(bad)])
    assert res.exit_code == 2
    assert str(bad) in res.stderr and needle in res.stderr
    assert "Traceback" not in res.output


def test_swapping_arms_swaps_kayenta_high_and_low(arms: dict[str, np.ndarray]) -> None:
    up = compare(arms["blue"], arms["slow"], method="kayenta", direction="either")
    down = compare(arms["slow"], arms["blue"], method="kayenta", direction="either")
    assert up.kayenta is not None and down.kayenta is not None
    assert (up.kayenta.classification.value, down.kayenta.classification.value) == ("high", "low")

