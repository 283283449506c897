"""gates.stats.kayenta: Kayenta's MannWhitneyClassifier rules on R's numbers, and invariances.

The expected classifications are computed here from R's own wilcox.test output
(tests/data/r_wilcox/reference.json) with Kayenta's rule, independently of our port.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gates._validation import LatencyInputError
from gates.stats.kayenta import Classification, Direction, KayentaResult, kayenta_classify
from gates.stats.mannwhitney import TOL_ROOT
from gates.verdict import Verdict

DATA = Path(__file__).resolve().parents[1] / "data"

CASES = {
    c["name"]: c
    for c in json.loads((DATA / "r_wilcox/reference.json").read_text())[
        "cases"
    ]
}
# Kayenta calls wilcox.test with R's defaults apart from conf.int and conf.level.
KAYENTA_LIKE = [
    c
    for c in CASES.values()
    if c["alternative"] == "two-sided" and c["exact"] is None and c["correct"]
]
DIRECTIONS = ("increase", "decrease", "either")
FLIP: dict[str, Direction] = {"increase": "decrease", "decrease": "increase", "either": "either"}
SWAP = {
    Classification.HIGH: Classification.LOW,
    Classification.LOW: Classification.HIGH,
    Classification.PASS: Classification.PASS,
}


def kayenta_rule(estimate: float, low: float, high: float, fraction: float, direction: str) -> str:
    """MannWhitneyClassifier.classify after its early returns, restated."""
    bound = fraction * abs(estimate)
    if direction in ("increase", "either") and low > bound:
        return "high"
    if direction in ("decrease", "either") and high < -bound:
        return "low"
    return "pass"


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case", KAYENTA_LIKE, ids=lambda c: c["name"])
def test_matches_kayenta_rule_on_r_output(case: dict[str, Any], direction: Any) -> None:
    res = kayenta_classify(
        case["green"], case["blue"], confidence=case["conf_level"], direction=direction
    )
    r = case["r"]
    if sorted(case["green"]) == sorted(case["blue"]):
        assert res.classification == Classification.PASS
        assert res.mann_whitney is None
        return
    low, high = r["conf_int"]
    assert res.classification == kayenta_rule(r["estimate"], low, high, 0.25, direction)
    if res.mann_whitney is not None:  # green is R's x: same sign of shift as R
        assert res.mann_whitney.estimate == pytest.approx(r["estimate"], abs=2 * TOL_ROOT)


def test_reference_gives_every_classification() -> None:
    got = {
        kayenta_classify(c["green"], c["blue"], confidence=c["conf_level"]).classification
        for c in KAYENTA_LIKE
    }
    assert got == {Classification.PASS, Classification.HIGH, Classification.LOW}


def test_fraction_scales_the_margin_by_the_estimate() -> None:
    case = CASES["exact_10v12_shift_down"]  # R: CI entirely below 0, but close to it
    est, high = case["r"]["estimate"], case["r"]["conf_int"][1]
    assert est < 0 and high < 0
    tight = -high / abs(est)  # fraction at which the upper bound meets -fraction*|est|
    for fraction, want in ((0.0, "low"), (0.9 * tight, "low"), (1.1 * tight, "pass")):
        res = kayenta_classify(case["green"], case["blue"], fraction=fraction, confidence=0.95)
        assert res.classification == want
    default = kayenta_classify(case["green"], case["blue"], confidence=0.95)
    assert default.classification == Classification.PASS  # significant, yet within 25 %


def test_direction_selects_which_change_fails() -> None:
    rng = np.random.default_rng(3)
    blue = rng.lognormal(0.0, 0.2, 80)
    slow, fast = rng.lognormal(0.0, 0.2, 80) * 1.5, rng.lognormal(0.0, 0.2, 80) / 1.5
    want = {
        ("increase", "slow"): "high",
        ("either", "slow"): "high",
        ("decrease", "slow"): "pass",
        ("decrease", "fast"): "low",
        ("either", "fast"): "low",
        ("increase", "fast"): "pass",
    }
    for (direction, kind), classification in want.items():
        green = slow if kind == "slow" else fast
        res = kayenta_classify(green, blue, direction=direction)  # type: ignore[arg-type]
        assert res.classification == classification, (direction, kind, res.reason)
        assert res.mann_whitney is not None and res.mann_whitney.conf_level == 0.98


def test_nodata_when_an_arm_is_empty() -> None:
    for green, blue, arms in (
        ([], [1.0], "green"),
        ([1.0], [], "blue"),
        ([], [], "green and blue"),
    ):
        res = kayenta_classify(green, blue)
        assert res.classification == Classification.NODATA
        assert res.verdict == Verdict.NODATA
        assert res.mann_whitney is None
        assert res.reason == f"no observations in {arms}"


def test_bad_latency_raises_even_beside_an_empty_arm() -> None:
    with pytest.raises(LatencyInputError) as err:
        kayenta_classify([], [1.0, math.nan])
    assert (err.value.arm, err.value.index) == ("blue", 1)
    with pytest.raises(LatencyInputError):
        kayenta_classify([math.inf], [1.0])


def test_identical_and_single_valued_samples_pass_without_a_test() -> None:
    for green, blue in (([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]), ([2.0, 2.0], [2.0]), ([0.0], [0.0])):
        res = kayenta_classify(green, blue)
        assert (res.classification, res.mann_whitney) == (Classification.PASS, None)
    assert "identical" in kayenta_classify([1.0, 2.0], [2.0, 1.0]).reason


def test_constant_arms_use_the_noise_free_limit() -> None:
    assert kayenta_classify([2.0] * 3, [1.0] * 4).classification == Classification.HIGH
    assert kayenta_classify([1.0] * 3, [2.0] * 4).classification == Classification.LOW
    res = kayenta_classify([2.0] * 3, [1.0] * 4, direction="decrease")
    assert res.classification == Classification.PASS
    assert kayenta_classify([2.0] * 3, [1.0], fraction=1.0).classification == Classification.PASS
    assert res.mann_whitney is None and "constant" in res.reason
    one_each = kayenta_classify([2.0], [1.0])  # R's exact test still runs on one pair
    assert one_each.classification == Classification.HIGH
    assert one_each.mann_whitney is not None and one_each.mann_whitney.conf_level == 0.0


def test_verdict_and_reason() -> None:
    case = CASES["large_150v150_up20pct_ms"]
    res = kayenta_classify(case["green"], case["blue"])
    assert res.classification == Classification.HIGH
    assert res.verdict == Verdict.FAIL
    assert res.mann_whitney is not None
    assert f"{res.mann_whitney.ci_low:.6g}" in res.reason and "p = " in res.reason
    with pytest.raises(AttributeError):
        res.classification = Classification.PASS  # type: ignore[misc]


def test_rejects_bad_parameters() -> None:
    bad: list[dict[str, Any]] = [{"fraction": -0.1}, {"fraction": math.nan}, {"confidence": 1.0}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            kayenta_classify([1.0], [2.0], **kwargs)
    with pytest.raises(ValueError, match="direction"):
        kayenta_classify([1.0], [2.0], direction="up")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

# No ties, both arms < 50: R's exact test, where the invariances hold exactly.
distinct = st.tuples(
    st.lists(st.integers(1, 10**5), min_size=2, max_size=40, unique=True),
    st.integers(1, 39),
    st.integers(0, 60_000),
).map(lambda t: (t[0], min(t[1], len(t[0]) - 1), t[2]))
# Millisecond grid with ties: normal approximation and R's root tolerance.
tied = st.tuples(
    st.lists(st.integers(500, 560), min_size=1, max_size=60),
    st.lists(st.integers(500, 560), min_size=1, max_size=60),
    st.integers(-40, 40),
)
fractions = st.sampled_from([0.0, 0.1, 0.25, 0.5])
directions = st.sampled_from(DIRECTIONS)


def _exact_arms(data: tuple[list[int], int, int]) -> tuple[np.ndarray, np.ndarray]:
    values, m, shift = data  # green odd, blue even half-milliseconds: never a tie
    green = (2 * np.asarray(values[:m]) + 1 + 2 * shift) / 2000
    return green, 2 * np.asarray(values[m:]) / 2000


def _tied_arms(data: tuple[list[int], list[int], int]) -> tuple[np.ndarray, np.ndarray]:
    green, blue, shift = data
    return (np.asarray(green) + shift) / 1000, np.asarray(blue) / 1000


def _clear_of_margins(res: KayentaResult, g: np.ndarray, b: np.ndarray, fraction: float) -> bool:
    """The CI bounds are farther from the margins than R's root tolerance can move them.

    Each bound may move by 2 * TOL_ROOT between two valid runs; the estimate anywhere in
    the median pair of pairwise differences (where R's W is exactly zero) plus 2 * TOL_ROOT.
    """
    mw = res.mann_whitney
    if mw is None:
        return True
    diffs = np.sort(np.subtract.outer(g, b), axis=None)
    plateau = float(diffs[diffs.size // 2] - diffs[(diffs.size - 1) // 2])
    slack = 4 * TOL_ROOT + fraction * (plateau + 4 * TOL_ROOT)
    margin = fraction * abs(mw.estimate)
    return abs(mw.ci_low - margin) > slack and abs(mw.ci_high + margin) > slack


@settings(max_examples=50, deadline=None)
@given(
    st.one_of(distinct.map(_exact_arms), tied.map(_tied_arms)), fractions, directions, st.randoms()
)
def test_permuting_an_arm_changes_nothing(
    arms: tuple[np.ndarray, np.ndarray], fraction: float, direction: Any, rnd: Any
) -> None:
    g, b = arms
    res = kayenta_classify(g, b, fraction=fraction, direction=direction)
    g2, b2 = list(g), list(b)
    rnd.shuffle(g2)
    rnd.shuffle(b2)
    assert kayenta_classify(g2, b2, fraction=fraction, direction=direction) == res


@settings(max_examples=50, deadline=None)
@given(distinct.map(_exact_arms), st.integers(-8, 8), fractions, directions)
def test_scaling_exact(
    arms: tuple[np.ndarray, np.ndarray], k: int, fraction: float, direction: Any
) -> None:
    g, b = arms
    c = 2.0**k  # exact in binary floating point, so every pairwise difference scales exactly
    res = kayenta_classify(g, b, fraction=fraction, direction=direction)
    scaled = kayenta_classify(c * g, c * b, fraction=fraction, direction=direction)
    assert scaled.classification == res.classification
    assert res.mann_whitney is not None and res.mann_whitney.exact
    assert scaled.mann_whitney is not None
    assert scaled.mann_whitney.p_value == res.mann_whitney.p_value
    assert scaled.mann_whitney.estimate == c * res.mann_whitney.estimate


@settings(max_examples=50, deadline=None)
@given(tied.map(_tied_arms), st.sampled_from([0.25, 0.5, 2.0, 4.0, 3.0, 0.7]), fractions)
def test_scaling_asymptotic(arms: tuple[np.ndarray, np.ndarray], c: float, fraction: float) -> None:
    g, b = arms
    res = kayenta_classify(g, b, fraction=fraction)
    scaled = kayenta_classify(c * g, c * b, fraction=fraction)
    if res.mann_whitney is None:  # decided before any test: on values equal before and after
        assert scaled.classification == res.classification
        return
    assert scaled.mann_whitney is not None
    # Positive scaling keeps every rank (ties included), so W and p cannot move.
    assert scaled.mann_whitney.statistic == res.mann_whitney.statistic
    assert scaled.mann_whitney.p_value == pytest.approx(res.mann_whitney.p_value, rel=1e-12)
    diffs = np.sort(np.subtract.outer(g, b), axis=None)
    lo, hi = diffs[(diffs.size - 1) // 2], diffs[diffs.size // 2]  # where R's W(d) = 0
    tol = TOL_ROOT / min(c, 1.0) + 1e-9
    assert lo - tol <= scaled.mann_whitney.estimate / c <= hi + tol  # estimate scales by c
    assume(
        _clear_of_margins(res, g, b, fraction) and _clear_of_margins(scaled, c * g, c * b, fraction)
    )
    assert scaled.classification == res.classification


@settings(max_examples=50, deadline=None)
@given(st.one_of(distinct.map(_exact_arms), tied.map(_tied_arms)), fractions, directions)
def test_swapping_arms_swaps_high_and_low(
    arms: tuple[np.ndarray, np.ndarray], fraction: float, direction: Any
) -> None:
    g, b = arms
    res = kayenta_classify(g, b, fraction=fraction, direction=direction)
    swapped = kayenta_classify(b, g, fraction=fraction, direction=FLIP[direction])
    if res.mann_whitney is not None and not res.mann_whitney.exact:
        assert swapped.mann_whitney is not None
        assume(_clear_of_margins(res, g, b, fraction))
        assume(_clear_of_margins(swapped, b, g, fraction))
    assert swapped.classification == SWAP.get(res.classification, res.classification)
