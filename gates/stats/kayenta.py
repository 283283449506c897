"""Kayenta's Mann-Whitney metric classifier, for one latency metric of green against blue.

Why mirror Kayenta rather than invent a rule: Kayenta (Spinnaker's automated canary
analysis) is the judge most teams already trust and tune, so a gate that classifies as it
does can reuse their fraction / confidence settings and be compared result for result.

Source mirrored: ``spinnaker/kayenta``,
``kayenta-judge/src/main/scala/com/netflix/kayenta/judge/classifiers/metric/MannWhitneyClassifier.scala``
(``classify`` and ``calculateBounds``), with the statistics of its R-backed
implementation: ``wilcox.test(experiment, control, conf.int = TRUE, mu = 0,
conf.level = ...)`` (``kayenta-mannwhitney/.../MannWhitneyR.scala``), reproduced exactly
by :func:`gates.stats.mannwhitney.mannwhitney`. Green is Kayenta's experiment (canary),
blue its control (baseline). The judge's defaults: ``fraction`` (Kayenta's
``tolerance``) 0.25, confidence 0.98, direction either. Rules, in Kayenta's order:

1. an empty arm -> ``nodata``;
2. the two samples hold the same values (as multisets) -> ``pass``;
3. every observation has the same value -> ``pass``;
4. with the Hodges-Lehmann shift ``estimate`` and its CI ``[low, high]``, and the margin
   ``fraction * |estimate|``: ``high`` when direction is increase/either and
   ``low > margin``; else ``low`` when direction is decrease/either and ``high < -margin``;
   else ``pass``.

Where this deliberately differs from later Kayenta revisions:

(a) when each arm is constant at a different value (more than one observation in all),
    R's test stops with an error (every shifted observation ties) and Kayenta's JVM port
    adds Gaussian noise of 1e-5 times the value before testing; here the noise-free limit
    of that procedure is used, deterministically: every pairwise difference is
    ``green - blue``, so the CI and the estimate are that difference (explained in
    ``reason``; no test result);
(b) the JVM port's own Mann-Whitney (always asymptotic, continuity correction kept in the
    estimate) is not copied: R's ``wilcox.test`` is, as Kayenta first used it;
(c) the surrounding judge's effect-size gates (mean ratio vs allowed/critical increase;
    their default 1.0 also requires ``mean(green) >= mean(blue)`` for ``high``), critical
    metrics, NaN strategy and outlier removal are out of scope: NaN raises here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gates._validation import NoDataError, as_latencies, check_probability
from gates.stats.mannwhitney import MannWhitneyResult, mannwhitney
from gates.verdict import Verdict

__all__ = ["Classification", "Direction", "KayentaResult", "kayenta_classify"]

Direction = Literal["increase", "decrease", "either"]


class Classification(StrEnum):
    """Kayenta's metric classification of green against blue."""

    PASS = "pass"
    HIGH = "high"
    LOW = "low"
    NODATA = "nodata"


_VERDICTS = {
    Classification.PASS: Verdict.PASS,
    Classification.HIGH: Verdict.FAIL,
    Classification.LOW: Verdict.FAIL,
    Classification.NODATA: Verdict.NODATA,
}


@dataclass(frozen=True, slots=True)
class KayentaResult:
    """Outcome of :func:`kayenta_classify`.

    Attributes:
        classification: pass / high / low / nodata.
        mann_whitney: the rank test behind it; ``None`` when no test was run (no data,
            identical samples, a single distinct value, or both arms constant).
        reason: why, with the numbers, for a human reading a failed rollout.
    """

    classification: Classification
    mann_whitney: MannWhitneyResult | None
    reason: str

    @property
    def verdict(self) -> Verdict:
        """The shared verdict: high and low fail (``direction`` already chose which count)."""
        return _VERDICTS[self.classification]


# Kept whole: it mirrors Kayenta's MannWhitneyClassifier flow step by step, which is how it
# is checked against Kayenta's own outputs.
def kayenta_classify(
    green: ArrayLike | Iterable[float],
    blue: ArrayLike | Iterable[float],
    *,
    fraction: float = 0.25,
    confidence: float = 0.98,
    direction: Direction = "either",
) -> KayentaResult:
    """Classify green against blue as Kayenta's ``MannWhitneyClassifier`` does.

    Args:
        green: latencies of the new deployment (Kayenta's experiment).
        blue: latencies of the current deployment (Kayenta's control).
        fraction: Kayenta's ``tolerance``: a shift only counts when its whole CI lies
            beyond this fraction of the estimated shift, so a significant but negligible
            change still passes.
        confidence: confidence level of the two-sided CI.
        direction: which change fails: ``"increase"`` (green slower), ``"decrease"`` or
            ``"either"``.

    Raises:
        LatencyInputError: a value is NaN, infinite or negative (even if the other arm
            is empty: bad input is never hidden behind ``nodata``).
        ValueError: a bad parameter.
    """
    if not (math.isfinite(fraction) and fraction >= 0):
        raise ValueError(f"fraction must be a finite number >= 0, got {fraction!r}")
    level = check_probability(confidence, "confidence")
    if direction not in get_args(Direction):
        raise ValueError(f"direction must be one of {get_args(Direction)}, got {direction!r}")

    arms: dict[str, NDArray[np.float64]] = {}
    empty: list[str] = []
    for arm, values in (("green", green), ("blue", blue)):
        try:
            arms[arm] = as_latencies(values, arm=arm)
        except NoDataError:
            empty.append(arm)
    if empty:
        return KayentaResult(
            Classification.NODATA, None, f"no observations in {' and '.join(empty)}"
        )
    g, b = arms["green"], arms["blue"]

    if np.array_equal(np.sort(g), np.sort(b)):
        return KayentaResult(Classification.PASS, None, "green and blue data are identical")
    if g.min() == g.max() == b.min() == b.max():
        return KayentaResult(
            Classification.PASS, None, f"every observation equals {g[0]:.6g}: nothing to rank"
        )
    if g.min() == g.max() and b.min() == b.max() and g.size + b.size > 2:
        # R cannot rank this (one green vs one blue still has R's exact test, below).
        shift = float(g[0] - b[0])
        classification, why = _classify(shift, shift, shift, fraction, direction)
        return KayentaResult(
            classification,
            None,
            f"green is constant {g[0]:.6g} and blue is constant {b[0]:.6g}: every pairwise "
            f"difference is {shift:.6g}, taken as estimate and CI; {why}",
        )

    result = mannwhitney(g, b, conf_level=level)
    classification, why = _classify(
        result.estimate, result.ci_low, result.ci_high, fraction, direction
    )
    return KayentaResult(classification, result, f"{why} (p = {result.p_value:.3g})")


def _classify(
    estimate: float, low: float, high: float, fraction: float, direction: Direction
) -> tuple[Classification, str]:
    """Kayenta's ``calculateBounds`` + decision, with the numbers for the reason string."""
    margin = fraction * abs(estimate)
    ci = f"shift green - blue {estimate:.6g}, CI [{low:.6g}, {high:.6g}]"
    if direction in ("increase", "either") and low > margin:
        return Classification.HIGH, f"high: {ci} lies above +{fraction:g} x |shift| = {margin:.6g}"
    if direction in ("decrease", "either") and high < -margin:
        return Classification.LOW, f"low: {ci} lies below -{fraction:g} x |shift| = {-margin:.6g}"
    return Classification.PASS, f"pass: {ci} does not clear +/-{margin:.6g} ({direction})"
